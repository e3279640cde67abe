"""Outputs are what they say: the model given to `Supernet` stays as it was, files respect the umask, `search.json`
and `search.csv` name their units, and the plots label what they show."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import randomize_structure, yolo_dms
from ultralytics.nn.tasks import DetectionModel

from yolo_dms.core.expand import expanded_yaml
from yolo_dms.core.export import export_searched
from yolo_dms.core.model_io import load_supernet, write_model_yaml
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.search_log import SearchLog, plot_search, plot_structure
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64


@pytest.fixture(params=[0o022, 0o027])
def umask(request) -> Iterator[int]:
    """The process umask (inherited by subprocesses) for one test, then the previous one again."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_supernet_leaves_the_model_it_is_given_unchanged(cfg):
    model = DetectionModel(cfg, nc=3, verbose=False).eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    types = [type(m) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)[0]

    supernet = Supernet(model)
    randomize_structure(supernet, seed=0)  # new weights, importance and keep ratios in the supernet
    supernet.train()(x)  # soft masks: gates set on every gated layer, then cleared
    supernet.eval()(x)

    assert not hasattr(model, "masks") and [type(m) for m in model.modules()] == types
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x)[0], expected)
    assert load_supernet(model).model is not model.model


def test_written_models_respect_the_umask(tmp_path, umask):
    """`pruned.pt`, `searched.yaml` and an expanded YAML get 0666 less the umask, as Ultralytics' own files do."""
    supernet = load_supernet("yolov8n.yaml", nc=3)
    randomize_structure(supernet, seed=1)
    result = export_searched(supernet.eval(), tmp_path, IMGSZ)
    expanded = write_model_yaml(expanded_yaml("yolov8n.yaml", width=1.25, nc=3), tmp_path / "expanded.yaml")
    for path in (result.weights_path, result.yaml_path, expanded):
        assert mode(path) == 0o666 & ~umask, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expanded.yaml", "pruned.pt", "searched.yaml"]


@pytest.mark.parametrize(
    ("resource", "budget", "label", "scale"),
    [("gflops", 2.0, "GFLOPs", 1.0), ("params", 1.5, "parameters (M)", 1e6), ("latency", 3.0, "latency (ms)", 1.0)],
)
def test_search_log_and_plot_name_the_resource(tmp_path, figures, resource, budget, label, scale):
    """`search.csv` writes the resource in its files' unit (parameters counted one by one, as `search.json` and
    Ultralytics count them); `search.png` plots it in the budget's unit, on an axis named after it."""
    log = SearchLog(tmp_path, resource)
    for step, value in enumerate((2 * budget, 1.5 * budget, budget)):
        log.record(step, 0, value, budget, 0.1)
    log.end_epoch()
    with open(log.path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r[resource]) for r in rows] == pytest.approx([v * scale for v in (2 * budget, 1.5 * budget, budget)])
    assert all(float(r["target"]) == pytest.approx(budget * scale) for r in rows)

    plot_search(log.path, tmp_path / "search.png", budget)
    ax = figures[-1].axes[0]
    assert ax.get_ylabel() == label
    searched = ax.get_lines()[0].get_ydata()
    assert list(searched) == pytest.approx([2 * budget, 1.5 * budget, budget])


@pytest.mark.parametrize(
    ("cfg", "csp_types"),
    [("yolov8n.yaml", {"C2f"}), ("yolo11n.yaml", {"C3k2", "C2PSA"}), ("yolo26n.yaml", {"C3k2", "C2PSA"})],
)
def test_structure_plot_names_real_layer_types_and_whole_blocks(tmp_path, figures, cfg, csp_types):
    supernet = load_supernet(cfg, nc=3)
    randomize_structure(supernet, seed=2)
    plot_structure(supernet, tmp_path / "structure.png")
    widths, depths = figures[-1].axes
    assert {label.get_text().split()[-1] for label in depths.get_xticklabels()} == csp_types
    assert all(name in depths.get_title() for name in csp_types)
    if "C2f" not in csp_types:
        assert "C2f" not in widths.get_title() + depths.get_title()
    for ax in (widths, depths):
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


@pytest.mark.parametrize("umask", [0o027], indirect=True)
def test_parameter_search_writes_one_unit_everywhere_and_respects_the_umask(tmp_path, umask):
    """A tiny `resource=params` search under umask 027: `search.json`'s budget, figure before the fit and
    `params` entries, and `search.csv`'s column, all count parameters one by one; every output is 0640."""
    data = make_dataset(tmp_path / "data", n_train=32, n_val=8, imgsz=IMGSZ, seed=2)
    proc = yolo_dms(
        "search", "model=yolov8n.yaml", f"data={data}", "resource=params", "target=0.5", "epochs=1",
        f"imgsz={IMGSZ}", "batch=8", "workers=0", "device=cpu", "plots=False", "seed=0",
        f"project={tmp_path / 'runs'}", "name=params", cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = tmp_path / "runs" / "params"
    for name in ("pruned.pt", "searched.yaml", "search.json", "search.csv", "search.png", "structure.png"):
        assert mode(run / name) == 0o666 & ~umask, name

    summary = json.loads((run / "search.json").read_text())
    budget, supernet, final = summary["budget"], summary["supernet"], summary["final"]
    assert summary["units"]["params"] == budget["unit"] == "parameters" and summary["units"]["gflops"] == "GFLOPs"
    assert budget["value"] == pytest.approx(0.5 * supernet["params"], rel=1e-6)
    assert final["params"] <= budget["value"]
    assert 0.1 < summary["before_fit"] / supernet["params"] <= 1  # a structure of the supernet, not millions
    with open(run / "search.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert float(last["params"]) == pytest.approx(final["params"], rel=1e-6)
    assert float(last["target"]) == pytest.approx(budget["value"], rel=1e-6)
