"""SPPF: searchable output (or, with YOLO26's residual, its input's spaces); hidden width `c1 // 2`."""

from __future__ import annotations

from ultralytics.nn.modules import SPPF

from yolo_dms.core.handlers.base import LayerHandler, Layout, Space, Wiring, expand_width, flat, searchable
from yolo_dms.core.handlers.registry import register


@register(SPPF)
class SPPFHandler(LayerHandler):
    """SPPF. With `shortcut` (YOLO26) the output is added to the input channel for channel, so the output is
    the input's own channel spaces (same count, same channels); otherwise it is a width of its own. The hidden
    width is derived from the input, `c1 // 2`, its channels chosen by their own importance."""

    def wire(self, w: Wiring, layer: SPPF, sources: list[Layout]) -> Layout:
        inputs = searchable(flat(sources), f"layer {self.index}: SPPF")
        outputs = inputs if getattr(layer, "add", False) else (w.output(self.index, layer.cv2.conv.out_channels),)
        (hidden,) = w.derived(f"l{self.index}_hidden", layer.cv1.conv.out_channels, inputs, div=2)
        w.conv(f"{self.path}.cv1", layer.cv1, inputs, (hidden,))
        w.conv(f"{self.path}.cv2", layer.cv2, (hidden,) * (getattr(layer, "n", 3) + 1), outputs)
        return outputs

    def yaml_row(self, row: list, counts: dict[str, int], blocks: dict[str, list[int]]) -> None:
        row[3][0] = sum(counts[s.mask] for s in self.outputs if isinstance(s, Space))

    def expand_row(self, row: list, width: float, depth: float, divisor: int) -> None:
        expand_width(row, width, divisor)
