"""A YOLOv8 DetectionModel whose every width and C2f depth is searchable (DESIGN.md section 3).

`Supernet` keeps the stock layers and weights of the model it wraps. It adds a mask for every channel space
and C2f depth, gates the output of every `Conv` with its channel mask, and mixes each C2f bottleneck with
its depth mask. In train mode masks are soft; in eval mode they are hard, so the supernet then computes
exactly what the pruned model computes.

The wiring (`ConvSite`: which channel spaces each convolution reads and writes) is recorded once here and
shared by the resource model and by pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.modules import C2f, Concat, Conv, Detect, SPPF
from ultralytics.nn.tasks import DetectionModel

from yolo_dms.errors import UnsupportedModelError
from yolo_dms.masks import DepthMask, DerivedWidthMask, KeepRatioMask, WidthMask, straight_through

OUTPUT_DIVISOR = 8  # parse_model rounds every layer output width up to a multiple of 8


@dataclass(frozen=True)
class Space:
    """One channel space: row `row` of mask `mask` (a mask may hold several spaces sharing a keep ratio)."""

    mask: str
    row: int = 0


Channels = Space | int  # a searchable channel space, or a fixed number of channels (the image, the head outputs)
BlockRef = tuple[str, int]  # (depth mask name, block index)


@dataclass(frozen=True)
class ConvSite:
    """One `nn.Conv2d` of the supernet and the channel spaces it reads and writes.

    `inputs` is the concatenated input layout; an input segment carrying a `BlockRef` only exists while that
    block is kept (a C2f's `cv2` reads every bottleneck output). `block` is set for convolutions inside a
    bottleneck, whose cost is paid only while the block is kept.
    """

    path: str
    inputs: tuple[tuple[Channels, BlockRef | None], ...]
    outputs: tuple[Channels, ...]
    block: BlockRef | None = None
    bn: bool = True


class GatedConv(Conv):
    """Ultralytics `Conv` whose output channels are multiplied by the gate the supernet sets for this pass."""

    gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.gate is None else y * self.gate.to(y.dtype).view(1, -1, 1, 1)


class DepthGatedC2f(C2f):
    """Ultralytics `C2f` whose bottleneck `i` computes `y_i = y_{i-1} + d_i (f_i(y_{i-1}) - y_{i-1})`.

    With a hard gate a removed block is the identity, so its concatenated output duplicates its input.
    """

    depth_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for i, block in enumerate(self.m):
            prev = y[-1]
            if self.depth_gate is None:
                y.append(block(prev))
            elif not self.depth_gate.requires_grad:  # hard gate: exact identity or exact block
                y.append(block(prev) if self.depth_gate[i] > 0.5 else prev)
            else:
                d = self.depth_gate[i].to(prev.dtype)
                y.append(prev + d * (block(prev) - prev))
        return self.cv2(torch.cat(y, 1))


def _become(module: nn.Module, cls: type) -> None:
    """Give a stock layer the gated subclass's forward, keeping its parameters and names untouched."""
    module.__class__ = cls


class Supernet(DetectionModel):
    """A YOLOv8 `DetectionModel` with DMS masks; it still trains, validates and saves as one.

    Build it with `Supernet(model)` from a `DetectionModel` (which it takes over, layers and weights) or with
    `Supernet.from_source("yolov8s.yaml" | "weights.pt")`.
    """

    def __init__(self, model: DetectionModel, lam: float = 1.0, depth_lam: float = 4.0, decay: float = 0.99):
        nn.Module.__init__(self)
        self.__dict__.update(model.__dict__)  # same layers, yaml, stride, names, save list, args
        self.masks = nn.ModuleDict()
        self.sites: list[ConvSite] = []
        self.gated_convs: dict[str, tuple[Space, ...]] = {}  # Conv module path -> spaces of its output
        self.gated_c2fs: dict[str, str] = {}  # C2f module path -> depth mask name
        self._lam, self._depth_lam, self._decay = lam, depth_lam, decay
        self._wire(model.yaml.get("channels", 3))
        self.to(next(model.parameters()).device)

    @classmethod
    def from_source(cls, source: str | DetectionModel, nc: int | None = None, **mask_args) -> Supernet:
        """Supernet from a model YAML, a `.pt` checkpoint or a `DetectionModel`."""
        from yolo_dms.model_io import load_detection_model

        model = source if isinstance(source, DetectionModel) else load_detection_model(source, nc=nc)
        return cls(model, **mask_args)

    # ----------------------------------------------------------------------------------------------- wiring
    def _add_mask(self, name: str, mask: nn.Module) -> str:
        self.masks[name] = mask
        return name

    def _width(self, name: str, size: int, spaces: int = 1, divisor: int = 1) -> str:
        return self._add_mask(name, WidthMask(size, spaces, self._lam, self._decay, divisor))

    def _gate(self, path: str, module: Conv, outputs: tuple[Space, ...]) -> None:
        if type(module) not in (Conv, GatedConv) or module.conv.groups != 1:
            raise UnsupportedModelError(f"{path}: only plain Conv layers with groups=1 can be searched")
        _become(module, GatedConv)
        self.gated_convs[path] = outputs

    def _conv(self, path: str, module: Conv, inputs, outputs: tuple[Space, ...], block: BlockRef | None = None):
        """Record a gated Conv (conv + BN + act) reading `inputs` and writing `outputs`."""
        self._gate(path, module, outputs)
        self.sites.append(ConvSite(f"{path}.conv", _plain(inputs), outputs, block))

    def _wire(self, image_channels: int) -> None:
        """Walk the layers like `parse_model`, creating masks and recording each conv's channel spaces."""
        layouts: list[tuple[Channels, ...]] = []
        for i, layer in enumerate(self.model):
            sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
            if i == 0:
                inputs: tuple[Channels, ...] = (image_channels,)
            else:
                inputs = tuple(c for f in sources for c in layouts[i - 1 if f == -1 else f])
            kind = type(layer)
            if kind in (Conv, GatedConv):
                out = Space(self._width(f"l{i}", layer.conv.out_channels, divisor=OUTPUT_DIVISOR))
                self._conv(f"model.{i}", layer, inputs, (out,))
                layouts.append((out,))
            elif kind in (C2f, DepthGatedC2f):
                layouts.append(self._wire_c2f(i, layer, inputs))
            elif kind is SPPF:
                layouts.append(self._wire_sppf(i, layer, inputs))
            elif kind is nn.Upsample:
                layouts.append(inputs)
            elif kind is Concat:
                if layer.d != 1:
                    raise UnsupportedModelError(f"layer {i}: Concat must join channels (dimension 1)")
                layouts.append(inputs)
            elif kind is Detect and i == len(self.model) - 1:
                self._wire_detect(i, layer, [layouts[i - 1 if f == -1 else f] for f in sources])
                layouts.append(())
            else:
                raise UnsupportedModelError(
                    f"layer {i} is {kind.__name__}, which DMS cannot search; supported YOLOv8 detection layers are "
                    "Conv, C2f, SPPF, nn.Upsample, Concat and a final Detect (use a yolov8*.yaml detection model)"
                )

    def _wire_c2f(self, i: int, layer: C2f, inputs: tuple[Channels, ...]) -> tuple[Space, ...]:
        """C2f: output width, one hidden keep ratio over all its spaces, and a depth mask over its blocks."""
        n, c = len(layer.m), layer.c
        shortcut = n > 0 and layer.m[0].add
        for j, block in enumerate(layer.m):
            if block.add != shortcut or block.cv2.conv.groups != 1:
                raise UnsupportedModelError(f"layer {i}: C2f blocks must share one shortcut setting and use g=1")
        out = Space(self._width(f"l{i}", layer.cv2.conv.out_channels, divisor=OUTPUT_DIVISOR))
        hidden = self._width(f"l{i}_hidden", c, spaces=c2f_hidden_rows(n, shortcut))
        half_a, half_b = Space(hidden, 0), Space(hidden, 1)
        self._conv(f"model.{i}.cv1", layer.cv1, inputs, (half_a, half_b))
        cv2_inputs: list[tuple[Channels, BlockRef | None]] = [(half_a, None), (half_b, None)]
        if n:
            depth = self._add_mask(f"l{i}_depth", DepthMask(n, self._depth_lam, self._decay))
            _become(layer, DepthGatedC2f)
            self.gated_c2fs[f"model.{i}"] = depth
        prev = half_b
        for j, block in enumerate(layer.m):
            ref = (depth, j)
            inner, block_out = Space(hidden, 2 + j), Space(hidden, c2f_block_output_row(n, j, shortcut))
            self._conv(f"model.{i}.m.{j}.cv1", block.cv1, (prev,), (inner,), ref)
            self._conv(f"model.{i}.m.{j}.cv2", block.cv2, (inner,), (block_out,), ref)
            cv2_inputs.append((block_out, ref))
            prev = block_out
        self._gate(f"model.{i}.cv2", layer.cv2, (out,))
        self.sites.append(ConvSite(f"model.{i}.cv2.conv", tuple(cv2_inputs), (out,)))
        return (out,)

    def _wire_sppf(self, i: int, layer: SPPF, inputs: tuple[Channels, ...]) -> tuple[Space, ...]:
        """SPPF: searchable output; hidden width `c1 // 2` derived from its input, channels by importance."""
        if getattr(layer, "add", False) or not all(isinstance(c, Space) for c in inputs):
            raise UnsupportedModelError(f"layer {i}: SPPF with a shortcut or a fixed-width input is not supported")
        out = Space(self._width(f"l{i}", layer.cv2.conv.out_channels, divisor=OUTPUT_DIVISOR))
        hidden = Space(
            self._add_mask(
                f"l{i}_hidden",
                DerivedWidthMask(layer.cv1.conv.out_channels, tuple(c.mask for c in inputs), div=2, floor=0),
            )
        )
        self._conv(f"model.{i}.cv1", layer.cv1, inputs, (hidden,))
        self._conv(f"model.{i}.cv2", layer.cv2, (hidden,) * (layer.n + 1), (out,))
        return (out,)

    def _wire_detect(self, i: int, head: Detect, levels: list[tuple[Channels, ...]]) -> None:
        """Detect: hidden widths derive from the P3 input width exactly as `Detect.__init__` computes them."""
        if not head.legacy or getattr(head, "one2one_cv2", None) is not None:
            raise UnsupportedModelError(f"layer {i}: only the YOLOv8 (legacy, non-end2end) Detect head is supported")
        p3 = levels[0]
        if not all(isinstance(c, Space) for c in p3):
            raise UnsupportedModelError(f"layer {i}: Detect's P3 input must come from searchable layers")
        p3_masks = tuple(c.mask for c in p3)
        nl, reg_max, nc = head.nl, head.reg_max, head.nc
        box = self._add_mask(
            f"l{i}_box",
            DerivedWidthMask(head.cv2[0][0].conv.out_channels, p3_masks, 4, max(16, 4 * reg_max), 2 * nl),
        )
        cls = self._add_mask(
            f"l{i}_cls", DerivedWidthMask(head.cv3[0][0].conv.out_channels, p3_masks, 1, min(nc, 100), 2 * nl)
        )
        for k, level in enumerate(levels):
            for branch, mask, width in (("cv2", box, 4 * reg_max), ("cv3", cls, nc)):
                seq, first, second = getattr(head, branch)[k], Space(mask, 2 * k), Space(mask, 2 * k + 1)
                self._conv(f"model.{i}.{branch}.{k}.0", seq[0], level, (first,))
                self._conv(f"model.{i}.{branch}.{k}.1", seq[1], (first,), (second,))
                self.sites.append(ConvSite(f"model.{i}.{branch}.{k}.2", ((second, None),), (width,), bn=False))
        if reg_max > 1:
            self.sites.append(ConvSite(f"model.{i}.dfl.conv", ((reg_max, None),), (1,), bn=False))

    # ------------------------------------------------------------------------------------------- structure
    def keep_ratio_masks(self) -> dict[str, KeepRatioMask]:
        """The masks that own a learnable keep ratio (the structural parameters)."""
        return {name: m for name, m in self.masks.items() if isinstance(m, KeepRatioMask)}

    def structure_parameters(self) -> list[nn.Parameter]:
        """Keep ratios, to be optimized apart from the weights."""
        return [m.keep_ratio for m in self.keep_ratio_masks().values()]

    def clamp_keep_ratios(self) -> None:
        """Project every keep ratio into its legal range (call after each structure optimizer step)."""
        for mask in self.keep_ratio_masks().values():
            mask.clamp_()

    def channel_counts(self) -> dict[str, torch.Tensor]:
        """Straight-through channel count of every width mask: exact hard value, soft gradient."""
        counts = {name: m.count() for name, m in self.keep_ratio_masks().items() if isinstance(m, WidthMask)}
        for name, mask in self.masks.items():
            if isinstance(mask, DerivedWidthMask):
                counts[name] = mask.derive(sum(counts[s] for s in mask.sources))
        return counts

    def hard_channel_counts(self) -> dict[str, int]:
        """Channel count of every width mask at hard masks."""
        return {name: round(v.detach().item()) for name, v in self.channel_counts().items()}

    def depth_gates(self) -> dict[str, torch.Tensor]:
        """Straight-through block gates of every C2f: hard 0/1 forward, soft gradient (importance untouched)."""
        gates = {}
        for name, mask in self.masks.items():
            if isinstance(mask, DepthMask):
                soft = mask.soft_masks(mask.keep_ratio, track=False)[0]
                gates[name] = straight_through(mask.hard_masks(mask.hard_count())[0], soft)
        return gates

    def kept_blocks(self) -> dict[str, list[int]]:
        """Indices of the bottlenecks each C2f keeps at hard masks."""
        return {
            name: torch.nonzero(mask.hard_masks(mask.hard_count())[0]).flatten().tolist()
            for name, mask in self.masks.items()
            if isinstance(mask, DepthMask)
        }

    def kept_channels(self) -> dict[Space, torch.Tensor]:
        """Sorted supernet channel indices each channel space keeps at hard masks."""
        counts = self.hard_channel_counts()
        return {
            Space(name, row): idx
            for name, mask in self.masks.items()
            if not isinstance(mask, DepthMask)
            for row, idx in enumerate(mask.kept(counts[name]))
        }

    # ------------------------------------------------------------------------------------------- forward
    def _set_gates(self, hard: bool) -> None:
        """Compute every mask once for this pass and hand each gated layer its slice."""
        counts = self.channel_counts()
        values = {}
        for name, mask in self.masks.items():
            if isinstance(mask, DerivedWidthMask):
                values[name] = mask.masks_for(counts[name], hard)
            else:
                values[name] = mask.masks(hard)
        for path, spaces in self.gated_convs.items():
            self.get_submodule(path).gate = torch.cat([values[s.mask][s.row] for s in spaces])
        for path, depth in self.gated_c2fs.items():
            self.get_submodule(path).depth_gate = values[depth][0]

    def _clear_gates(self) -> None:
        """Drop this pass's gates so that copies and checkpoints never carry autograd graphs."""
        for path in self.gated_convs:
            self.get_submodule(path).gate = None
        for path in self.gated_c2fs:
            self.get_submodule(path).depth_gate = None

    def _predict_once(self, x, profile=False, embed=None):
        """Stock forward with soft masks in train mode and hard masks in eval mode."""
        self._set_gates(hard=not self.training)
        try:
            return super()._predict_once(x, profile, embed)
        finally:
            self._clear_gates()

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        """Keep BatchNorm unfused: fusing swaps each Conv's forward and would bypass the channel gates."""
        return self


def c2f_hidden_rows(n: int, shortcut: bool) -> int:
    """Spaces of a C2f hidden mask: halves a and b, n bottleneck inner widths, and n outputs without shortcut."""
    return 2 + n if shortcut else 2 + 2 * n


def c2f_block_output_row(n: int, j: int, shortcut: bool) -> int:
    """Row of bottleneck j's output space: the b chain (residual adds) with shortcut, its own row without."""
    return 1 if shortcut else 2 + n + j


def _plain(inputs: tuple[Channels, ...]) -> tuple[tuple[Channels, None], ...]:
    return tuple((c, None) for c in inputs)
