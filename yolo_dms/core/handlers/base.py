"""What every layer handler shares: channel spaces, convolution sites, weight transfers, and the wiring context.

A handler declares, for its layer, which channel spaces each convolution reads and writes (`ConvSite`). That one
record drives the gated forward (which mask gates which convolution), the resource model (what each
convolution costs) and pruning (which weight slices each convolution keeps), so the three cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.modules import Conv, DWConv
from ultralytics.utils.ops import make_divisible

from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.handlers.gates import GatedConv, become
from yolo_dms.core.masks import DepthMask, DerivedWidthMask, HeadMask, WidthMask


@dataclass(frozen=True)
class Space:
    """One channel space: row `row` of mask `mask` (a mask may hold several spaces sharing a count)."""

    mask: str
    row: int = 0


Channels = Space | int  # a searchable channel space, or a fixed number of channels (the image, head outputs)
Layout = tuple[Channels, ...]  # the channel spaces of a layer's output, concatenated in order
BlockRef = tuple[str, int]  # (depth mask name, block index)


@dataclass(frozen=True)
class ConvSite:
    """One `nn.Conv2d` of the supernet and the channel spaces it reads and writes.

    `inputs` is the concatenated input layout; an input segment carrying a `BlockRef` only exists while that
    block is kept (a C2f's `cv2` reads every bottleneck output). `block` is set for convolutions inside a
    block, whose cost is paid only while the block is kept. A `depthwise` convolution (groups = channels)
    reads and writes its `outputs` channel for channel and has no `inputs`. A site that is not `counted` is
    a training-only branch that `fuse()` removes: it is in pruned.pt as saved (`ResourceModel.training_graph`),
    not in the deployed model (neither its FLOPs nor its parameters).
    """

    path: str
    inputs: tuple[tuple[Channels, BlockRef | None], ...]
    outputs: Layout
    block: BlockRef | None = None
    bn: bool = True
    depthwise: bool = False
    counted: bool = True


@dataclass(frozen=True)
class AttentionSite:
    """The two matrix products of an `Attention` at its built width, `heads * N^2 * (key_dim + head_dim)`
    multiply-adds over N positions (THOP counts them), paid only while `block` is kept. No parameters."""

    path: str  # the Attention module; N is the output size of its `qkv` convolution
    heads: Channels  # kept heads: a head mask, or a fixed number
    key_dim: int
    head_dim: int
    block: BlockRef | None = None


@dataclass(frozen=True)
class Transfer:
    """Copy one supernet convolution into the pruned model.

    `segments` lists the supernet's input segments in order, each as (the channel space whose values flow
    there at hard masks, the pruned input slot it feeds); segments feeding the same slot are summed.
    """

    dst: str
    src: str
    outputs: Layout
    segments: tuple[tuple[Channels, int], ...]
    bn: bool
    depthwise: bool = False

    @classmethod
    def of(cls, site: ConvSite, dst: str | None = None, substitute: dict | None = None) -> Transfer:
        """The site copied as it is, to `dst`, reading `substitute[c]` wherever it read `c`."""
        substitute = substitute or {}
        segments = tuple((substitute.get(c, c), slot) for slot, (c, _) in enumerate(site.inputs))
        return cls(dst or site.path, site.path, site.outputs, segments, site.bn, site.depthwise)


def flat(sources: list[Layout]) -> Layout:
    """The concatenation of several layouts (what a layer reading several sources sees)."""
    return tuple(c for layout in sources for c in layout)


def searchable(layout: Layout, what: str) -> tuple[Space, ...]:
    """`layout` as channel spaces, refusing fixed widths where a count must be derived from them."""
    if not all(isinstance(c, Space) for c in layout):
        raise UnsupportedModelError(f"{what} must read searchable layers only")
    return layout


OUTPUT_DIVISOR = 8  # default width multiple: parse_model rounds every layer output width up to a multiple of 8


def default_hidden_divisor(divisor: int) -> int:
    """CSP hidden widths move in single channels at the default divisor (a GFLOPs search settles on its budget
    in finer steps) and keep a larger one (hardware that asked for multiples of 16 gets them everywhere)."""
    return divisor if divisor > OUTPUT_DIVISOR else 1


class Wiring:
    """The context handlers wire into: it creates masks and records gated convolutions, blocks and sites.

    `divisor` is the multiple every searchable layer output width keeps (`parse_model` rounds them up to
    multiples of 8, so it is a multiple of 8). CSP hidden widths keep `hidden_divisor`: 1 lets a GFLOPs search
    settle on its budget in fine steps; the divisor itself gives hardware that wants multiples of 8, 16, 32 or
    64 aligned channels in every searched width (runtimes lay channels out in blocks of 8 or 16, and an
    unaligned width costs more than its FLOPs say). Widths that stock
    Ultralytics derives from others (SPPF's `c1 // 2`, the Detect head's, inner block widths) follow their own
    formulas.
    """

    def __init__(
        self, masks: nn.ModuleDict, lam: float, depth_lam: float, decay: float, divisor: int, hidden_divisor: int
    ) -> None:
        self.masks, self.lam, self.depth_lam, self.decay = masks, lam, depth_lam, decay
        self.divisor, self.hidden_divisor = divisor, hidden_divisor
        self.sites: list[ConvSite] = []
        self.attention_sites: list[AttentionSite] = []
        self.gated_convs: dict[str, Layout] = {}  # Conv module path -> spaces of its output
        self.gated_csps: dict[str, str] = {}  # depth-gated CSP layer path -> depth mask name

    # ---------------------------------------------------------------------------------------------- masks
    def output(self, index: int, size: int) -> Space:
        """The searchable output width of layer `index`, a multiple of the output divisor."""
        self.masks[f"l{index}"] = WidthMask(size, 1, self.lam, self.decay, self.divisor)
        return Space(f"l{index}")

    def width(self, name: str, size: int, spaces: int = 1, divisor: int = 1) -> list[Space]:
        """A free width shared by `spaces` channel spaces (one keep ratio, one importance row each)."""
        self.masks[name] = WidthMask(size, spaces, self.lam, self.decay, divisor)
        return [Space(name, row) for row in range(spaces)]

    def derived(self, name: str, size: int, sources: Layout, div: int, floor: int = 0, spaces: int = 1) -> list:
        """Widths that stock Ultralytics derives as `max(floor, sum(sources) // div)`, channels by importance.

        Derived from fixed widths, they are fixed too (plain numbers, no mask).
        """
        if all(isinstance(c, int) for c in sources):
            return [min(size, max(floor, sum(sources) // div))] * spaces
        source_masks = tuple(c.mask for c in searchable(sources, name))
        self.masks[name] = DerivedWidthMask(size, source_masks, div, floor, spaces, self.lam, self.decay)
        return [Space(name, row) for row in range(spaces)]

    def depth(self, name: str, blocks: int) -> str:
        """A depth mask over `blocks` removable blocks."""
        self.masks[name] = DepthMask(blocks, self.depth_lam, self.decay)
        return name

    # ------------------------------------------------------------------------------------------ modules
    def conv(self, path: str, module: nn.Module, inputs, outputs: Layout, block: BlockRef | None = None,
             depthwise: bool = False, counted: bool = True) -> None:
        """Record an Ultralytics `Conv` (conv, BN, act) reading `inputs` and writing `outputs`; gate its output.

        `inputs` holds channel spaces, or (space, block) pairs for segments that exist only with that block.
        """
        if type(module) not in (Conv, DWConv, GatedConv):
            raise UnsupportedModelError(f"{path}: {type(module).__name__} cannot be searched (plain Conv only)")
        conv = module.conv
        if (conv.groups > 1) != depthwise or (depthwise and conv.groups != conv.out_channels):
            raise UnsupportedModelError(f"{path}: only groups=1 or depthwise convolutions can be searched")
        if any(isinstance(c, Space) for c in outputs):
            searchable(outputs, path)
            if module.act(torch.zeros(1, device=conv.weight.device)).abs().item() != 0:
                raise UnsupportedModelError(
                    f"{path}: activation {module.act} is not zero at zero, so a pruned channel would leak"
                )
            become(module, GatedConv)
            self.gated_convs[path] = tuple(outputs)
        pairs = () if depthwise else tuple(c if isinstance(c, tuple) else (c, None) for c in inputs)
        self.sites.append(ConvSite(f"{path}.conv", pairs, tuple(outputs), block, True, depthwise, counted))

    def plain_conv(self, path: str, inputs: Layout, outputs: Layout, counted: bool = True) -> None:
        """Record a bare `nn.Conv2d` with bias (a head's prediction layer), never gated."""
        self.sites.append(ConvSite(path, tuple((c, None) for c in inputs), tuple(outputs), bn=False, counted=counted))

    def heads(self, name: str, attn: nn.Module, width: Channels) -> tuple[Channels, Channels]:
        """The heads of `attn` in a block of `width` channels, as (`qkv` output, values) spaces; fixed numbers
        when the width is fixed."""
        if isinstance(width, int):
            return attn.qkv.conv.out_channels, width
        units = (2 * attn.key_dim + attn.head_dim, attn.head_dim)
        self.masks[name] = HeadMask(attn.num_heads, (width.mask,), attn.head_dim, units, self.lam, self.decay)
        return Space(name, 0), Space(name, 1)

    def attention(self, path: str, attn: nn.Module, heads: Channels, block: BlockRef | None = None) -> None:
        """Record the matrix products of an Ultralytics `Attention` keeping `heads` heads."""
        self.attention_sites.append(AttentionSite(path, heads, attn.key_dim, attn.head_dim, block))

    def depth_gated(self, path: str, module: nn.Module, cls: type, depth: str) -> None:
        """Give `module` the depth-gated forward of `cls`, gated by depth mask `depth`."""
        become(module, cls)
        self.gated_csps[path] = depth


class LayerHandler:
    """Everything about one layer type: masks, gated forward, costs (through its sites), pruning, YAML row.

    A handler is built by wiring its layer, so every method can rely on what wiring found (the spaces the layer
    reads and writes, its depth mask). Subclasses override `wire`, and `yaml_row`, `transfers`, `expand_row` where
    the defaults do not fit. Handlers hold only names and numbers (never modules), so they pickle and copy with
    the supernet.
    """

    # Submodules no mask narrows (a head's pooling and linear layer, a loss-only flow model): pruning copies
    # them as they are, the resource model counts their parameters and, where they run, their `get_flops` cost
    # (one that does not run in an eval forward, like the flow model, is training-only: `fuse()` drops it).
    kept_whole: tuple[str, ...] = ()

    def __init__(self, index: int, w: Wiring, layer: nn.Module, sources: list[Layout]) -> None:
        """Wire layer `index` into `w`, reading `sources` (one layout per `from` entry)."""
        self.index, self.path = index, f"model.{index}"
        self.outputs: Layout = self.wire(w, layer, sources)  # the channel spaces of the layer's output

    def wire(self, w: Wiring, layer: nn.Module, sources: list[Layout]) -> Layout:
        """Declare masks and sites for `layer` reading `sources`; return its output layout. Run once, by the
        constructor: what it records on the handler is the handler's state."""
        raise NotImplementedError

    def yaml_row(self, row: list, counts: dict[str, int], blocks: dict[str, list[int]]) -> None:
        """Write the searched widths and depths into this layer's YAML row `[from, repeats, module, args]`."""

    def transfers(self, sites: list[ConvSite], blocks: dict[str, list[int]]) -> list[Transfer]:
        """The weight copies that build this layer of the pruned model from its `sites`."""
        return [Transfer.of(site) for site in sites]

    def expand_row(self, row: list, width: float, depth: float, divisor: int) -> None:
        """Scale this layer's YAML row for a larger supernet (`yolo-dms expand`)."""


def expand_width(row: list, width: float, divisor: int) -> None:
    """Scale a row's output width `args[0]`, rounded up to a multiple of `divisor` as `parse_model` does."""
    row[3][0] = make_divisible(row[3][0] * width, divisor)
