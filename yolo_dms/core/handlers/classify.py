"""Classify: the classification head, `Conv(c1, 1280)`, global average pooling, then `Linear(1280, nc)`.

Its hidden width `c_ = 1280` is a constant of `Classify.__init__` that no YAML argument sets (`args` are `c2`
(the class count), kernel, stride, padding and groups), so it stays fixed: the head's convolution is narrowed
only on its input side, which follows the searched width of the layer it reads. Pooling and the linear layer
are kept whole.
"""

from __future__ import annotations

from ultralytics.nn.modules import Classify

from yolo_dms.core.handlers.base import LayerHandler, Layout, Wiring, flat, searchable
from yolo_dms.core.handlers.registry import register


@register(Classify, head=True)
class ClassifyHandler(LayerHandler):
    """Classify: its convolution reads the searched input and writes the fixed 1280 channels."""

    def wire(self, w: Wiring, head: Classify, sources: list[Layout]) -> Layout:
        inputs = searchable(flat(sources), f"layer {self.index}: Classify's input")
        w.conv(f"{self.path}.conv", head.conv, inputs, (head.conv.conv.out_channels,))
        self.kept_whole = (f"{self.path}.pool", f"{self.path}.linear")
        return ()
