"""The exactness contract (DESIGN.md sections 3 and 3b) over families, scales and random searched structures.

(a) the exported YAML rebuilds a model with the pruned model's exact parameter names and shapes;
(b) the supernet at hard masks and the pruned model compute the same outputs;
(c) the resource model's hard GFLOPs and parameters equal the pruned model's `get_flops` and size as deployed
    (the fused model for YOLO26, whose end-to-end heads carry training-only layers; pruned.pt itself for YOLOv8
    and YOLO11), and its training-graph figures equal pruned.pt's as saved; checked against stock Ultralytics in
    a process without yolo_dms for every family and task.

The cases are checked against the handler registry: every registered layer and block type must occur in
them, so a new handler without a test model fails here.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
import thop
import torch
from helpers import TASK_CASES, randomize_structure, run_without_yolo_dms
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from yolo_dms import ResourceModel, Supernet, prune, searched_yaml
from yolo_dms.core.handlers import HANDLERS
from yolo_dms.core.handlers.blocks import BLOCKS
from yolo_dms.core.model_io import load_supernet, write_model_yaml
from yolo_dms.core.budget import hard_gflops
from yolo_dms.core.fit import fit_to_budget
from yolo_dms.core.model_io import build_task_model, write_checkpoint
from yolo_dms.core.resources import AS_SAVED, FUSED, deployed_gflops, deployed_params

IMGSZ = 128
FORWARD_CASES = [(cfg, seed) for cfg in ("yolov8n.yaml", "yolov8s.yaml") for seed in range(5)]
FORWARD_CASES += [("yolov8n-p2.yaml", 0), ("yolov8n-p6.yaml", 0)]
FORWARD_CASES += [(f"yolo{v}n.yaml", seed) for v in (11, 26) for seed in range(3)]
FORWARD_CASES += [(f"yolo{v}s.yaml", seed) for v in (11, 26) for seed in range(2)]
LARGE_CASES = ["yolov8m.yaml", "yolov8l.yaml", "yolov8x.yaml", "yolo11m.yaml", "yolo26m.yaml"]


@cache
def layer_types_tested() -> set[type]:
    """Every layer type, and every block type inside a CSP layer, of the models the forward cases (and the
    task cases of tests/test_tasks.py) build."""
    found = set()
    for cfg in {cfg for cfg, _ in FORWARD_CASES} | set(TASK_CASES):
        for layer in build_task_model(cfg).model:
            found.add(type(layer))
            blocks = getattr(layer, "m", None)
            found |= {type(b) for b in blocks} if isinstance(blocks, nn.ModuleList | nn.Sequential) else set()
    return found


@pytest.mark.parametrize("layer_type", [*HANDLERS, *BLOCKS], ids=lambda t: t.__name__)
def test_every_handler_is_exercised_by_the_exactness_cases(layer_type):
    assert layer_type in layer_types_tested(), f"no exactness case builds a {layer_type.__name__}"


def raw_heads(output) -> dict[str, torch.Tensor]:
    """Raw head outputs (box distributions, class logits) of every branch of an eval-mode forward."""
    raw = output[1]
    branches = {name: raw[name] for name in ("one2many", "one2one")} if "one2many" in raw else {"": raw}
    return {f"{b}/{k}": v[k] for b, v in branches.items() for k in ("boxes", "scores")}


def state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def assert_yaml_rebuilds(supernet: Supernet, pruned: DetectionModel, tmp_path) -> None:
    path = write_model_yaml(searched_yaml(supernet), tmp_path / "searched.yaml")
    rebuilt = DetectionModel(str(path), verbose=False)
    assert state_shapes(rebuilt) == state_shapes(pruned)


def saved_gflops(model: torch.nn.Module, imgsz: int) -> float:
    """THOP's count of `model` as it is (unfused), at the full image size, as `get_flops` counts it."""
    image = torch.empty(1, 3, imgsz, imgsz)
    return thop.profile(model, inputs=[image], verbose=False)[0] / 1e9 * 2


def assert_resources_match(supernet: Supernet, pruned: DetectionModel, imgsz: int) -> None:
    resources = ResourceModel(supernet, imgsz)
    expected = deployed_gflops(pruned, imgsz)
    assert expected > 0
    assert resources.gflops().item() == pytest.approx(expected, rel=1e-6)
    assert round(resources.params().item()) == deployed_params(pruned)
    gflops, params = resources.training_graph()  # pruned.pt as saved
    assert gflops == pytest.approx(saved_gflops(pruned, imgsz), rel=1e-6)
    assert params == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize(("cfg", "seed"), FORWARD_CASES)
def test_pruned_model_is_exact(cfg, seed, tmp_path):
    supernet = load_supernet(cfg, nc=3)
    randomize_structure(supernet, seed, empty_c2f=seed)
    supernet.eval()
    pruned = prune(supernet).eval()
    assert type(pruned) is DetectionModel
    assert all(type(m).__module__.startswith(("ultralytics", "torch")) for m in pruned.modules())
    chains = [layer.m for layer in pruned.model if isinstance(getattr(layer, "m", None), nn.ModuleList | nn.Sequential)]
    assert any(len(m) == 0 for m in chains), "no CSP layer lost all its blocks"

    assert_yaml_rebuilds(supernet, pruned, tmp_path)
    assert_resources_match(supernet, pruned, IMGSZ)

    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # float32: raw head outputs (box distributions, class logits) within 1e-4
        super_raw, pruned_raw = raw_heads(supernet(x)), raw_heads(pruned(x))
    for key in super_raw:
        assert (super_raw[key] - pruned_raw[key]).abs().max().item() < 1e-4, key
    supernet.double(), pruned.double()
    with torch.no_grad():  # float64: decoded boxes and scores agree to rounding
        a, b = supernet(x.double())[0], pruned(x.double())[0]
    assert (a - b).abs().max().item() < 1e-9 * a.abs().max().item()


@pytest.mark.parametrize("cfg", LARGE_CASES)
def test_large_scales_rebuild_and_count_exactly(cfg, tmp_path):
    supernet = load_supernet(cfg, nc=80)
    randomize_structure(supernet, seed=7, empty_c2f=3)
    pruned = prune(supernet)
    assert_yaml_rebuilds(supernet, pruned, tmp_path)
    assert_resources_match(supernet, pruned, 64)


@pytest.mark.parametrize("cfg", ["yolov8s.yaml", "yolo11s.yaml", "yolo26s.yaml"])
def test_full_supernet_counts_match_stock_model(cfg):
    """Before any pruning the resource model equals `get_flops` of the unmodified stock model, as deployed."""
    stock = DetectionModel(cfg, nc=80, verbose=False)
    expected = deployed_gflops(stock, 640)
    supernet = Supernet(stock)
    assert ResourceModel(supernet, 640).gflops().item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_resource_gradient_reaches_every_keep_ratio(cfg):
    supernet = load_supernet(cfg, nc=3)
    randomize_structure(supernet, seed=1)
    for mask in supernet.keep_ratio_masks().values():  # keep every block alive so every ratio costs something
        if mask.min_ratio == 0:
            mask.set_keep_ratio(1.0)
    ResourceModel(supernet, 64).gflops().backward()
    grads = {name: p.keep_ratio.grad for name, p in supernet.keep_ratio_masks().items()}
    assert all(g is not None and g.item() > 0 for g in grads.values()), grads


@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.8])
def test_budget_fit_lands_just_under_the_budget(fraction):
    """From a structure above or below the budget, the fit ends within 3% under it, proportions kept."""
    from yolo_dms.core.budget import figure_range, hard_gflops

    supernet = load_supernet("yolov8s.yaml", nc=80)
    randomize_structure(supernet, seed=5)
    resources = ResourceModel(supernet, 320)
    budget = fraction * figure_range(supernet, resources)[1]
    before = {n: m.keep_ratio.item() for n, m in supernet.keep_ratio_masks().items()}
    factor = fit_to_budget(supernet, resources, budget)
    assert 0.97 * budget <= hard_gflops(resources) <= budget
    for name, mask in supernet.keep_ratio_masks().items():
        expected = min(1.0, max(mask.min_ratio, before[name] * factor))
        assert mask.keep_ratio.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Every family and task against stock Ultralytics, in a process without yolo_dms: what the resource model counts
# is the deployed pruned model, `get_flops(copy.deepcopy(model).fuse())` and its parameters for YOLO26 (its end-to-
# end heads carry training-only layers, which `fuse()` drops with the BatchNorms, as Ultralytics' tables count
# YOLO26); for YOLOv8, YOLO11 and every classifier (nothing for `fuse()` to drop) `get_flops` of pruned.pt itself,
# as they have always been reported. The training graph is pruned.pt as saved, for every model.

STOCK_IMGSZ = 64
STOCK_CASES = ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml", *TASK_CASES]
FIT_CASE = "yolo26n.yaml@fit"  # yolo26n fitted under a GFLOPs budget (`fit_to_budget`)

STOCK_FIGURES = """
    import copy, json, sys
    import thop, torch, ultralytics
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    def counted(model):  # thop at the image size; get_flops counts the same, except 8.4.0's (a 32 px pass, scaled)
        flops = thop.profile(copy.deepcopy(model), inputs=[torch.empty(1, 3, IMGSZ, IMGSZ)], verbose=False)[0] / 1e9 * 2
        assert ultralytics.__version__ == "8.4.0" or get_flops(model, IMGSZ) == flops, (get_flops(model, IMGSZ), flops)
        return [flops, sum(p.numel() for p in model.parameters())]

    figures = {}
    for name, path in json.loads(sys.argv[1]).items():
        model = YOLO(path).model.float().eval()
        figures[name] = {"saved": counted(model), "fused": counted(copy.deepcopy(model).fuse(verbose=False))}
    print("FIGURES", json.dumps(figures))
"""


def expected_figure(cfg: str) -> str:
    """Which stock figure the resource model must equal: "fused" for YOLO26's end-to-end heads, else "saved"."""
    return "fused" if cfg.startswith("yolo26") and not cfg.endswith("-cls.yaml") else "saved"


@pytest.fixture(scope="module")
def stock_figures(tmp_path_factory) -> tuple[dict, dict]:
    """(the resource model's figures, stock's) for every case: each pruned at a random structure (keep ratios
    from 0.05 to 1, blocks removed), written as pruned.pt, and measured by stock Ultralytics in one process."""
    directory, paths, ours = tmp_path_factory.mktemp("stock_figures"), {}, {}
    for i, cfg in enumerate([*STOCK_CASES, FIT_CASE]):
        supernet = Supernet(build_task_model(cfg.split("@")[0], nc=3))
        randomize_structure(supernet, seed=11 + i)
        resources = ResourceModel(supernet, STOCK_IMGSZ)
        budget = None
        if cfg == FIT_CASE:  # a budget half way between the smallest structure and this one
            budget = 0.6 * hard_gflops(resources)
            fit_to_budget(supernet, resources, budget)
        with torch.no_grad():
            figures = {"gflops": resources.gflops().item(), "params": round(resources.params().item())}
        figures.update(saved=list(resources.training_graph()), fused=resources.fused,
                       counted_as=resources.counted_as, budget=budget)
        ours[cfg] = figures
        paths[cfg] = str(write_checkpoint(prune(supernet.eval()).eval(), directory / f"{i}.pt"))
    code = STOCK_FIGURES.replace("IMGSZ", str(STOCK_IMGSZ)).replace("sys.argv[1]", repr(json.dumps(paths)))
    proc = run_without_yolo_dms(code, cwd=directory)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("FIGURES "))
    return ours, json.loads(line.removeprefix("FIGURES "))


@pytest.mark.parametrize("cfg", STOCK_CASES)
def test_resource_model_equals_stock_figures_of_the_deployed_model(cfg, stock_figures):
    ours, stock = stock_figures[0][cfg], stock_figures[1][cfg]
    which = expected_figure(cfg)
    gflops, params = stock[which]
    assert ours["gflops"] == pytest.approx(gflops, rel=1e-9, abs=0)
    assert ours["params"] == params
    assert ours["counted_as"] == (FUSED if which == "fused" else AS_SAVED) and ours["fused"] == (which == "fused")
    assert ours["saved"][0] == pytest.approx(stock["saved"][0], rel=1e-9, abs=0)  # pruned.pt as saved
    assert ours["saved"][1] == stock["saved"][1]
    if which == "fused":  # the two figures differ: the one-to-many branch and the BatchNorms are not deployed
        assert stock["fused"][0] < stock["saved"][0] and stock["fused"][1] < stock["saved"][1]


def test_a_gflops_budget_holds_for_yolo26_as_deployed(stock_figures):
    """fit_to_budget's structure for yolo26n costs at most the budget, and within 3% of it, as stock counts the
    fused pruned model; pruned.pt as saved (its one-to-many branch too) costs more."""
    ours, stock = stock_figures[0][FIT_CASE], stock_figures[1][FIT_CASE]
    budget = ours["budget"]
    assert ours["gflops"] == pytest.approx(stock["fused"][0], rel=1e-9, abs=0)
    assert 0.97 * budget <= stock["fused"][0] <= budget
    assert stock["saved"][0] > budget
