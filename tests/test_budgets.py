"""Budgets in parameters as well as GFLOPs: one budget per search, exact parameter counts after pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_without_yolo_dms, yolo_dms

from yolo_dms.tools.demo_data import make_dataset
from yolo_dms.search.settings import SearchSettings, SettingsError

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
