"""yolo-dms: Differentiable Model Scaling for Ultralytics YOLOv8."""

from yolo_dms.errors import DMSError, ModelSourceError, UnsupportedModelError
from yolo_dms.masks import DepthMask, DerivedWidthMask, WidthMask
from yolo_dms.prune import prune, searched_yaml
from yolo_dms.resources import ResourceModel
from yolo_dms.supernet import Supernet
from yolo_dms.topk import differentiable_topk

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
