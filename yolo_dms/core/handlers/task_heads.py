"""Segment, Pose and OBB heads (YOLOv8, YOLO11 and YOLO26 variants): a Detect head plus one branch per level.

Each head adds to `Detect` a per-level branch `cv4` (and, end-to-end, its copy `one2one_cv4`) whose hidden
width is derived from the P3 input width exactly as the head's `__init__` derives it:

- `Segment`/`Segment26`: `c4 = max(ch[0] // 4, nm)`, predicting `nm` mask coefficients; plus the mask
  prototype module `proto`, whose hidden width is the YAML's `npr` (searched, a multiple of the divisor).
- `Pose`: `c4 = max(ch[0] // 4, nk)`, predicting `nk = kpt_shape[0] * kpt_shape[1]` keypoint values.
- `Pose26`: `c4 = max(ch[0] // 4, kpt_shape[0] * (kpt_shape[1] + 2))`; `cv4` ends at the hidden width and two
  1x1 convolutions read it, `cv4_kpts` (keypoints) and `cv4_sigma` (training only); the flow model is kept whole.
- `OBB`/`OBB26`: `c4 = max(ch[0] // 4, ne)`, predicting `ne` angles.

Everything else (`nm`, `kpt_shape`, `ne`, the flow model) is fixed by the YAML and kept as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import OBB, OBB26, Pose, Pose26, Segment, Segment26
from ultralytics.utils.ops import make_divisible

from yolo_dms.core.handlers.base import ConvSite, Layout, Space, Wiring, searchable
from yolo_dms.core.handlers.detect import DetectHandler
from yolo_dms.core.handlers.gates import become
from yolo_dms.core.handlers.registry import register


class GatedConvTranspose2d(nn.ConvTranspose2d):
    """The prototype module's 2x upsampling `nn.ConvTranspose2d`, its output channels gated by this pass's mask.

    A closed channel would otherwise carry its bias into the next convolution; gated it is exactly 0.
    """

    stock = nn.ConvTranspose2d
    gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        y = super().forward(x, output_size)
        return y if self.gate is None else y * self.gate.to(y.dtype)[:, None, None]


def transposed_conv(w: Wiring, path: str, module: nn.ConvTranspose2d, inputs: Layout, outputs: Layout) -> None:
    """Record a bare `nn.ConvTranspose2d` with bias reading `inputs` and writing `outputs`; gate its output."""
    become(module, GatedConvTranspose2d)
    w.gated_convs[path] = tuple(outputs)
    w.sites.append(ConvSite(path, tuple((c, None) for c in inputs), tuple(outputs), bn=False))


class BranchHeadHandler(DetectHandler):
    """A Detect head with one more branch `cv4` per level (and its end-to-end copy), wired like `cv2`."""

    def branch_floor(self, head: nn.Module) -> int:
        """The lower bound of the branch's hidden width in the head's `__init__` (`max(ch[0] // 4, floor)`)."""
        raise NotImplementedError

    def branch_outputs(self, head: nn.Module) -> int:
        """Channels the branch predicts per level."""
        raise NotImplementedError

    def wire(self, w: Wiring, head: nn.Module, sources: list[Layout]) -> Layout:
        super().wire(w, head, sources)
        i, nl = self.index, head.nl
        p3 = searchable(sources[0], f"layer {i}: {type(head).__name__}'s P3 input")
        branches = ["cv4"] + (["one2one_cv4"] if getattr(head, "one2one_cv4", None) is not None else [])
        size = head.cv4[0][0].conv.out_channels
        hidden = w.derived(f"l{i}_extra", size, p3, 4, self.branch_floor(head), 2 * nl * len(branches))
        for b, branch in enumerate(branches):
            for k, level in enumerate(sources):
                r = 2 * (b * nl + k)
                self._branch(w, head, branch, k, level, hidden[r : r + 2], counted=b == 0)
        self._wire_extra(w, head, sources)
        return ()

    def _branch(self, w: Wiring, head: nn.Module, branch: str, k: int, level: Layout, hidden: list[Space],
                counted: bool) -> None:
        """Level `k` of `branch`: Conv 3x3, Conv 3x3, then the 1x1 prediction conv."""
        path = f"{self.path}.{branch}.{k}"
        self._pair(w, path, getattr(head, branch)[k], level, hidden, self.branch_outputs(head), counted)

    def _wire_extra(self, w: Wiring, head: nn.Module, sources: list[Layout]) -> None:
        """Modules the head has besides its per-level branches."""


@register(OBB, OBB26, head=True)
class OBBHandler(BranchHeadHandler):
    """OBB and OBB26: the angle branch `cv4`, hidden width `max(ch[0] // 4, ne)`."""

    def branch_floor(self, head: OBB) -> int:
        return head.ne

    def branch_outputs(self, head: OBB) -> int:
        return head.ne


@register(Pose, head=True)
class PoseHandler(BranchHeadHandler):
    """Pose: the keypoint branch `cv4`, hidden width `max(ch[0] // 4, nk)`."""

    def branch_floor(self, head: Pose) -> int:
        return head.nk

    def branch_outputs(self, head: Pose) -> int:
        return head.nk


@register(Pose26, head=True)
class Pose26Handler(BranchHeadHandler):
    """Pose26: `cv4` (two 3x3 Convs, hidden width `max(ch[0] // 4, kpt_shape[0] * (kpt_shape[1] + 2))`) read by
    `cv4_kpts` (keypoints) and `cv4_sigma` (keypoint spreads for the training loss, dropped by `fuse()`, so not
    in the deployed figures). The flow model (`flow_model`, a RealNVP used only by the loss, also dropped by
    `fuse()`) has no searchable width: it is kept whole."""

    def branch_floor(self, head: Pose26) -> int:
        return head.kpt_shape[0] * (head.kpt_shape[1] + 2)

    def _branch(self, w: Wiring, head: Pose26, branch: str, k: int, level: Layout, hidden: list[Space],
                counted: bool) -> None:
        path, seq = f"{self.path}.{branch}.{k}", getattr(head, branch)[k]
        first, second = hidden
        w.conv(f"{path}.0", seq[0], level, (first,), counted=counted)
        w.conv(f"{path}.1", seq[1], (first,), (second,), counted=counted)
        w.plain_conv(f"{self.path}.{branch}_kpts.{k}", (second,), (head.nk,), counted)
        w.plain_conv(f"{self.path}.{branch}_sigma.{k}", (second,), (head.nk_sigma,), counted=False)

    def _wire_extra(self, w: Wiring, head: Pose26, sources: list[Layout]) -> None:
        self.kept_whole = (f"{self.path}.flow_model",)


@register(Segment, Segment26, head=True)
class SegmentHandler(BranchHeadHandler):
    """Segment and Segment26: the mask-coefficient branch `cv4`, hidden width `max(ch[0] // 4, nm)`, and the
    prototype module. Its hidden width is the YAML's `npr` (`args[2]`), searched as one count over every space
    of that width, each with its own importance: `Proto`'s `cv1`, `upsample` and `cv2` outputs; with
    `Proto26` also `feat_fuse` and the semantic branch `semseg` (training only, dropped by `fuse()`).
    `Proto26.feat_refine` maps P4 and P5 onto P3's channels (they are added), so its outputs are P3's spaces."""

    def branch_floor(self, head: Segment) -> int:
        return head.nm

    def branch_outputs(self, head: Segment) -> int:
        return head.nm

    def _wire_extra(self, w: Wiring, head: Segment, sources: list[Layout]) -> None:
        proto, path = head.proto, f"{self.path}.proto"
        p3 = searchable(sources[0], f"layer {self.index}: the prototype module's P3 input")
        names = ["cv1", "upsample", "cv2"]
        if hasattr(proto, "feat_fuse"):  # Proto26
            names += ["feat_fuse"] + (["semseg.0", "semseg.1"] if getattr(proto, "semseg", None) is not None else [])
        hidden = dict(zip(names, w.width(f"l{self.index}_proto", proto.cv1.conv.out_channels, len(names), w.divisor)))
        if "feat_fuse" in hidden:  # P4 and P5 refined onto P3's channels and added, then fused to the hidden width
            for j, refine in enumerate(proto.feat_refine):
                w.conv(f"{path}.feat_refine.{j}", refine, sources[j + 1], p3)
            if "semseg.0" in hidden:  # semantic logits for the training loss only
                first, second = hidden["semseg.0"], hidden["semseg.1"]
                w.conv(f"{path}.semseg.0", proto.semseg[0], p3, (first,), counted=False)
                w.conv(f"{path}.semseg.1", proto.semseg[1], (first,), (second,), counted=False)
                w.plain_conv(f"{path}.semseg.2", (second,), (proto.semseg[2].out_channels,), counted=False)
            w.conv(f"{path}.feat_fuse", proto.feat_fuse, p3, (hidden["feat_fuse"],))
            p3 = (hidden["feat_fuse"],)
        w.conv(f"{path}.cv1", proto.cv1, p3, (hidden["cv1"],))
        transposed_conv(w, f"{path}.upsample", proto.upsample, (hidden["cv1"],), (hidden["upsample"],))
        w.conv(f"{path}.cv2", proto.cv2, (hidden["upsample"],), (hidden["cv2"],))
        w.conv(f"{path}.cv3", proto.cv3, (hidden["cv2"],), (head.nm,))

    def yaml_row(self, row: list, counts: dict[str, int], blocks: dict[str, list[int]]) -> None:
        row[3][2] = counts[f"l{self.index}_proto"]

    def expand_row(self, row: list, width: float, depth: float, divisor: int) -> None:
        row[3][2] = make_divisible(row[3][2] * width, divisor)
