"""The benchmark for every task, at tiny sizes: each arm runs end to end on the demo data of the model's task,
reports that task's own scores and lands on the budget; magnitude pruning keeps every head's output format."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import ultralytics
from ultralytics.nn.tasks import yaml_model_load

from yolo_dms.core.errors import DMSError
from yolo_dms.core.model_io import build_task_model, write_checkpoint
from yolo_dms.core.resources import deployed_gflops
from yolo_dms.core.tasks import DISTILLATION, TASKS
from yolo_dms.tools.benchmark import magnitude_prune, merge_results, run_benchmark


def tiny_model(name: str) -> torch.nn.Module:
    """An untrained model of the packaged `name` YAML at its depth and a tiny width (8 to 128 channels), 3 classes."""
    cfg = yaml_model_load(f"{name}.yaml")
    return build_task_model({**cfg, "scales": {"t": [cfg["scales"]["n"][0], 0.125, 1024]}, "scale": "t", "nc": 3})


def output_shapes(model: torch.nn.Module) -> list:
    """The shapes of what the model returns in eval mode for a 64 px image (its first output: the predictions
    with their format; detection-type heads also return their inputs, which pruning narrows)."""
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    out = out[0] if isinstance(out, tuple) else out
    return [tuple(t.shape) for t in (out if isinstance(out, list) else [out])]


@pytest.mark.parametrize("name", ["yolov8n-pose"])  # segment and classify: pruned in the benchmark runs below
def test_magnitude_pruning_keeps_the_output_format_and_meets_the_budget(name, tmp_path):
    model = tiny_model(name)
    weights = write_checkpoint(model, tmp_path / f"{name}.pt")
    budget = 0.5 * deployed_gflops(model, 64)
    pruned = magnitude_prune(weights, budget, 64, global_pruning=True)
    assert output_shapes(pruned) == output_shapes(model)
    assert 0.97 * budget <= deployed_gflops(pruned, 64) <= budget


@pytest.mark.parametrize("task, arms", [
    ("segment", "dms,magnitude_global,uniform"),
    ("classify", "dms,magnitude_uniform,uniform"),
])
def test_every_arm_reports_the_tasks_scores_at_the_budget(task, arms, tmp_path):
    name = {"segment": "yolov8n-seg", "classify": "yolov8n-cls"}[task]
    out = tmp_path / "run"
    summary = run_benchmark(model=str(write_checkpoint(tiny_model(name), tmp_path / "tiny.pt")), epochs=2, search_epochs=1,
                            imgsz=64, batch=8, seeds="0", arms=arms, n_train=8, n_val=4, latency_runs=0, workers=0,
                            overhead=False, out=str(out))
    with open(out / "benchmark.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == arms.split(",")
    first, second = TASKS[task].metrics
    for row in rows:
        assert row["task"] == task and "coco_map50_95" not in row
        assert all(math.isfinite(float(row[key])) for key in (first.key, second.key, "gflops", "train_min")), row
        if row["arm"] != "uniform":  # as in test_benchmark.py; a tiny uniform model moves in steps of 8 channels, and
            # Classify's 1280-channel conv does not scale with the width
            assert abs(float(row["gflops"]) - float(row["budget"])) <= 0.03 * float(row["budget"]), row
    assert f"| {first.label} | {second.label} |" in summary and (out / "map_vs_gflops.png").exists()


@pytest.mark.parametrize("model, arms, message", [
    ("yolo11n-seg.yaml", "magnitude_global", "arm magnitude_global cannot run: Torch-Pruning cannot prune the "
                                            "attention in layer(s) 10 (C2PSA)"),
    ("yolov8n-cls.yaml", "dms_kd", "arm dms_kd cannot run: Ultralytics " + ("distils through the Detect head"
                                   if DISTILLATION else f"{ultralytics.__version__} has no knowledge distillation")),
])
def test_an_arm_the_model_cannot_run_is_refused_in_one_line(model, arms, message, tmp_path):
    with pytest.raises(DMSError) as error:
        run_benchmark(model=model, arms=arms, out=str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_detection_csv_from_before_the_task_column_still_merges(tmp_path):
    """Rows written before the `task` column (docs/benchmark_trees.csv's, without it) read as detection, with the
    pycocotools column."""
    with open(Path(__file__).parents[1] / "docs" / "benchmark_trees.csv") as f:
        rows = [{k: v for k, v in row.items() if k != "task"} for row in csv.DictReader(f)]
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = merge_results(tmp_path)
    assert "| arm | GFLOPs | params | mAP50-95 | mAP50 | mAP50-95 (pycocotools) | ONNX CPU ms |" in table
    assert "| dms [" in table and (tmp_path / "map_vs_gflops.png").exists()
