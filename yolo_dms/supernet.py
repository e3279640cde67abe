"""A YOLOv8 DetectionModel whose every width and C2f depth is searchable (DESIGN.md section 3).

`Supernet` keeps the stock layers and weights of the model it wraps. It adds a mask for every channel space
and C2f depth, gates the output of every `Conv` with its channel mask, and mixes each C2f bottleneck with
its depth mask. In train mode masks are soft; in eval mode they are hard, so the supernet then computes
exactly what the pruned model computes.

The wiring (`ConvSite`: which channel spaces each convolution reads and writes) is recorded once here and
shared by the resource model and by pruning.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from ultralytics.nn.modules import C2, C2f, Concat, Conv, Detect, SPPF
from ultralytics.nn.tasks import DetectionModel

from yolo_dms.errors import UnsupportedModelError
from yolo_dms.masks import DepthMask, DerivedWidthMask, KeepRatioMask, WidthMask, straight_through
from yolo_dms.model_io import load_detection_model

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
    """Ultralytics `Conv` whose output channels are gated by the mask the supernet sets for this pass.

    The gate scales the BatchNorm's weight and bias, so a closed channel is exactly `act(0) = 0` (SiLU, ReLU),
    and the gradient on the gate comes from BatchNorm's own per-channel reduction: no extra pass over the
    activations, which a multiplication after the activation would cost.
    """

    gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return super().forward(x)
        gate = self.gate.to(self.bn.weight.dtype)
        affine = {"weight": self.bn.weight * gate, "bias": self.bn.bias * gate}
        return self.act(functional_call(self.bn, affine, (self.conv(x),)))


def _gated_block(block: nn.Module, prev: torch.Tensor, gate: torch.Tensor | None, hard: bool, i: int):
    """Bottleneck `i` of a CSP chain under its depth gate: `prev + d_i (f_i(prev) - prev)`.

    With a hard gate a removed block is exactly the identity and a kept one exactly the block.
    """
    if gate is None:
        return block(prev)
    if hard:
        return block(prev) if gate[i] > 0.5 else prev
    return torch.lerp(prev, block(prev), gate[i].to(prev.dtype))


class DepthGatedC2f(C2f):
    """Ultralytics `C2f` with depth-gated bottlenecks; a removed block's concatenated output duplicates its input."""

    depth_gate: torch.Tensor | None = None
    depth_hard: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for i, block in enumerate(self.m):
            y.append(_gated_block(block, y[-1], self.depth_gate, self.depth_hard, i))
        return self.cv2(torch.cat(y, 1))


class DepthGatedC2(C2):
    """Ultralytics `C2` (the YOLOv8-p6 neck) with depth-gated bottlenecks on its `a` chain."""

    depth_gate: torch.Tensor | None = None
    depth_hard: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        for i, block in enumerate(self.m):
            a = _gated_block(block, a, self.depth_gate, self.depth_hard, i)
        return self.cv2(torch.cat((a, b), 1))


def _become(module: nn.Module, cls: type) -> None:
    """Give a stock layer the gated subclass's forward, keeping its parameters and names untouched."""
    module.__class__ = cls


class Supernet(DetectionModel):
    """A YOLOv8 `DetectionModel` with DMS masks; it still trains, validates and saves as one.

    Build it with `Supernet(model)` from a `DetectionModel` (which it takes over, layers and weights) or with
    `Supernet.from_source("yolov8s.yaml" | "weights.pt")`. Once `structure_frozen` is set (the search's refine
    phase) it trains at hard masks too: the weights then train exactly the structure that will be exported.
    """

    structure_frozen: bool = False

    def __init__(self, model: DetectionModel, lam: float = 1.0, depth_lam: float = 4.0, decay: float = 0.99):
        nn.Module.__init__(self)
        self.__dict__.update(model.__dict__)  # same layers, yaml, stride, names, save list, args
        self.masks = nn.ModuleDict()
        self.sites: list[ConvSite] = []
        self.gated_convs: dict[str, tuple[Space, ...]] = {}  # Conv module path -> spaces of its output
        self.gated_csps: dict[str, str] = {}  # C2f / C2 module path -> depth mask name
        self._lam, self._depth_lam, self._decay = lam, depth_lam, decay
        self._wire(model.yaml.get("channels", 3))
        self.to(next(model.parameters()).device)

    @classmethod
    def from_source(cls, source: str | DetectionModel, nc: int | None = None, **mask_args) -> Supernet:
        """Supernet from a model YAML, a `.pt` checkpoint or a `DetectionModel`."""
        model = source if isinstance(source, DetectionModel) else load_detection_model(source, nc=nc)
        return model if isinstance(model, Supernet) else cls(model, **mask_args)

    # ----------------------------------------------------------------------------------------------- wiring
    def _add_mask(self, name: str, mask: nn.Module) -> str:
        self.masks[name] = mask
        return name

    def _width(self, name: str, size: int, spaces: int = 1, divisor: int = 1) -> str:
        return self._add_mask(name, WidthMask(size, spaces, self._lam, self._decay, divisor))

    def _gate(self, path: str, module: Conv, outputs: tuple[Space, ...]) -> None:
        if type(module) not in (Conv, GatedConv) or module.conv.groups != 1:
            raise UnsupportedModelError(f"{path}: only plain Conv layers with groups=1 can be searched")
        if module.act(torch.zeros(1, device=module.conv.weight.device)).abs().item() != 0:
            raise UnsupportedModelError(
                f"{path}: activation {module.act} is not zero at zero, so a pruned channel would leak"
            )
        _become(module, GatedConv)
        self.gated_convs[path] = outputs

    def _conv(self, path: str, module: Conv, inputs, outputs: tuple[Space, ...], block: BlockRef | None = None):
        """Record a gated Conv (conv + BN + act) reading `inputs` and writing `outputs`."""
        self._gate(path, module, outputs)
        self.sites.append(ConvSite(f"{path}.conv", _plain(inputs), outputs, block))

    def _check_supported(self) -> None:
        """Refuse, naming every offending layer, a model with layers DMS cannot search and prune exactly."""
        supported = (Conv, GatedConv, C2f, DepthGatedC2f, C2, DepthGatedC2, SPPF, nn.Upsample, Concat)
        last = len(self.model) - 1
        bad = [
            f"{i} ({type(layer).__name__})"
            for i, layer in enumerate(self.model)
            if not (type(layer) in supported or (i == last and type(layer) is Detect))
        ]
        if bad:
            raise UnsupportedModelError(
                f"DMS cannot search layer {', '.join(bad)}; supported YOLOv8 detection layers are Conv, C2f, C2, "
                "SPPF, nn.Upsample, Concat and a final Detect"
            )

    def _wire(self, image_channels: int) -> None:
        """Walk the layers like `parse_model`, creating masks and recording each conv's channel spaces."""
        self._check_supported()
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
            elif kind in (C2f, DepthGatedC2f, C2, DepthGatedC2):
                layouts.append(self._wire_csp(i, layer, inputs))
            elif kind is SPPF:
                layouts.append(self._wire_sppf(i, layer, inputs))
            elif kind is nn.Upsample:
                layouts.append(inputs)
            elif kind is Concat:
                if layer.d != 1:
                    raise UnsupportedModelError(f"layer {i}: Concat must join channels (dimension 1)")
                layouts.append(inputs)
            else:  # the final Detect, as _check_supported ensures
                self._wire_detect(i, layer, [layouts[i - 1 if f == -1 else f] for f in sources])
                layouts.append(())

    def _wire_csp(self, i: int, layer: C2f | C2, inputs: tuple[Channels, ...]) -> tuple[Space, ...]:
        """C2f or C2: output width, one hidden keep ratio over all its spaces, a depth mask over its blocks.

        C2f chains its bottlenecks on the `b` half and concatenates every output; C2 chains them on the `a`
        half and concatenates only the chain's end with `b`.
        """
        n, c, concat_all = len(layer.m), layer.c, isinstance(layer, C2f)
        chain = csp_chain_row(layer)
        shortcut = n > 0 and layer.m[0].add
        for block in layer.m:
            if block.add != shortcut or block.cv2.conv.groups != 1:
                raise UnsupportedModelError(f"layer {i}: CSP blocks must share one shortcut setting and use g=1")
        out = Space(self._width(f"l{i}", layer.cv2.conv.out_channels, divisor=OUTPUT_DIVISOR))
        hidden = self._width(f"l{i}_hidden", c, spaces=csp_hidden_rows(n, shortcut))
        half_a, half_b = Space(hidden, 0), Space(hidden, 1)
        self._conv(f"model.{i}.cv1", layer.cv1, inputs, (half_a, half_b))
        if n:
            depth = self._add_mask(f"l{i}_depth", DepthMask(n, self._depth_lam, self._decay))
            _become(layer, DepthGatedC2f if concat_all else DepthGatedC2)
            self.gated_csps[f"model.{i}"] = depth
        cv2_inputs: list[tuple[Channels, BlockRef | None]] = [(half_a, None), (half_b, None)]
        prev = Space(hidden, chain)
        for j, block in enumerate(layer.m):
            ref = (depth, j)
            inner, block_out = Space(hidden, 2 + j), Space(hidden, csp_block_output_row(n, j, shortcut, chain))
            self._conv(f"model.{i}.m.{j}.cv1", block.cv1, (prev,), (inner,), ref)
            self._conv(f"model.{i}.m.{j}.cv2", block.cv2, (inner,), (block_out,), ref)
            cv2_inputs.append((block_out, ref))
            prev = block_out
        if not concat_all:
            cv2_inputs = [(prev, None), (half_b, None)]
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

    def hard_counts(self) -> dict[str, int]:
        """Kept elements of every mask (channels, or blocks for depth masks) at hard masks, read in one sync."""
        owners = self.keep_ratio_masks()
        values = torch.stack([m.keep_ratio.detach() for m in owners.values()]).tolist()
        counts = {name: m.hard_count(v) for (name, m), v in zip(owners.items(), values)}
        for name, mask in self.masks.items():
            if isinstance(mask, DerivedWidthMask):
                counts[name] = mask.derive_hard(sum(counts[s] for s in mask.sources))
        return counts

    def soft_counts(self) -> dict[str, torch.Tensor]:
        """Straight-through channel count of every width mask, computed on the device (no host read).

        Its value is the exact hard count (rounding included), its gradient that of the continuous count `k N`
        (derived widths follow their sources), so soft masks and the resource model see what pruning keeps.
        """
        counts = {name: m.count() for name, m in self.keep_ratio_masks().items() if isinstance(m, WidthMask)}
        for name, mask in self.masks.items():
            if isinstance(mask, DerivedWidthMask):
                counts[name] = mask.derive_count(sum(counts[s] for s in mask.sources))
        return counts

    def channel_counts(self, hard: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Straight-through channel count of every width mask: exact hard value, soft gradient.

        `hard` is `hard_counts()` when the caller already has it (one host read per step, not two).
        """
        hard = self.hard_counts() if hard is None else hard
        return {name: straight_through(hard[name], soft) for name, soft in self.soft_counts().items()}

    def hard_channel_counts(self) -> dict[str, int]:
        """Channel count of every width mask at hard masks."""
        return {k: v for k, v in self.hard_counts().items() if not isinstance(self.masks[k], DepthMask)}

    def depth_gates(self, counts: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Straight-through block gates of every C2f: hard 0/1 forward, soft gradient (importance untouched)."""
        counts = self.hard_counts() if counts is None else counts
        gates = {}
        for name, mask in self.masks.items():
            if isinstance(mask, DepthMask):
                soft = mask.soft_masks(mask.count(), track=False)[0]
                gates[name] = straight_through(mask.hard_masks(counts[name])[0], soft)
        return gates

    def kept_blocks(self) -> dict[str, list[int]]:
        """Indices of the bottlenecks each C2f keeps at hard masks."""
        counts = self.hard_counts()
        return {
            name: torch.nonzero(mask.hard_masks(counts[name])[0]).flatten().tolist()
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
        """Compute every mask once for this pass and hand each gated layer its slice.

        Soft masks need no host synchronization: derived widths follow their sources' continuous counts.
        """
        if hard:
            counts = self.hard_counts()
            values = {name: mask.hard_masks(counts[name]) for name, mask in self.masks.items()}
        else:
            counts = self.soft_counts()
            values = {
                name: mask.soft_masks(counts[name] if name in counts else mask.count())
                for name, mask in self.masks.items()
            }
        for path, spaces in self.gated_convs.items():
            self.get_submodule(path).gate = torch.cat([values[s.mask][s.row] for s in spaces])
        for path, depth in self.gated_csps.items():
            module = self.get_submodule(path)
            module.depth_gate, module.depth_hard = values[depth][0], hard

    def _clear_gates(self) -> None:
        """Drop this pass's gates so that copies and checkpoints never carry autograd graphs."""
        for path in self.gated_convs:
            self.get_submodule(path).gate = None
        for path in self.gated_csps:
            self.get_submodule(path).depth_gate = None

    @contextmanager
    def masks_off(self):
        """Run as the unmasked supernet, every channel and block active (to trace shapes, or compare)."""
        self._masks_off = True
        try:
            yield self
        finally:
            self._masks_off = False

    def _predict_once(self, x, profile=False, embed=None):
        """Stock forward with soft masks in train mode and hard masks in eval mode or once the structure is frozen."""
        if getattr(self, "_masks_off", False):
            return super()._predict_once(x, profile, embed)
        self._set_gates(hard=not self.training or self.structure_frozen)
        try:
            return super()._predict_once(x, profile, embed)
        finally:
            self._clear_gates()

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        """Keep BatchNorm unfused: fusing swaps each Conv's forward and would bypass the channel gates."""
        return self


def csp_chain_row(layer: C2f | C2) -> int:
    """Hidden row the bottleneck chain starts from: the `b` half in C2f, the `a` half in C2."""
    return 1 if isinstance(layer, C2f) else 0


def csp_hidden_rows(n: int, shortcut: bool) -> int:
    """Spaces of a CSP hidden mask: halves a and b, n bottleneck inner widths, and n outputs without shortcut."""
    return 2 + n if shortcut else 2 + 2 * n


def csp_block_output_row(n: int, j: int, shortcut: bool, chain: int) -> int:
    """Row of bottleneck j's output space: the chain's own row (residual adds) with shortcut, its own without."""
    return chain if shortcut else 2 + n + j


def _plain(inputs: tuple[Channels, ...]) -> tuple[tuple[Channels, None], ...]:
    return tuple((c, None) for c in inputs)
