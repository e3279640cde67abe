"""`yolo-dms search` of every task's models (segmentation, pose, oriented boxes, classification; YOLOv8, YOLO11,
YOLO26) through the real CLI on the embedded data, and the stock hand-off of what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_stock_trains_and_exports, yolo_dms

from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64
TASKS = {"seg": "segment", "pose": "pose", "obb": "obb", "cls": "classify"}  # model suffix -> task
MODELS = [f"{family}-{suffix}" for family in ("yolov8n", "yolo11n", "yolo26n") for suffix in TASKS]


@pytest.fixture(scope="module")
def task_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {task: make_dataset(root / task, n_train=8, n_val=4, imgsz=IMGSZ, seed=0, task=task) for task in TASKS.values()}


@pytest.mark.parametrize("model", MODELS)
def test_search_of_every_task_model_lands_on_its_budget_and_hands_off_to_stock_ultralytics(model, task_data, tmp_path):
    data = task_data[TASKS[model.split("-")[1]]]
    proc = yolo_dms(
        "search", f"model={model}.yaml", f"data={data}", "target=0.5", "epochs=1", f"imgsz={IMGSZ}", "batch=4",
        "workers=0", "device=cpu", "plots=False", f"project={tmp_path}", "name=search", cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = tmp_path / "search"
    summary = json.loads((run / "search.json").read_text())
    assert summary["final"]["gflops"] <= summary["budget"]["value"] < summary["supernet"]["gflops"]
    assert_stock_trains_and_exports(run, data, IMGSZ, tmp_path / "stock", tmp_path)
