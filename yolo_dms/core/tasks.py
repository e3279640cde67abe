"""One supernet class per Ultralytics task, each a subclass of that task's model class.

A supernet trains, validates and saves as the model it wraps, so it must be that model's class: the task's
loss (`init_criterion`), and what trainers and validators look for. `Supernet` itself is the detection one;
segmentation, pose and oriented-box models subclass `DetectionModel` and combine with it directly. A
classification model does not, so `ClassificationSupernet` takes back the methods `DetectionModel` would
otherwise put ahead of `ClassificationModel`'s. `Supernet(model)` picks the class from the model's; the
classes live at module level so that checkpoints unpickle.
"""

from __future__ import annotations

from torch import nn
from ultralytics.nn.tasks import (
    BaseModel,
    ClassificationModel,
    DetectionModel,
    OBBModel,
    PoseModel,
    SegmentationModel,
)

from yolo_dms.core.supernet import Supernet


class SegmentationSupernet(Supernet, SegmentationModel):
    """Supernet of a YOLO instance segmentation model (`Segment`, `Segment26` heads)."""


class PoseSupernet(Supernet, PoseModel):
    """Supernet of a YOLO pose model (`Pose`, `Pose26` heads)."""


class OBBSupernet(Supernet, OBBModel):
    """Supernet of a YOLO oriented-box model (`OBB`, `OBB26` heads)."""


class ClassificationSupernet(Supernet, ClassificationModel):
    """Supernet of a YOLO classification model (`Classify` head)."""

    init_criterion = ClassificationModel.init_criterion
    _predict_augment = ClassificationModel._predict_augment  # BaseModel's: single-scale, not Detect's flips


SUPERNETS: dict[type, type[Supernet]] = {
    DetectionModel: Supernet,
    SegmentationModel: SegmentationSupernet,
    PoseModel: PoseSupernet,
    OBBModel: OBBSupernet,
    ClassificationModel: ClassificationSupernet,
}


def supernet_class(model: nn.Module) -> type[Supernet]:
    """The supernet class for `model`, found by its exact stock class (a subclass such as `WorldModel` changes
    what it computes); any other model gets `Supernet`, which names the layers it cannot search."""
    return SUPERNETS.get(type(model), Supernet)


def stock_model_class(supernet: Supernet) -> type[BaseModel]:
    """The stock Ultralytics model class a supernet stands for (what its pruned model is built as)."""
    stock = {cls: model for model, cls in SUPERNETS.items()}
    return next(stock[cls] for cls in type(supernet).__mro__ if cls in stock)
