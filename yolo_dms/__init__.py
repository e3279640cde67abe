"""yolo-dms: Differentiable Model Scaling for Ultralytics YOLO. `from yolo_dms import DMS` is the Python API."""

from importlib.metadata import PackageNotFoundError, version

from yolo_dms.api import DMS, SearchResult
from yolo_dms.core.errors import DMSError, ModelSourceError, UnsupportedModelError
from yolo_dms.core.masks import DepthMask, DerivedWidthMask, WidthMask
from yolo_dms.core.model_io import load_supernet
from yolo_dms.core.prune import prune, searched_yaml
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.core.topk import differentiable_topk

try:
    __version__ = version("yolo-dms")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "DMS",
    "DMSError",
    "DepthMask",
    "DerivedWidthMask",
    "ModelSourceError",
    "ResourceModel",
    "SearchResult",
    "Supernet",
    "UnsupportedModelError",
    "WidthMask",
    "differentiable_topk",
    "load_supernet",
    "prune",
    "searched_yaml",
]
