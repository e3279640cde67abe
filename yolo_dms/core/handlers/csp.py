"""CSP layers (C2f, C2, C3k2, C2PSA): `cv1` splits into halves `a` and `b`, one half runs a chain of removable
blocks, and `cv2` joins. Searchable: the output width, the chain (hidden) width, the inner width derived from
it, and the depth.

The hidden width is one keep ratio over several channel spaces (the halves, and each non-residual block's
output), each with its own importance. A removed block is the identity, so where `cv2` reads every block's
output, a removed block's slice duplicates its input's: pruning sums those weight slices (a convolution is
linear before its BatchNorm), which keeps the pruned model exact.
"""

from __future__ import annotations

import math

from ultralytics.nn.modules import C2, C2PSA, C2f, C3k2
from ultralytics.nn.modules.block import C3k

from yolo_dms.core.handlers.base import (
    BlockRef,
    Channels,
    ConvSite,
    LayerHandler,
    Layout,
    Transfer,
    Wiring,
    expand_width,
    flat,
)
from yolo_dms.core.handlers.blocks import block_handler
from yolo_dms.core.handlers.gates import DepthGatedC2, DepthGatedC2f, DepthGatedC2PSA, DepthGatedC3k2
from yolo_dms.core.handlers.registry import register


def csp_expansion(c2: int, hidden: int) -> float:
    """A short `e` with `int(c2 * e) == hidden`, which is how CSP layers derive their hidden width."""
    for digits in range(2, 10):
        e = round(hidden / c2, digits)
        if int(c2 * e) == hidden:
            return e
    return (hidden + 0.5) / c2


@register(C2f)
class CSPHandler(LayerHandler):
    """C2f: blocks chained on `b`, every output joined. Subclasses change what differs, in class attributes."""

    gated = DepthGatedC2f
    chain_row = 1  # the half the blocks chain on: 1 is `b`, 0 is `a`
    join_all = True  # cv2 reads both halves and every block output; otherwise the chain's end and the other half
    inner_div = 1  # inner width = chain width // inner_div (Bottleneck e=1.0 in C2f and C2)
    hidden_divisor = 1  # multiple the chain width keeps, so that derived inner widths never reach zero

    def output(self, w: Wiring, layer, inputs: Layout) -> Channels:
        """The layer's output channels: a searchable width of its own."""
        return w.output(self.index, layer.cv2.conv.out_channels)

    def wire(self, w: Wiring, layer, sources: list[Layout]) -> Layout:
        i, n, c = self.index, len(layer.m), layer.c
        inputs = flat(sources)
        blocks = [block_handler(b, f"{self.path}.m.{j}") for j, b in enumerate(layer.m)]
        self.out = self.output(w, layer, inputs)
        own_rows = 2 + sum(not h.residual(b) for h, b in zip(blocks, layer.m))
        steps = [h.chain_step(b) for h, b in zip(blocks, layer.m)]
        if None in steps:
            hidden: list[Channels] = [c] * own_rows
        else:
            hidden = w.width(f"l{i}_hidden", c, own_rows, math.lcm(self.hidden_divisor, w.hidden_divisor, *steps))
        self.hidden = hidden[0]
        inner_rows = sum(h.inner_rows(b) for h, b in zip(blocks, layer.m))
        inner = iter(w.derived(f"l{i}_inner", c // self.inner_div, (hidden[0],), self.inner_div, 0, inner_rows)
                     if inner_rows else ())
        rows = iter(hidden)
        self.halves = (next(rows), next(rows))
        w.conv(f"{self.path}.cv1", layer.cv1, inputs, self.halves)
        self.depth = w.depth(f"l{i}_depth", n) if n else None
        if n:
            w.depth_gated(self.path, layer, self.gated, self.depth)
        prev = self.halves[self.chain_row]
        self.block_io: list[tuple[Channels, Channels]] = []
        joined: list[tuple[Channels, BlockRef | None]] = [(h, None) for h in self.halves]
        for j, (h, block) in enumerate(zip(blocks, layer.m)):
            ref = (self.depth, j)
            out = prev if h.residual(block) else next(rows)
            h.wire(w, f"{self.path}.m.{j}", block, prev, out, ref, inner, f"l{i}_m{j}")
            self.block_io.append((prev, out))
            joined.append((out, ref))
            prev = out
        if not self.join_all:
            joined = [(prev if r == self.chain_row else h, None) for r, h in enumerate(self.halves)]
        w.conv(f"{self.path}.cv2", layer.cv2, joined, (self.out,))
        return (self.out,)

    @staticmethod
    def kept_count(c: Channels, counts: dict[str, int]) -> int:
        return c if isinstance(c, int) else counts[c.mask]

    def yaml_args(self, args: list, c2: int, e: float) -> list:
        """The row's args for output width `c2` and expansion `e`, from the row's own `args`."""
        shortcut = bool(args[1]) if len(args) > 1 else False
        return [c2, shortcut, 1, e]

    def yaml_row(self, row: list, counts: dict[str, int], blocks: dict[str, list[int]]) -> None:
        c2 = self.kept_count(self.out, counts)
        row[1] = len(blocks.get(self.depth, []))
        row[3] = self.yaml_args(row[3], c2, csp_expansion(c2, self.kept_count(self.hidden, counts)))

    def transfers(self, sites: list[ConvSite], blocks: dict[str, list[int]]) -> list[Transfer]:
        """Kept blocks renumbered, each fed by the last kept output; duplicated `cv2` inputs merged."""
        kept = blocks.get(self.depth, [])
        cv1, cv2 = f"{self.path}.cv1.conv", f"{self.path}.cv2.conv"
        transfers = [Transfer.of(s) for s in sites if s.path == cv1]
        source, slot = self.halves[self.chain_row], self.chain_row
        joined: list[tuple[Channels, int]] = [(h, r) for r, h in enumerate(self.halves)]
        for j, (block_in, block_out) in enumerate(self.block_io):
            if j in kept:
                t = kept.index(j)
                src, dst = f"{self.path}.m.{j}.", f"{self.path}.m.{t}."
                transfers += [
                    Transfer.of(s, dst + s.path.removeprefix(src), {block_in: source})
                    for s in sites
                    if s.path.startswith(src)
                ]
                source, slot = block_out, 2 + t
            joined.append((source, slot))  # a removed block passes its input through
        if not self.join_all:
            joined = [(source, r) if r == self.chain_row else (h, r) for r, h in enumerate(self.halves)]
        site = next(s for s in sites if s.path == cv2)
        transfers.append(Transfer(cv2, cv2, site.outputs, tuple(joined), True))
        return transfers

    def expand_row(self, row: list, width: float, depth: float, divisor: int) -> None:
        expand_width(row, width, divisor)
        if row[1] > 0:
            row[1] = max(1, round(row[1] * depth))


@register(C2)
class C2Handler(CSPHandler):
    """C2 (the YOLOv8-p6 neck): blocks chained on `a`, only the chain's end joins `b`."""

    gated = DepthGatedC2
    chain_row = 0
    join_all = False


@register(C3k2)
class C3k2Handler(CSPHandler):
    """C3k2 (YOLO11, YOLO26): a C2f whose blocks are Bottlenecks (`e=0.5`), C3k blocks or attention blocks.

    Inner widths are `c // 2`, so the chain width moves in steps of 2 (never a zero-width inner layer). With
    attention blocks it moves in whole heads, or stays as built for a single head (see `masks.HeadMask`).
    """

    gated = DepthGatedC3k2
    inner_div = 2
    hidden_divisor = 2

    def wire(self, w: Wiring, layer: C3k2, sources: list[Layout]) -> Layout:
        self.c3k = bool(len(layer.m)) and isinstance(layer.m[0], C3k)
        return super().wire(w, layer, sources)

    def yaml_args(self, args: list, c2: int, e: float) -> list:
        """`[c2, c3k, e, attn, g, shortcut]`, with `c3k` as built (`parse_model` forces it for m/l/x scales)."""
        c3k = self.c3k if self.depth else bool(args[1]) if len(args) > 1 else False
        return [c2, c3k, e, *args[3:]]


@register(C2PSA)
class C2PSAHandler(CSPHandler):
    """C2PSA (YOLO11, YOLO26): residual PSABlocks chained on `b`, joined after `a`. Its output must equal its
    input width (`c1 == c2`), so it is derived from the input, channels by importance; the chain width moves
    in whole attention heads (fixed for a single head), written as `e`; blocks are removable."""

    gated = DepthGatedC2PSA
    join_all = False

    def output(self, w: Wiring, layer: C2PSA, inputs: Layout) -> Channels:
        return w.derived(f"l{self.index}", layer.cv2.conv.out_channels, inputs, div=1)[0]

    def yaml_args(self, args: list, c2: int, e: float) -> list:
        return [c2, e]
