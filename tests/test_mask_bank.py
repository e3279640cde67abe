"""The batched search step (`core.mask_bank`, one pass over every mask) computes what the mask-by-mask one does.

The reference here is the straightforward step: each mask's own count, masks and importance hook
(tests/mask_reference.py), a gate concatenated per layer, a resource model fed from host-side hard counts, keep
ratios clamped and Adam-stepped one by one. Over a few hundred search steps (forward, backward, structure step,
with an AMP-like loss scale) both must end with the same structure, keep ratios and importance (up to float32
rounding: the two sum the same gradients in a different order).
"""

from __future__ import annotations

import copy

import mask_reference
import torch

from yolo_dms import DepthMask, Supernet
from yolo_dms.core.masks import straight_through
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.topk import hard_topk
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.core.model_io import load_supernet

SCALE = 1024.0  # the loss is multiplied by it, as AMP does, and both paths divide it out


def reference_set_gates(supernet: Supernet) -> None:
    """Mask by mask: counts, straight-through masks with their own importance hooks, one gate (and gated
    BatchNorm weight and bias) per layer."""
    counts = mask_reference.counts(supernet.masks)
    values = {n: mask_reference.soft_masks(m, counts[n], grad_scale=SCALE) for n, m in supernet.masks.items()}
    for path, spaces in supernet.gated_convs.items():
        module = supernet.get_submodule(path)
        module.gate = torch.cat([values[s.mask][s.row] for s in spaces])
        module.affine = (module.bn.weight * module.gate, module.bn.bias * module.gate)
    for path, depth in supernet.gated_csps.items():
        module = supernet.get_submodule(path)
        module.depth_gate, module.depth_hard = values[depth][0], False


class ReferenceResources(ResourceModel):
    """Counts read to the host, then straight-through per mask; block gates mask by mask."""

    def _counts(self, ratios: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if ratios is not None:  # the projection's candidate structures, values only (`budget.fit_factors`)
            return super()._counts(ratios)
        supernet = self.supernet
        hard = supernet.hard_counts()
        soft = mask_reference.counts(supernet.masks)
        width = torch.stack([straight_through(hard[n], soft[n]) for n in self.widths]).double()
        gates = [
            straight_through(
                hard_topk(mask.importance, hard[n])[0], mask_reference.soft_masks(mask, soft[n], track=False)[0]
            ).double()
            for n, mask in supernet.masks.items()
            if isinstance(mask, DepthMask)
        ]
        return torch.cat([width, self.constants]), torch.cat([*gates, torch.ones(1, dtype=torch.float64)])


def flatten(outputs) -> torch.Tensor:
    """Every tensor of a model's (nested) outputs in one vector."""
    if isinstance(outputs, torch.Tensor):
        return outputs.flatten()
    return torch.cat([flatten(o) for o in (outputs.values() if isinstance(outputs, dict) else outputs)])


def search(supernet: Supernet, reference: bool, steps: int) -> None:
    """`steps` search iterations on fixed random images: forward, backward, structure step."""
    resources = (ReferenceResources if reference else ResourceModel)(supernet, 32)
    structure = StructureStep(supernet, resources, lr=0.02, weight=1.0)
    if reference:
        structure.optimizer = torch.optim.Adam(supernet.structure_parameters(), lr=0.02, foreach=False)
        structure.fused = False  # the plain Adam takes no found_inf
        supernet.clamp_keep_ratios = lambda: [mask_reference.clamp_(m) for m in supernet.keep_ratio_masks().values()]
        supernet._set_gates = lambda hard: reference_set_gates(supernet)
    else:
        supernet.grad_scale = torch.tensor(SCALE)
    target = 0.4 * resources.gflops().item()
    for module in supernet.modules():  # fixed BatchNorm statistics: one 32-pixel image per step is cheap
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    gen = torch.Generator().manual_seed(0)
    weights = None
    for _ in range(steps):
        outputs = supernet.predict(torch.rand(1, 3, 32, 32, generator=gen))
        flat = flatten(outputs)
        weights = torch.randn(flat.shape, generator=gen) if weights is None else weights
        (SCALE * (flat * weights).sum() / flat.numel()).backward()
        structure.step(target, torch.tensor(SCALE) if not reference else SCALE)
        supernet.zero_grad(set_to_none=True)


def test_batched_step_keeps_the_same_keep_ratios_as_the_mask_by_mask_step():
    supernet = load_supernet("yolov8n.yaml", nc=3).train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mask in supernet.masks.values():
            mask.importance.copy_(torch.rand(mask.importance.shape, generator=gen))
    batched, reference = copy.deepcopy(supernet), copy.deepcopy(supernet)
    search(batched, reference=False, steps=200)
    search(reference, reference=True, steps=200)
    assert batched.hard_counts() == reference.hard_counts()
    found = torch.stack(batched.structure_parameters())
    expected = torch.stack(reference.structure_parameters())
    assert torch.allclose(found, expected, rtol=0, atol=1e-5), (found - expected).abs().max()
    assert expected.min() < 0.9 and expected.max() - expected.min() > 0.1  # the structure moved, not uniformly
    for name, mask in batched.masks.items():
        assert torch.allclose(mask.importance, reference.masks[name].importance, rtol=1e-5, atol=0), name


def test_gates_follow_importance_changed_in_place_or_replaced():
    """The bank keeps each pass's channel ranking until an importance buffer changes: an in-place update and a
    replaced buffer (a checkpoint load, a move) must both reorder which channels a gate keeps."""
    supernet = load_supernet("yolov8n.yaml", nc=3).eval()
    bank = supernet.mask_bank()
    name = next(n for n, m in supernet.masks.items() if not isinstance(m, DepthMask) and m.size >= 32)
    mask = supernet.masks[name]
    with torch.no_grad():
        mask.keep_ratio.fill_(0.5)

    def kept() -> torch.Tensor:
        counts = bank.counts(supernet.masks).detach()
        return bank.masks_of(supernet.masks, (name,), counts)[: mask.size] > 0.5

    with torch.no_grad():
        mask.importance.copy_(torch.arange(mask.size, dtype=mask.importance.dtype))
    first = kept()
    assert first[mask.size // 2:].all() and not first[: mask.size // 2].any()  # the most important half
    with torch.no_grad():
        mask.importance.mul_(-1)  # in place: the other half is now the most important
    assert torch.equal(kept(), ~first)
    mask.importance = torch.arange(mask.size, dtype=mask.importance.dtype)  # a new buffer
    assert torch.equal(kept(), first)
