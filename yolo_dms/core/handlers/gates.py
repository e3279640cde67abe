"""Gated versions of stock layers: same parameters and names, a forward that applies the masks of this pass.

A supernet's layers take these classes in place (`become`), so checkpoints keep stock parameter names. Each
class names the stock layer it stands for (`stock`), which is how the handler registry still finds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import C2, C2PSA, C2f, C3k2, Conv


def become(module: nn.Module, cls: type) -> None:
    """Give a stock layer the gated subclass's forward, keeping its parameters and names untouched."""
    module.__class__ = cls


def gated_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`bn(x)` with the affine `weight` and `bias` in place of its own: BatchNorm's own forward (batch or running
    statistics, their update, momentum, eps) called directly, since swapping the parameters in
    (`torch.func.functional_call`) costs the host more per layer than a small layer's convolution."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    batch_statistics = bn.training or (bn.running_mean is None and bn.running_var is None)
    running = not bn.training or bn.track_running_stats
    return F.batch_norm(
        x,
        bn.running_mean if running else None,
        bn.running_var if running else None,
        weight,
        bias,
        batch_statistics,
        momentum,
        bn.eps,
    )


class GatedConv(Conv):
    """Ultralytics `Conv` whose output channels are gated by the mask the supernet sets for this pass.

    The gate scales the BatchNorm's weight and bias (`affine`, see `set_channel_gates`), so a closed channel is
    exactly `act(0) = 0` (SiLU, ReLU, identity), and the gradient on the gate comes from BatchNorm's own
    per-channel reduction: no extra pass over the activations, which a multiplication after the activation
    would cost.
    """

    stock = Conv
    gate: torch.Tensor | None = None  # this pass's channel gate
    affine: tuple[torch.Tensor, torch.Tensor] | None = None  # BatchNorm's weight and bias times the gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine is None:
            return super().forward(x)
        return self.act(gated_batch_norm(self.bn, self.conv(x), *self.affine))


def set_channel_gates(modules: list[nn.Module], gates: torch.Tensor | None, sizes: list[int]) -> None:
    """Hand each gated layer its slice of `gates` (their output channels concatenated, `sizes` each), or None.

    Every `GatedConv` also gets its BatchNorm's weight and bias scaled by its gate, all of them in one
    multiplication each: layer by layer, two small products and their backward passes cost the host more than a
    small layer's convolution. The gates are plain attributes, written to the instance dictionary: the checks
    of `nn.Module.__setattr__` (is it a parameter, a buffer, a module?) cost more than the rest of this.
    """
    convs = [m for m in modules if isinstance(m, GatedConv)]
    if gates is None:
        for module in modules:
            module.__dict__["gate"] = None
        for module in convs:
            module.__dict__["affine"] = None
        return
    for module, gate in zip(modules, gates.split(sizes)):
        module.__dict__["gate"] = gate
    if not convs:
        return
    bns = [m.bn for m in convs]
    weight, bias = torch.cat([bn.weight for bn in bns]), torch.cat([bn.bias for bn in bns])
    scale = torch.cat([m.gate for m in convs]).to(weight.dtype)
    counts = [bn.num_features for bn in bns]
    for module, w, b in zip(convs, (weight * scale).split(counts), (bias * scale).split(counts)):
        module.__dict__["affine"] = (w, b)


class DepthGated:
    """Mixin: block `i` of a chain runs under its depth gate, `prev + d_i (f_i(prev) - prev)`.

    With a hard gate a removed block is exactly the identity and a kept one exactly the block.
    """

    depth_gate: torch.Tensor | None = None
    depth_hard: bool = False
    depth_kept: list[bool] | None = None  # with hard gates, whether each block is kept, read once per pass

    def run_block(self, block: nn.Module, prev: torch.Tensor, i: int) -> torch.Tensor:
        gate = self.depth_gate
        if gate is None:
            return block(prev)
        if self.depth_hard:
            return block(prev) if self.depth_kept[i] else prev
        return torch.lerp(prev, block(prev), gate[i].to(prev.dtype))


class DepthGatedC2f(DepthGated, C2f):
    """`C2f`: blocks chained on the `b` half, every output concatenated (a removed one duplicates its input)."""

    stock = C2f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for i, block in enumerate(self.m):
            y.append(self.run_block(block, y[-1], i))
        return self.cv2(torch.cat(y, 1))


class DepthGatedC3k2(DepthGatedC2f, C3k2):
    """`C3k2` (a C2f whose blocks are Bottleneck, C3k or Bottleneck + PSABlock)."""

    stock = C3k2


class DepthGatedC2(DepthGated, C2):
    """`C2` (the YOLOv8-p6 neck): blocks chained on the `a` half, only the chain's end joins `b`."""

    stock = C2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        for i, block in enumerate(self.m):
            a = self.run_block(block, a, i)
        return self.cv2(torch.cat((a, b), 1))


class DepthGatedC2PSA(DepthGated, C2PSA):
    """`C2PSA`: residual PSABlocks chained on the `b` half, joined after `a`."""

    stock = C2PSA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        for i, block in enumerate(self.m):
            b = self.run_block(block, b, i)
        return self.cv2(torch.cat((a, b), 1))
