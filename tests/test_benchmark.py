"""The benchmark from a `.pt` on a Roboflow-layout dataset with non-numeric file names: every arm runs end to
end, fills every column, lands on the budget, and its pycocotools check agrees with Ultralytics' validator."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import OLDEST_ULTRALYTICS
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from yolo_dms.cli import main
from yolo_dms.core.model_io import trained_on, write_checkpoint, write_model_yaml
from yolo_dms.core.tasks import DISTILLATION
from yolo_dms.tools.benchmark import (
    ARMS,
    arm_points,
    columns,
    merge_results,
    plot,
    run_benchmark,
    summarize,
    x_window,
)
from yolo_dms.tools.demo_data import make_dataset


def roboflow_dataset(root: Path) -> Path:
    """Demo data re-laid out as Roboflow exports it: `train/images`, `valid/images`, names that are not numbers,
    and a data YAML with absolute split paths and no `path:` key."""
    source = yaml.safe_load(make_dataset(root / "source", n_train=16, n_val=8, imgsz=64).read_text())
    for split, folder in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            (root / folder / kind).mkdir(parents=True)
        for image in sorted((Path(source["path"]) / "images" / split).iterdir()):
            name = f"frame_{image.stem}_png.rf.{int(image.stem) * 7919 % 10007:05x}"
            shutil.copy(image, root / folder / "images" / f"{name}{image.suffix}")
            shutil.copy(Path(source["path"]) / "labels" / split / f"{image.stem}.txt",
                        root / folder / "labels" / f"{name}.txt")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"train": str(root / "train" / "images"), "val": str(root / "valid" / "images"),
                                    "nc": len(source["names"]), "names": source["names"]}))
    return data


def tiny_cfg(nc: int) -> dict:
    """A YOLOv8 of a tiny width (8 to 128 channels)."""
    return {**yaml_model_load("yolov8n.yaml"), "scales": {"t": [0.33, 0.125, 1024]}, "scale": "t", "nc": nc}


def tiny_checkpoint(path: Path, nc: int) -> Path:
    """A tiny YOLOv8 checkpoint, as a user's `.pt`."""
    return write_checkpoint(DetectionModel(tiny_cfg(nc), verbose=False), path)


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    data = roboflow_dataset(root / "data")
    model = tiny_checkpoint(root / "tiny.pt", nc=5)
    stock = write_model_yaml(tiny_cfg(nc=5), root / "tinystock.yaml")  # the stock arm, from scratch
    out = root / "run" / "t0.5"
    summary = run_benchmark(model=str(model), data=str(data), epochs=2, search_epochs=1, imgsz=64, batch=8,
                            seeds="0", latency_runs=3, workers=0, overhead=False, out=str(out),
                            stock_models=str(stock))
    with open(out / "benchmark.csv") as f:
        return summary, list(csv.DictReader(f)), out


def test_every_arm_fills_every_column_and_the_pruned_ones_meet_the_budget(benchmark_run):
    summary, rows, out = benchmark_run
    arms = [arm for arm in ARMS[:-1] if arm != "dms_kd" or DISTILLATION]  # 8.4.0 cannot distil
    assert [r["arm"] for r in rows] == [*arms, "stock_tinystock"]  # the stock arm: a row per stock model
    budget = float(rows[0]["budget"])
    for row in rows:
        assert all(value != "" for value in row.values()), row
        for key in ("gflops", "params", "map50_95", "map50", "coco_map50_95", "onnx_ms", "train_min", "eval_min"):
            assert math.isfinite(float(row[key])) != (key == "coco_map50_95" and OLDEST_ULTRALYTICS), (row["arm"], key)
        assert float(row["onnx_ms"]) > 0 and float(row["train_min"]) > 0
        assert (float(row["structure_min"]) > 0) == (row["arm"] not in {"uniform", "reference", "stock_tinystock"})
        if row["arm"] in {"reference", "stock_tinystock"}:  # unpruned models (the stock one is the same tiny YOLOv8)
            assert float(row["gflops"]) > 1.5 * budget, row
        else:
            assert abs(float(row["gflops"]) - budget) <= 0.03 * budget, row
    assert ("| dms_kd |" in summary) == DISTILLATION and (out / "map_vs_gflops.png").exists()


def test_distillation_teacher_knows_the_data(benchmark_run):
    """The starting .pt was trained on other classes, so dms_kd distils from the reference arm's fine-tune."""
    if not DISTILLATION:
        pytest.skip("this Ultralytics has no distillation")
    _, _, out = benchmark_run
    args = yaml.safe_load((out / "seed0" / "dms_kd" / "args.yaml").read_text())
    assert Path(args["distill_model"]) == out / "seed0" / "reference" / "weights" / "last.pt"


def test_pycocotools_scores_the_validators_own_ground_truth(benchmark_run):
    """Non-numeric names and the Roboflow layout reach pycocotools intact: where the model finds anything,
    both implementations see the same images and boxes, so their mAP50-95 are close."""
    if OLDEST_ULTRALYTICS:
        pytest.skip("Ultralytics 8.4.0 builds no ground truth from the labels")
    _, rows, _ = benchmark_run
    for row in rows:
        ultralytics_map, coco_map = float(row["map50_95"]), float(row["coco_map50_95"])
        assert abs(ultralytics_map - coco_map) <= 0.05 + 0.2 * ultralytics_map, row


def test_a_checkpoint_trained_on_the_data_classes_is_a_teacher(tmp_path):
    model = DetectionModel({**yaml_model_load("yolov8n.yaml"), "scales": {"t": [0.33, 0.125, 1024]}, "scale": "t",
                            "nc": 2}, verbose=False)
    model.names = {0: "tree", 1: "shrub"}
    path = write_checkpoint(model, tmp_path / "trees.pt")
    assert trained_on(path, {0: "tree", 1: "shrub"}) and trained_on(path, ["tree", "shrub"])
    assert not trained_on(path, {0: "shrub", 1: "tree"}) and not trained_on(path, ["tree"])


def test_merge_joins_parallel_runs(benchmark_run):
    _, rows, out = benchmark_run
    table = merge_results(out.parent)
    assert "Target 0.5:" in table and table.count("| magnitude_global |") == 1
    with open(out.parent / "benchmark.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_the_plot_shows_each_arms_mean_and_spread_and_the_stock_curve(tmp_path):
    row = {"arm": "dms", "target": 0.5, "budget": 1.0, "seed": 0, **dict.fromkeys(columns("detect"), 0.5)}
    rows = [row, {**row, "seed": 1, "map50_95": 0.7, "gflops": 0.52}, {**row, "arm": "taylor_uniform"},
            {**row, "arm": "stock_yolov8n", "gflops": 0.9, "map50_95": 0.8},
            {**row, "arm": "stock_yolov8s", "gflops": 2.0, "map50_95": 0.9}]
    points = dict(arm_points(rows, "gflops", "map50_95"))
    assert points["dms"] == pytest.approx((0.51, 0.6, 0.1))  # mean x, mean y, population std of y
    assert set(points) == {"dms", "taylor_uniform", "stock_yolov8n", "stock_yolov8s"}
    two_targets = dict(arm_points(rows + [{**row, "target": 0.3}], "gflops", "map50_95"))
    assert "dms (0.5)" in two_targets and "dms (0.3)" in two_targets
    plot(rows, tmp_path / "map_vs_gflops.png")
    assert (tmp_path / "map_vs_gflops.png").stat().st_size > 10_000


def test_arms_at_one_budget_read_as_one_x_value():
    low, high = x_window([0.3426, 0.3428])  # equal-budget arms: no axis zoomed into 0.06%
    assert high - low == pytest.approx(0.24 * 0.3428) and low < 0.3426 and high > 0.3428
    low, high = x_window([0.33, 1.15])  # a wide spread keeps a 10% margin on each side
    assert (low, high) == pytest.approx((0.33 - 0.082, 1.15 + 0.082))


def test_skipped_onnx_timing_reads_as_a_dash():
    row = {"arm": "dms", "target": 0.5, "budget": 1.0, "seed": 0, **dict.fromkeys(columns("detect"), 0.5),
           "onnx_ms": float("nan")}
    line = next(line for line in summarize([row, {**row, "seed": 1}]).splitlines() if line.startswith("| dms |"))
    assert line.split(" | ")[6] == "-" and "nan" not in line


def test_arms_merged_over_different_seeds_name_their_own():
    """Runs joined by `merge` can give the arms different seeds; the table must not claim one set for all."""
    row = {"arm": "dms", "target": 0.5, "budget": 1.0, "seed": 0, **dict.fromkeys(columns("detect"), 0.5)}
    rows = [row, {**row, "seed": 1, "map50_95": 0.7}, {**row, "arm": "reference", "seed": 2}]
    table = summarize(rows)
    assert "each arm's seeds" in table and "| dms [0, 1] | " in table and "| reference [2] | " in table
    assert "0.6000 ± 0.1000" in table.splitlines()[4]
    assert "over seeds [0, 1]." in summarize(rows[:2])


@pytest.mark.parametrize("args, message", [
    (["data=/nonexistent/data.yaml"], "dataset YAML '/nonexistent/data.yaml' does not exist"),
    (["model=/nonexistent/model.pt"], "model file '/nonexistent/model.pt' does not exist"),
    (["arms=dms,bogus"], "unknown arm(s) ['bogus']"),
    (["epochs=3", "search_epochs=3"], "search_epochs must be"),
])
def test_bad_input_is_one_line_and_status_2(args, message, capsys, tmp_path):
    assert main(["benchmark", f"out={tmp_path}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
