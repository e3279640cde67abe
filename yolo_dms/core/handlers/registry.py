"""Which handler owns which layer type: one registration per handler, looked up by the layer's exact type.

Exact types on purpose: `Segment`, `Pose` and `OBB` subclass `Detect` (and `WorldDetect`, `YOLOEDetect` too),
and `DWConv` subclasses `Conv`, yet none of them can be pruned the way their parent is. Gated layers are found
through the stock type they name.
"""

from __future__ import annotations

from torch import nn

from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.handlers.base import LayerHandler, Wiring

HANDLERS: dict[type, type[LayerHandler]] = {}
HEADS: set[type] = set()  # layer types allowed only as the model's last layer


def register(*layer_types: type, head: bool = False):
    """Class decorator: `cls` handles every one of `layer_types` (only as the last layer when `head`)."""

    def decorate(cls: type[LayerHandler]) -> type[LayerHandler]:
        for layer_type in layer_types:
            HANDLERS[layer_type] = cls
            if head:
                HEADS.add(layer_type)
        return cls

    return decorate


def stock_type(layer: nn.Module) -> type:
    """The stock Ultralytics type a (possibly gated) layer stands for."""
    return getattr(type(layer), "stock", type(layer))


def handlers_for(layers: nn.Sequential, w: Wiring, image_channels: int) -> list[LayerHandler]:
    """One handler per layer, each wiring its layer into `w` from its sources' layouts as `parse_model` walks the
    layers; or, before any layer is wired, one error line naming every layer DMS cannot search and prune exactly."""
    last = len(layers) - 1
    bad = [
        f"{i} ({type(layer).__name__})"
        for i, layer in enumerate(layers)
        if stock_type(layer) not in HANDLERS or (stock_type(layer) in HEADS) != (i == last)
    ]
    if bad:
        names = ", ".join(sorted(t.__name__ for t in HANDLERS if t not in HEADS))
        heads = ", ".join(sorted(t.__name__ for t in HEADS))
        raise UnsupportedModelError(
            f"DMS cannot search layer {', '.join(bad)}; supported layers are {names} and a final {heads}"
        )
    handlers: list[LayerHandler] = []
    for i, layer in enumerate(layers):
        froms = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        sources = [(image_channels,)] if i == 0 else [handlers[i - 1 if f == -1 else f].outputs for f in froms]
        handlers.append(HANDLERS[stock_type(layer)](i, w, layer, sources))
    return handlers
