"""Budgets in parameters as well as GFLOPs: one budget per search, exact parameter counts after pruning."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from helpers import run_without_yolo_dms, yolo_dms

from yolo_dms.search.settings import SearchSettings, SettingsError
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"target": 0.5, "params": 1e6}, "one budget, not target= and params="),
        ({"gflops": 2.0, "params": 1e6}, "one budget, not gflops= and params="),
        ({"resource": "gflops", "params": 1e6}, "resource=gflops contradicts the budget params="),
        ({"resource": "watts"}, "resource must be one of gflops, params"),
        ({"params": -5}, "params must be positive"),
    ],
)
def test_contradictory_budgets_are_refused(arguments, message):
    with pytest.raises(SettingsError, match=message):
        SearchSettings.from_arguments(arguments)


def test_an_absolute_budget_names_its_resource():
    settings = SearchSettings.from_arguments({"params": 2_500_000})
    assert settings.resource == "params" and settings.target is None
    assert settings.budget(10.0) == pytest.approx(2.5)  # millions, the unit the resource model reports
    assert SearchSettings.from_arguments({"resource": "params", "target": 0.4}).budget(10.0) == pytest.approx(4.0)


def test_parameter_budget_holds_for_the_pruned_model_counted_by_stock_ultralytics(tmp_path: Path):
    data = make_dataset(tmp_path / "data", n_train=32, n_val=8, imgsz=IMGSZ, seed=2)
    proc = yolo_dms(
        "search", "model=yolov8n.yaml", f"data={data}", "resource=params", "target=0.5", "epochs=4",
        f"imgsz={IMGSZ}", "batch=8", "workers=0", "device=cpu", "plots=False", "seed=0",
        f"project={tmp_path / 'runs'}", "name=params", cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = tmp_path / "runs" / "params"
    summary = json.loads((run / "search.json").read_text())
    assert summary["budget"]["resource"] == "params"
    code = f"""
        from ultralytics import YOLO
        from ultralytics.nn.tasks import DetectionModel
        pruned = YOLO({str(run / 'pruned.pt')!r}).model
        full = DetectionModel("yolov8n.yaml", nc=len(pruned.names), verbose=False)
        print("RATIO", sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in full.parameters()))
    """
    out = run_without_yolo_dms(code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ratio = float(next(line for line in out.stdout.splitlines() if line.startswith("RATIO")).split()[1])
    assert 0.45 <= ratio <= 0.505, (ratio, summary)


def test_divisor_makes_every_searched_width_a_multiple(tmp_path: Path):
    """divisor=32: every searched width (layer outputs, CSP hidden widths) is a multiple of 32 or stays whole."""
    import yaml

    from yolo_dms.core.model_io import load_checkpoint_model

    data = make_dataset(tmp_path / "data", n_train=16, n_val=8, imgsz=IMGSZ, seed=3)
    proc = yolo_dms(
        "search", "model=yolov8s.yaml", f"data={data}", "divisor=32", "target=0.5", "epochs=1", f"imgsz={IMGSZ}",
        "batch=8", "workers=0", "device=cpu", "plots=False", f"project={tmp_path / 'runs'}", "name=d32", cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = tmp_path / "runs" / "d32"
    supernet = load_checkpoint_model(run / "weights" / "last.pt")
    counts = supernet.hard_counts()
    widths = {n: m for n, m in supernet.keep_ratio_masks().items() if not n.endswith("_depth")}
    assert widths and all(counts[n] % 32 == 0 or counts[n] == m.size for n, m in widths.items()), counts
    assert any(counts[n] < m.size for n, m in widths.items())  # something was pruned, in steps of 32
    searched = yaml.safe_load((run / "searched.yaml").read_text())
    outputs = [row[3][0] for row in searched["backbone"] + searched["head"] if row[2] in ("Conv", "C2f", "SPPF")]
    assert all(c % 32 == 0 for c in outputs), outputs  # yolov8s widths are multiples of 32 to begin with


# Timing noise of a whole-model median on this kind of machine, measured with tools/latency_report.py (see README):
# repeated figures of one exported model stayed within this fraction of each other.
LATENCY_NOISE = 0.10
# measured again in another process, at another moment of a shared machine: the search's own fit holds its figure
# within LATENCY_NOISE, and this second figure carries its own noise on top
REMEASURE_NOISE = 0.25
# At 128 px on an idle 2-core machine yolov8n's ONNX Runtime latency is mostly fixed per-operator overhead: a 60%
# budget was out of reach there (CI: 1.247 of 1.447 ms after every refit); 70% is a cut the widths can reach.
LATENCY_TARGET = 0.7


def test_latency_budget_holds_on_the_measured_latency(tmp_path: Path):
    from yolo_dms.core.latency_backends import OnnxRuntimeCPU, export_weights_onnx

    data = make_dataset(tmp_path / "data", n_train=16, n_val=8, imgsz=128, seed=4)
    proc = yolo_dms(
        "search", "model=yolov8n.yaml", f"data={data}", "resource=latency", f"target={LATENCY_TARGET}", "epochs=2",
        "imgsz=128", "batch=8", "workers=0", "device=cpu", "plots=False", f"project={tmp_path / 'runs'}", "name=lat",
        cwd=tmp_path, env={**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "config")},  # a fresh latency cache
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = tmp_path / "runs" / "lat"
    summary = json.loads((run / "search.json").read_text())["latency"]
    assert summary["measured_ms"] <= LATENCY_TARGET * summary["supernet_measured_ms"] * (1 + LATENCY_NOISE), summary
    info = yolo_dms("info", f"model={run / 'pruned.pt'}", "imgsz=128", "latency=True", cwd=tmp_path,
                    env={**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "config")})
    assert info.returncode == 0 and "ms predicted (onnxruntime-cpu" in info.stdout, info.stdout + info.stderr
    # measured again here, apart from the search: the exported model against the supernet, both from scratch
    from ultralytics.nn.tasks import DetectionModel

    from yolo_dms.core.model_io import write_checkpoint

    full = write_checkpoint(DetectionModel("yolov8n.yaml", nc=5, verbose=False), tmp_path / "full.pt")
    models = {"full": export_weights_onnx(full, 128), "pruned": export_weights_onnx(run / "pruned.pt", 128)}
    figures = {name: [] for name in models}
    for _ in range(3):  # interleaved, median of each: one round that ran faster or slower favours neither model
        for name, onnx in models.items():
            figures[name].append(OnnxRuntimeCPU().time_onnx(onnx, runs=150))
    full_ms, pruned_ms = statistics.median(figures["full"]), statistics.median(figures["pruned"])
    assert pruned_ms <= LATENCY_TARGET * full_ms * (1 + REMEASURE_NOISE), figures
