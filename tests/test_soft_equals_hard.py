"""Soft masks train exactly the channels and blocks that pruning keeps, and importance ignores the AMP scale."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from mask_reference import training_masks

from yolo_dms import DepthMask, Supernet, WidthMask
from yolo_dms.core.model_io import load_supernet

MODELS = ["yolov8n.yaml", "yolov8s.yaml", "yolov8n-p6.yaml", "yolo11n.yaml", "yolo11m.yaml", "yolo26n.yaml"]


def gates(supernet: Supernet, hard: bool) -> dict[str, torch.Tensor]:
    """Every gate the supernet hands its layers in one pass (channel gates and C2f depth gates)."""
    supernet._set_gates(hard=hard)
    try:
        found = {p: supernet.get_submodule(p).gate.detach().clone() for p in supernet.gated_convs}
        found.update({p: supernet.get_submodule(p).depth_gate.detach().clone() for p in supernet.gated_csps})
        return found
    finally:
        supernet._clear_gates()


@pytest.mark.parametrize("model", MODELS)
def test_soft_gates_above_half_are_exactly_the_hard_gates(model):
    supernet = load_supernet(model, nc=3)
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mask in supernet.masks.values():
            mask.importance.copy_(torch.rand(mask.importance.shape, generator=gen))
    disagreements = 0
    for trial in range(60):
        for mask in supernet.keep_ratio_masks().values():
            low = 0.0 if isinstance(mask, DepthMask) else mask.min_ratio
            # quarter of the trials on exact multiples of 1/N and 1/16, where rounding ties live
            value = rng.choice([rng.uniform(low, 1.0), round(rng.uniform(low, 1.0) * 16) / 16])
            mask.set_keep_ratio(min(1.0, max(low, value)))
        hard_counts = supernet.hard_counts()
        soft_counts = supernet.soft_counts()
        for name, count in soft_counts.items():
            assert count.item() == hard_counts[name], (trial, name)
        soft, hard = gates(supernet, hard=False), gates(supernet, hard=True)
        for path in hard:
            disagreements += int(((soft[path] > 0.5).float() != hard[path]).sum())
    assert disagreements == 0


def test_width_masks_are_rounded_alike_in_soft_and_hard():
    """Rounding to the divisor applies to the trained count too: 16 channels at k=0.3 train and keep 8, not 5."""
    mask = WidthMask(16, divisor=8)
    mask.importance.copy_(torch.rand(1, 16))
    for k in [i / 200 for i in range(1, 201)]:
        mask.set_keep_ratio(max(k, mask.min_ratio))
        (soft,) = training_masks(w=mask)["w"]
        assert int((soft > 0.5).sum()) == mask.hard_count(), k
        assert torch.equal(torch.nonzero(soft > 0.5).flatten(), mask.kept(mask.hard_count())[0])


def test_single_block_depth_gate_is_sharp():
    single, double = DepthMask(1), DepthMask(2)
    assert single.lam == 2 * double.lam
    single.set_keep_ratio(1.0)
    assert training_masks(d=single)["d"][0].item() > 0.95
    single.set_keep_ratio(0.0)
    assert training_masks(d=single)["d"][0].item() < 0.05


@pytest.mark.parametrize("scale", [1.0, 1024.0, 65536.0])
def test_importance_does_not_depend_on_the_loss_scale(scale):
    x = torch.linspace(-2.0, 3.0, 24)
    mask = WidthMask(24, decay=0.5)
    for _ in range(3):
        (scale * (training_masks(scale, w=mask)["w"][0] * x).square().sum()).backward()
    reference = WidthMask(24, decay=0.5)
    for _ in range(3):
        (training_masks(w=reference)["w"][0] * x).square().sum().backward()
    assert torch.allclose(mask.importance, reference.importance, rtol=1e-5)
    assert mask.importance.sum() > 0


TRAINED = Path(__file__).parent / "fixtures" / "yolov8-ultralytics8.1.47-trained-nc5-fp16.pt"


def _flat(outputs) -> torch.Tensor:
    """Every tensor of a model's (nested) outputs, flattened into one vector."""
    if isinstance(outputs, torch.Tensor):
        return outputs.flatten()
    values = outputs.values() if isinstance(outputs, dict) else outputs
    return torch.cat([_flat(v) for v in values])


@pytest.mark.parametrize("train", [True, False])
def test_trained_supernet_is_unperturbed_at_keep_ratio_one(train):
    """At keep ratio 1 nothing is removed, so the masks leave a trained model's outputs as they were, whatever
    importance says: the search and its control start from the model the user gave them. (The relaxation as a
    forward value would scale each layer's lowest-ranked channels by 0.62, 0.82, 0.92 and move them by a fifth
    or more.)"""
    supernet = load_supernet(str(TRAINED)).float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mask in supernet.masks.values():
            mask.importance.copy_(torch.rand(mask.importance.shape, generator=gen))
    assert all(m.keep_ratio.item() == 1.0 for m in supernet.keep_ratio_masks().values())
    image = torch.rand(2, 3, 64, 64, generator=gen)
    masked, plain = copy.deepcopy(supernet).train(train), copy.deepcopy(supernet).train(train)
    with plain.masks_off():
        expected = _flat(plain(image))
    found = _flat(masked(image))  # grad enabled, as in the search: straight-through gates and importance hooks
    assert torch.allclose(found, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
