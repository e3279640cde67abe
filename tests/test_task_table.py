"""The task table (`core.tasks.TASKS`) agrees with Ultralytics and is read by class, never by its order: every
task's demo model builds the table's stock class, wraps into the table's supernet class, and both are found to be
of that task although segmentation, pose and oriented-box models are detection models too and a classification
supernet is a detection supernet too."""

from __future__ import annotations

import pytest
from torch import nn
from ultralytics import YOLO

from yolo_dms import Supernet
from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.model_io import build_task_model
from yolo_dms.core.tasks import TASKS, model_task, stock_model_class

ULTRALYTICS_TASKS = YOLO("yolov8n.yaml").task_map  # the same for every YOLO model


@pytest.mark.parametrize("kind", TASKS.values(), ids=TASKS)
def test_each_task_is_found_by_its_class(kind):
    stock = build_task_model(kind.demo_model, nc=3)
    supernet = Supernet(stock)
    assert type(stock) is kind.model and type(supernet) is kind.supernet
    assert model_task(stock) == model_task(supernet) == kind.name
    assert stock_model_class(supernet) is kind.model


@pytest.mark.parametrize("kind", TASKS.values(), ids=TASKS)
def test_the_table_agrees_with_ultralytics(kind):
    stock = ULTRALYTICS_TASKS[kind.name]
    assert (stock["model"], stock["trainer"]) == (kind.model, kind.trainer)
    assert {metric.result_key for metric in kind.metrics} <= set(stock["validator"]().metrics.keys)


def test_a_model_of_no_task_is_refused():
    with pytest.raises(UnsupportedModelError, match="^Sequential is no model of a task DMS searches"):
        model_task(nn.Sequential())


def test_a_subclass_of_a_stock_model_is_not_taken_for_it():
    """A subclass of a stock model (as `WorldModel` is of `DetectionModel`) may compute something else: it gets
    the plain `Supernet`, not the task supernet of its parent (the exact-class rule the table's lookups follow)."""
    from ultralytics.nn.tasks import SegmentationModel

    class CustomSegmentation(SegmentationModel):
        pass

    assert type(Supernet(build_task_model("yolov8n-seg.yaml", nc=3))) is TASKS["segment"].supernet
    assert type(Supernet(CustomSegmentation("yolov8n-seg.yaml", nc=3, verbose=False))) is Supernet
