"""The tasks DMS searches, in one table (`TASKS`).

Each task's `TaskKind` says what every part of yolo-dms needs to know about it: the stock model class `yolo train`
builds for it, its supernet class, the stock trainer its search trainer extends, the two scores it is judged by
and the model the demo trains.
The supernet classes live in `core/supernet.py`; checkpoints saved when they lived here still unpickle, since
this module names them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.models.yolo import classify, detect, obb, pose, segment
from ultralytics.nn.tasks import (
    BaseModel,
    ClassificationModel,
    DetectionModel,
    OBBModel,
    PoseModel,
    SegmentationModel,
)
from ultralytics.utils import DEFAULT_CFG_DICT

from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.supernet import (
    ClassificationSupernet,
    OBBSupernet,
    PoseSupernet,
    SegmentationSupernet,
    Supernet,
)


@dataclass(frozen=True)
class Metric:
    """One score of a task: its key in `evaluation.validate`'s scores, its label in tables, and the key of
    Ultralytics' `metrics.results_dict` it is read from."""

    key: str
    label: str
    result_key: str


@dataclass(frozen=True)
class TaskKind:
    """One task DMS searches: the stock model class `yolo train` builds for it, its supernet class, the stock
    trainer a search of it extends, its two scores (the first ranks models) and the model the demo trains."""

    name: str
    model: type[BaseModel]
    supernet: type[Supernet]
    trainer: type[BaseTrainer]
    metrics: tuple[Metric, Metric]
    demo_model: str


def _map_metrics(kind: str, suffix: str) -> tuple[Metric, Metric]:
    """mAP50-95 and mAP50 of a box, mask, pose or OBB task, as its validator's `results_dict` names them."""
    prefix = f"{kind} " if kind else ""
    return (Metric("map50_95", f"{prefix}mAP50-95", f"metrics/mAP50-95({suffix})"),
            Metric("map50", f"{prefix}mAP50", f"metrics/mAP50({suffix})"))


# Whether this Ultralytics distils (`distill_model=`, `dis=`; through the Detect head): 8.4.0 does not
DISTILLATION = "distill_model" in DEFAULT_CFG_DICT

TASKS: dict[str, TaskKind] = {
    kind.name: kind
    for kind in (
        TaskKind("detect", DetectionModel, Supernet, detect.DetectionTrainer, _map_metrics("", "B"), "yolov8n.yaml"),
        TaskKind("segment", SegmentationModel, SegmentationSupernet, segment.SegmentationTrainer,
                 _map_metrics("mask", "M"), "yolov8n-seg.yaml"),
        TaskKind("pose", PoseModel, PoseSupernet, pose.PoseTrainer, _map_metrics("pose", "P"), "yolov8n-pose.yaml"),
        TaskKind("obb", OBBModel, OBBSupernet, obb.OBBTrainer, _map_metrics("OBB", "B"), "yolov8n-obb.yaml"),
        TaskKind("classify", ClassificationModel, ClassificationSupernet, classify.ClassificationTrainer,
                 (Metric("top1", "top-1 accuracy", "metrics/accuracy_top1"),
                  Metric("top5", "top-5 accuracy", "metrics/accuracy_top5")), "yolov8n-cls.yaml"),
    )
}


def model_task(model: nn.Module) -> str:
    """The task of a stock model or a supernet, as `yolo train` picks its trainer: that of the nearest of its
    classes (in its MRO) the table names. A segmentation model is a detection model too, and a classification
    supernet a detection supernet too, so the most derived class decides, never the table's order."""
    tasks = {cls: kind.name for kind in TASKS.values() for cls in (kind.model, kind.supernet)}
    task = next((tasks[cls] for cls in type(model).__mro__ if cls in tasks), None)
    if task is None:
        raise UnsupportedModelError(f"{type(model).__name__} is no model of a task DMS searches ({', '.join(TASKS)})")
    return task


def stock_model_class(supernet: Supernet) -> type[BaseModel]:
    """The stock Ultralytics model class a supernet stands for (what its pruned model is built as)."""
    return TASKS[model_task(supernet)].model
