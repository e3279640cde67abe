"""The blocks a CSP layer chains (Bottleneck, C3k, Bottleneck + PSABlock), one wiring per block type.

A CSP handler gives each block its input channels `x`, its output channels `out` (the same space as `x` for a
residual block, a fresh space of the chain's width otherwise), its depth gate `ref` and an iterator over
inner widths: spaces of the layer's inner width, which stock Ultralytics derives from the chain width
(`e=1.0` in C2f and C2, `int(c * 0.5)` in C3k2). Every convolution of a block is paid only while it is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from ultralytics.nn.modules.block import Bottleneck, C3k, PSABlock

from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.handlers.base import BlockRef, Channels, Space, Wiring

BLOCKS: dict[type, type[BlockHandler]] = {}


def register_block(block_type: type):
    """Class decorator: `cls` wires every chained block of exactly `block_type`."""

    def decorate(cls: type[BlockHandler]) -> type[BlockHandler]:
        BLOCKS[block_type] = cls
        return cls

    return decorate


def block_handler(block: nn.Module, path: str) -> BlockHandler:
    """The handler of one chained block, or an error naming it."""
    cls = BLOCKS.get(type(block))
    if cls is None or not cls.accepts(block):
        raise UnsupportedModelError(f"{path}: DMS cannot search a {type(block).__name__} block here")
    return cls()


class BlockHandler:
    """Wiring of one block type inside a CSP chain."""

    @staticmethod
    def accepts(block: nn.Module) -> bool:
        return True

    def chain_step(self, block: nn.Module) -> int | None:
        """The multiple the chain width must keep for this block to rebuild exactly; None: its width is fixed."""
        return 1

    def residual(self, block: nn.Module) -> bool:
        """Whether the block adds its input to its output (then its output is its input's channel space)."""
        raise NotImplementedError

    def inner_rows(self, block: nn.Module) -> int:
        """How many inner-width spaces the block takes."""
        raise NotImplementedError

    def wire(self, w: Wiring, path: str, block: nn.Module, x: Channels, out: Channels, ref: BlockRef,
             inner: Iterator[Channels], name: str) -> None:
        """Record the block's convolutions; `name` prefixes any mask of its own."""
        raise NotImplementedError


def wire_bottleneck(w: Wiring, path: str, block: Bottleneck, x: Channels, hidden: Channels, out: Channels,
                    ref: BlockRef) -> None:
    """Bottleneck: `cv1` x -> hidden, `cv2` hidden -> out (out is x's space when it adds its input)."""
    w.conv(f"{path}.cv1", block.cv1, (x,), (hidden,), ref)
    w.conv(f"{path}.cv2", block.cv2, (hidden,), (out,), ref)


@register_block(Bottleneck)
class BottleneckBlock(BlockHandler):
    """A Bottleneck of C2f, C2 or C3k2; its hidden width is the layer's inner width."""

    def residual(self, block: Bottleneck) -> bool:
        return block.add

    def inner_rows(self, block: Bottleneck) -> int:
        return 1

    def wire(self, w, path, block, x, out, ref, inner, name) -> None:
        wire_bottleneck(w, path, block, x, next(inner), out, ref)


@register_block(C3k)
class C3kBlock(BlockHandler):
    """C3k (YOLO11 m/l/x and some n/s stages): `cv1` and `cv2` halve the chain width (`c // 2`, the layer's
    inner width), two Bottlenecks of that width run on `cv1`'s half (their depth fixed: the YAML cannot
    express it), and `cv3` joins them back to the chain width. Not residual: its output is a space of its own."""

    def residual(self, block: C3k) -> bool:
        return False

    def inner_rows(self, block: C3k) -> int:
        return 2 + sum(1 if b.add else 2 for b in block.m)

    def wire(self, w, path, block, x, out, ref, inner, name) -> None:
        half, side = next(inner), next(inner)
        w.conv(f"{path}.cv1", block.cv1, (x,), (half,), ref)
        w.conv(f"{path}.cv2", block.cv2, (x,), (side,), ref)
        prev = half
        for k, b in enumerate(block.m):
            hidden = next(inner)
            b_out = prev if b.add else next(inner)
            wire_bottleneck(w, f"{path}.m.{k}", b, prev, hidden, b_out, ref)
            prev = b_out
        w.conv(f"{path}.cv3", block.cv3, (prev, side), (out,), ref)


def wire_psa_block(w: Wiring, path: str, block: PSABlock, x: Channels, ref: BlockRef, name: str) -> None:
    """PSABlock (attention, then a c -> 2c -> c FFN, both residual) on the chain's channels `x`.

    Heads are kept or dropped whole (see `masks.HeadMask`); the FFN's hidden width is `2 x`, its channels by
    importance. At a fixed width (a single head) everything is fixed and only the block is removable.
    """
    if not block.add:
        raise UnsupportedModelError(f"{path}: only residual PSABlocks can be searched")
    attn = block.attn
    qkv, values = w.heads(f"{name}_heads", attn, x)
    w.conv(f"{path}.attn.qkv", attn.qkv, (x,), (qkv,), ref)
    w.conv(f"{path}.attn.pe", attn.pe, (), (values,), ref, depthwise=True)
    w.conv(f"{path}.attn.proj", attn.proj, (values,), (x,), ref)
    w.attention(f"{path}.attn", attn, attn.num_heads if isinstance(x, int) else Space(f"{name}_heads"), ref)
    (ffn,) = w.derived(f"{name}_ffn", block.ffn[0].conv.out_channels, (x, x), div=1)
    w.conv(f"{path}.ffn.0", block.ffn[0], (x,), (ffn,), ref)
    w.conv(f"{path}.ffn.1", block.ffn[1], (ffn,), (x,), ref)


def attention_step(attn) -> int | None:
    """The step an attention block's width moves in: whole heads, or None (fixed) with a single head."""
    return attn.head_dim if attn.num_heads > 1 else None


@register_block(PSABlock)
class PSABlockHandler(BlockHandler):
    """A PSABlock of C2PSA."""

    def chain_step(self, block: PSABlock) -> int | None:
        return attention_step(block.attn)

    def residual(self, block: PSABlock) -> bool:
        return True

    def inner_rows(self, block: PSABlock) -> int:
        return 0

    def wire(self, w, path, block, x, out, ref, inner, name) -> None:
        wire_psa_block(w, path, block, x, ref, name)


@register_block(nn.Sequential)
class AttentionBlock(BlockHandler):
    """C3k2's attention block (YOLO26): a residual Bottleneck then a PSABlock, both at the chain width."""

    @staticmethod
    def accepts(block: nn.Sequential) -> bool:
        return [type(b) for b in block] == [Bottleneck, PSABlock] and block[0].add

    def chain_step(self, block: nn.Sequential) -> int | None:
        return attention_step(block[1].attn)

    def residual(self, block: nn.Sequential) -> bool:
        return True

    def inner_rows(self, block: nn.Sequential) -> int:
        return 1

    def wire(self, w, path, block, x, out, ref, inner, name) -> None:
        wire_bottleneck(w, f"{path}.0", block[0], x, next(inner), x, ref)
        wire_psa_block(w, f"{path}.1", block[1], x, ref, name)
