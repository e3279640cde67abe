"""The search itself reaches its budget at short run lengths, learns a non-uniform structure, and ranks
channels by what they contribute; the exported structure is the one the refine phase trained."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from helpers import yolo_dms

from yolo_dms.core.budget import hard_gflops, step_cost
from yolo_dms.core.masks import DepthMask
from yolo_dms.core.model_io import load_checkpoint_model, load_supernet
from yolo_dms.core.resources import ResourceModel
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64


@pytest.fixture(scope="module")
def short_search(tmp_path_factory) -> Path:
    """48 images at batch 8 for 8 epochs with Ultralytics' default nbs=64: 48 batches, 6 weight steps."""
    work = tmp_path_factory.mktemp("fidelity")
    data = make_dataset(work / "data", n_train=48, n_val=8, imgsz=IMGSZ, seed=1)
    proc = yolo_dms(
        "search", "model=yolov8n.yaml", f"data={data}", "target=0.5", "epochs=8", f"imgsz={IMGSZ}", "batch=8",
        "workers=0", "device=cpu", "plots=False", "seed=0", f"project={work / 'runs'}", "name=short", cwd=work,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work / "runs" / "short"


def test_search_reaches_the_budget_before_any_fit(short_search):
    summary = json.loads((short_search / "search.json").read_text())
    budget = summary["budget"]["value"]
    assert 0.93 <= summary["fit_factor"] <= 1.07, summary
    assert abs(summary["before_fit"] / budget - 1) <= 0.07, summary
    assert summary["final"]["gflops"] <= budget


def test_searched_keep_ratios_are_not_uniform(short_search):
    supernet = load_checkpoint_model(short_search / "weights" / "last.pt")
    widths = [m.keep_ratio.item() for n, m in supernet.keep_ratio_masks().items() if not n.endswith("_depth")]
    assert statistics.pstdev(widths) > 0.03, widths


def test_search_log_ends_flat_at_the_exported_structure(short_search):
    with open(short_search / "search.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((short_search / "search.json").read_text())
    tail = [r for r in rows if int(r["iteration"]) > summary["fit_iteration"]]
    assert len(tail) >= 5  # the refine phase: 20% of 48 batches
    assert all(float(r["gflops"]) == pytest.approx(summary["final"]["gflops"], rel=1e-5) for r in tail)
    assert all(float(r["target"]) == pytest.approx(summary["budget"]["value"], rel=1e-5) for r in tail)
    with open(short_search / "results.csv") as f:
        losses = [float({k.strip(): v for k, v in r.items()}["dms/resource_loss"]) for r in csv.DictReader(f)]
    assert any(loss > 0 for loss in losses[:5])  # every searching epoch stepped the structure


def test_channels_that_carry_no_signal_lose_importance_first():
    supernet = load_supernet("yolov8n.yaml", nc=3)
    silent = torch.arange(8, 16)
    with torch.no_grad():  # layer 2 (C2f) is the only reader of layer 1's output: zero what it reads of `silent`
        supernet.get_submodule("model.2.cv1.conv").weight[:, silent] = 0
    supernet.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        outputs = supernet(torch.rand(2, 3, IMGSZ, IMGSZ, generator=gen))
        (outputs["boxes"].square().mean() + outputs["scores"].square().mean()).backward()
    mask = supernet.masks["l1"]
    assert mask.importance[0, silent].max() < mask.importance[0].sort().values[len(silent)]
    kept = set(mask.kept(mask.size - len(silent))[0].tolist())
    assert kept == set(range(mask.size)) - set(silent.tolist())


def test_a_structure_that_resists_every_cut_is_projected_onto_its_target():
    """A task gradient that resists every cut outweighs the balanced resource gradient, yet after one step the
    hard structure sits on its target: just under it, within one divisor step of the costliest layer, by
    narrower widths alone (every stage keeps its blocks)."""
    supernet = load_supernet("yolov8n.yaml", nc=3)
    step = StructureStep(supernet, ResourceModel(supernet, IMGSZ), lr=0.01, weight=1.0)
    target = 0.6 * hard_gflops(step.resources)
    for p in supernet.structure_parameters():
        p.grad = -10 * torch.ones_like(p)
    step.step(target)
    assert target - step_cost(supernet, step.resources) <= hard_gflops(step.resources) <= target
    depths = [m.keep_ratio.item() for m in supernet.keep_ratio_masks().values() if isinstance(m, DepthMask)]
    assert depths and all(d == 1.0 for d in depths)


def test_a_structure_under_its_budget_grows_back_to_it_while_the_target_holds():
    """A block dropping out leaves the structure well under the budget; at the budget the projection works both
    ways, so the next step gives the capacity back."""
    supernet = load_supernet("yolov8n.yaml", nc=3)
    step = StructureStep(supernet, ResourceModel(supernet, IMGSZ), lr=0.01, weight=1.0)
    budget = 0.6 * hard_gflops(step.resources)
    with torch.no_grad():
        for p in supernet.structure_parameters():
            p.mul_(0.5)
    assert hard_gflops(step.resources) < 0.6 * budget
    for p in supernet.structure_parameters():
        p.grad = torch.zeros_like(p)
    step.step(budget, two_sided=True)
    assert budget - step_cost(supernet, step.resources) <= hard_gflops(step.resources) <= budget


def test_a_structure_well_ahead_of_its_falling_target_is_not_pushed():
    """Half its falling target: being ahead is no violation, so neither the resource loss nor the projection
    moves a structure that the task gradient leaves alone."""
    supernet = load_supernet("yolov8n.yaml", nc=3)
    step = StructureStep(supernet, ResourceModel(supernet, IMGSZ), lr=0.01, weight=1.0)
    before = {n: m.keep_ratio.item() for n, m in supernet.keep_ratio_masks().items()}
    for p in supernet.structure_parameters():
        p.grad = torch.zeros_like(p)
    step.step(2.0 * step.resources.gflops().item())
    assert {n: m.keep_ratio.item() for n, m in supernet.keep_ratio_masks().items()} == before
