"""Layers with one searchable output width (Conv) or none of their own (Upsample, Concat)."""

from __future__ import annotations

from torch import nn
from ultralytics.nn.modules import Concat, Conv

from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.handlers.base import LayerHandler, Layout, Wiring, expand_width, flat
from yolo_dms.core.handlers.registry import register


@register(Conv)
class ConvHandler(LayerHandler):
    """`Conv`: its output width is searchable (a multiple of the output divisor)."""

    def wire(self, w: Wiring, layer: Conv, sources: list[Layout]) -> Layout:
        out = w.output(self.index, layer.conv.out_channels)
        w.conv(self.path, layer, flat(sources), (out,))
        return (out,)

    def yaml_row(self, row: list, counts: dict[str, int], blocks: dict[str, list[int]]) -> None:
        row[3][0] = counts[f"l{self.index}"]

    def expand_row(self, row: list, width: float, depth: float, divisor: int) -> None:
        expand_width(row, width, divisor)


@register(nn.Upsample)
class UpsampleHandler(LayerHandler):
    """`nn.Upsample`: no parameters; its output carries its input's channel spaces."""

    def wire(self, w: Wiring, layer: nn.Upsample, sources: list[Layout]) -> Layout:
        return flat(sources)


@register(Concat)
class ConcatHandler(LayerHandler):
    """`Concat`: no parameters; its output is its inputs' channel spaces, concatenated."""

    def wire(self, w: Wiring, layer: Concat, sources: list[Layout]) -> Layout:
        if layer.d != 1:
            raise UnsupportedModelError(f"layer {self.index}: Concat must join channels (dimension 1)")
        return flat(sources)
