"""Detect heads: YOLOv8's, YOLO11's (depthwise `cv3`) and YOLO26's (end-to-end, `reg_max=1`).

Hidden widths are derived from the P3 input width exactly as `Detect.__init__` computes them:
`c2 = max(16, ch[0] // 4, 4 * reg_max)` for boxes and `c3 = max(ch[0], min(nc, 100))` for classes. The head
is recognised by its layers, not by `Detect.legacy` (a class attribute that `parse_model` overwrites for
every model it builds, so it is wrong for a model loaded after another was built).
"""

from __future__ import annotations

from torch import nn
from ultralytics.nn.modules import Detect

from yolo_dms.core.handlers.base import LayerHandler, Layout, Space, Wiring, searchable
from yolo_dms.core.handlers.registry import register


def depthwise_classes(head: Detect) -> bool:
    """Whether `cv3` is YOLO11's (depthwise 3x3 then 1x1 convolutions) rather than YOLOv8's plain 3x3 pair."""
    return isinstance(head.cv3[0][0], nn.Sequential)


@register(Detect, head=True)
class DetectHandler(LayerHandler):
    """Detect. Each branch (`cv2` boxes, `cv3` classes, and the end-to-end `one2one_` copies) has two hidden
    widths per level, every one a space of the derived box or class width with its own importance. Both
    end-to-end branches are pruned alike (`Detect` builds the one-to-one branch as a copy); only one is
    deployed (`fuse()` drops the other), so the deployed figures count one branch (the one-to-many one, the same
    size) and pruned.pt's as saved (`ResourceModel.training_graph`) count both."""

    def wire(self, w: Wiring, head: Detect, sources: list[Layout]) -> Layout:
        i, nl, nc, reg_max = self.index, head.nl, head.nc, head.reg_max
        p3 = searchable(sources[0], f"layer {i}: Detect's P3 input")
        branches = [("cv2", "cv3", True)]
        if getattr(head, "one2one_cv2", None) is not None:
            branches.append(("one2one_cv2", "one2one_cv3", False))
        rows = 2 * nl * len(branches)
        box = w.derived(f"l{i}_box", head.cv2[0][0].conv.out_channels, p3, 4, max(16, 4 * reg_max), rows)
        cls_size = (head.cv3[0][0][1] if depthwise_classes(head) else head.cv3[0][0]).conv.out_channels
        cls = w.derived(f"l{i}_cls", cls_size, p3, 1, min(nc, 100), rows)
        for b, (box_branch, cls_branch, counted) in enumerate(branches):
            for k, level in enumerate(sources):
                r = 2 * (b * nl + k)
                self._pair(w, f"{self.path}.{box_branch}.{k}", getattr(head, box_branch)[k], level,
                           box[r : r + 2], 4 * reg_max, counted)
                seq, path = getattr(head, cls_branch)[k], f"{self.path}.{cls_branch}.{k}"
                if depthwise_classes(head):
                    self._depthwise_pair(w, path, seq, level, cls[r : r + 2], nc, counted)
                else:
                    self._pair(w, path, seq, level, cls[r : r + 2], nc, counted)
        if reg_max > 1:
            w.plain_conv(f"{self.path}.dfl.conv", (reg_max,), (1,))
        return ()

    @staticmethod
    def _pair(w: Wiring, path: str, seq: nn.Sequential, level: Layout, hidden: list[Space], outputs: int,
              counted: bool) -> None:
        """Conv 3x3, Conv 3x3, then the 1x1 prediction conv."""
        first, second = hidden
        w.conv(f"{path}.0", seq[0], level, (first,), counted=counted)
        w.conv(f"{path}.1", seq[1], (first,), (second,), counted=counted)
        w.plain_conv(f"{path}.2", (second,), (outputs,), counted)

    @staticmethod
    def _depthwise_pair(w: Wiring, path: str, seq: nn.Sequential, level: Layout, hidden: list[Space],
                        outputs: int, counted: bool) -> None:
        """(depthwise 3x3 on the level, 1x1 to the hidden width), (depthwise 3x3, 1x1), then the prediction."""
        first, second = hidden
        w.conv(f"{path}.0.0", seq[0][0], (), level, depthwise=True, counted=counted)
        w.conv(f"{path}.0.1", seq[0][1], level, (first,), counted=counted)
        w.conv(f"{path}.1.0", seq[1][0], (), (first,), depthwise=True, counted=counted)
        w.conv(f"{path}.1.1", seq[1][1], (first,), (second,), counted=counted)
        w.plain_conv(f"{path}.2", (second,), (outputs,), counted)
