"""The benchmark runs every arm end to end on tiny demo data and fills every column."""

from __future__ import annotations

import csv
import math

from yolo_dms.benchmark import run_benchmark


def test_benchmark_fills_every_column_for_every_arm(tmp_path):
    out = tmp_path / "bench"
    summary = run_benchmark(
        model="yolov8n.yaml", epochs=2, search_epochs=1, imgsz=64, batch=8, seeds="0", n_train=16, n_val=8,
        latency_runs=5, out=str(out),
    )
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == ["dms", "dms_scratch", "uniform", "magnitude"]
    for row in rows:
        assert all(value != "" for value in row.values()), row
        for key in ("gflops", "params", "map50_95", "map50", "coco_map50_95", "onnx_ms", "structure_min",
                    "train_min", "eval_min", "total_min"):
            assert math.isfinite(float(row[key])), (row["arm"], key)
        assert float(row["gflops"]) > 0 and float(row["onnx_ms"]) > 0
        assert float(row["train_min"]) > 0 and float(row["eval_min"]) > 0
        assert (float(row["structure_min"]) > 0) == (row["arm"] != "uniform")
    budget = float(summary.split("Budget ")[1].split(" ")[0])
    for row in rows:
        assert abs(float(row["gflops"]) - budget) <= 0.03 * budget + 1e-9, row
    assert "Search overhead:" in summary and (out / "map_vs_gflops.png").exists()
