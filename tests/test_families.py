"""YOLO11 and YOLO26 end to end: `yolo-dms search` through the CLI on tiny data, then every point of the
exactness contract on what it wrote (searched.yaml, pruned.pt), the last checks in a process without yolo_dms.
(Task heads and the heads DMS cannot search: tests/test_tasks.py.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import assert_stock_trains_and_exports, stock_gflops, yolo_dms
from ultralytics.nn.tasks import DetectionModel

from yolo_dms import ResourceModel, Supernet, prune
from yolo_dms.core.model_io import load_checkpoint_model, load_supernet
from yolo_dms.core.resources import AS_SAVED, FUSED, deployed_gflops
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64
FAMILIES = ["yolo11n.yaml", "yolo26n.yaml", "yolo11s.yaml"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def tiny_data(workdir) -> Path:
    return make_dataset(workdir / "data", n_train=16, n_val=8, imgsz=IMGSZ, seed=0)


@pytest.fixture(scope="module", params=FAMILIES)
def search_run(request, workdir, tiny_data) -> Path:
    name = Path(request.param).stem
    proc = yolo_dms(
        "search", f"model={request.param}", f"data={tiny_data}", "target=0.7", "epochs=1", f"imgsz={IMGSZ}",
        "batch=8", "workers=0", "device=cpu", "plots=False", "seed=0", f"project={workdir / 'runs'}", f"name={name}",
        cwd=workdir,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return workdir / "runs" / name


def raw_heads(output) -> dict[str, torch.Tensor]:
    raw = output[1]
    branches = {name: raw[name] for name in ("one2many", "one2one")} if "one2many" in raw else {"": raw}
    return {f"{b}/{k}": v[k] for b, v in branches.items() for k in ("boxes", "scores")}


def test_searched_outputs_are_exact(search_run):
    """YAML rebuilds pruned.pt's names and shapes; the searched supernet equals pruned.pt; FLOPs agree."""
    supernet = load_checkpoint_model(search_run / "weights" / "last.pt").eval()
    pruned = load_checkpoint_model(search_run / "pruned.pt").eval()
    assert isinstance(supernet, Supernet) and type(pruned) is DetectionModel
    rebuilt = DetectionModel(str(search_run / "searched.yaml"), verbose=False)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert deployed_gflops(pruned, IMGSZ) == pytest.approx(ResourceModel(supernet, IMGSZ).gflops().item(), rel=5e-3)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        searched, exported = raw_heads(supernet(x)), raw_heads(pruned(x))
    for key in searched:
        assert (searched[key] - exported[key]).abs().max().item() < 1e-4, key


def test_search_json_says_which_figure_and_gives_both(search_run):
    """search.json's final GFLOPs and parameters are stock's of the deployed pruned.pt (fused for YOLO26, whose
    end-to-end head has a one-to-many branch `fuse()` drops; pruned.pt itself for YOLO11), named in `counted_as`;
    the training-graph figures are stock's of pruned.pt as saved."""
    final = json.loads((search_run / "search.json").read_text())["final"]
    pruned = load_checkpoint_model(search_run / "pruned.pt").float().eval()
    yolo26 = search_run.name.startswith("yolo26")
    deployed = copy.deepcopy(pruned).fuse(verbose=False) if yolo26 else pruned
    assert final["counted_as"] == (FUSED if yolo26 else AS_SAVED)
    assert final["gflops"] == pytest.approx(stock_gflops(deployed, IMGSZ), rel=1e-9, abs=0)
    assert final["params"] == sum(p.numel() for p in deployed.parameters())
    assert final["gflops_training_graph"] == pytest.approx(stock_gflops(pruned, IMGSZ), rel=1e-9, abs=0)
    assert final["params_training_graph"] == sum(p.numel() for p in pruned.parameters())
    assert (final["gflops_training_graph"] > final["gflops"]) == yolo26


def test_stock_ultralytics_trains_every_weight_and_exports_onnx(search_run, tiny_data):
    assert_stock_trains_and_exports(search_run, tiny_data, IMGSZ, search_run / "stock", search_run)


def test_attention_narrows_in_whole_heads():
    """yolo11s's C2PSA has 4 heads of 64 channels: half its width rebuilds as 2 heads of the same split."""
    supernet = load_supernet("yolo11s.yaml", nc=3)
    for mask in supernet.masks.values():
        mask.importance.copy_(torch.rand(mask.importance.shape, generator=torch.Generator().manual_seed(0)))
    supernet.masks["l10_hidden"].set_keep_ratio(0.45)  # 115 of 256 channels, rounded to 2 whole heads
    supernet.eval()
    pruned = prune(supernet).eval()
    attn = pruned.model[10].m[0].attn
    assert (attn.num_heads, attn.head_dim, attn.key_dim) == (2, 64, 32)
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        searched, exported = raw_heads(supernet(x)), raw_heads(pruned(x))
    assert all((searched[k] - exported[k]).abs().max().item() < 1e-4 for k in searched)
