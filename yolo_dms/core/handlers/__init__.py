"""Layer handlers: one class per supported layer type, found through a registry (see `registry.py`).

Importing this package registers every handler. Adding a layer type is one handler module plus its
`@register`; the exactness tests run over `HANDLERS`, so a handler without a test model fails them.
"""

from yolo_dms.core.handlers import classify, csp, detect, simple, sppf, task_heads  # noqa: F401  (registration)
from yolo_dms.core.handlers.base import (
    AttentionSite,
    BlockRef,
    Channels,
    ConvSite,
    LayerHandler,
    Layout,
    Space,
    Transfer,
    Wiring,
)
from yolo_dms.core.handlers.registry import HANDLERS, handlers_for, register

__all__ = [
    "AttentionSite",
    "HANDLERS",
    "BlockRef",
    "Channels",
    "ConvSite",
    "LayerHandler",
    "Layout",
    "Space",
    "Transfer",
    "Wiring",
    "handlers_for",
    "register",
]
