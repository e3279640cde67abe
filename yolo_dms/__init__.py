"""yolo-dms: Differentiable Model Scaling for Ultralytics YOLOv8."""

from yolo_dms.core.errors import DMSError, ModelSourceError, UnsupportedModelError
from yolo_dms.core.masks import DepthMask, DerivedWidthMask, WidthMask
from yolo_dms.core.prune import prune, searched_yaml
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.core.topk import differentiable_topk

__version__ = "0.1.0"

__all__ = [
    "DMSError",
    "DepthMask",
    "DerivedWidthMask",
    "ModelSourceError",
    "ResourceModel",
    "Supernet",
    "UnsupportedModelError",
    "WidthMask",
    "differentiable_topk",
    "prune",
    "searched_yaml",
]
