"""Analytic FLOPs and parameter counts of a supernet as differentiable functions of its masks.

Counting follows THOP as Ultralytics' `get_flops` uses it: a convolution costs `out_h * out_w * C_out *
C_in / groups * k_h * k_w` multiply-adds, a BatchNorm `4 * numel`, activations, pooling, nearest upsampling
and concatenation nothing; GFLOPs are `2 * MACs / 1e9`. Channel counts are straight-through (hard forward,
soft backward), so the figure at hard masks is exactly the pruned model's `get_flops`, while its gradient
reaches every keep ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from yolo_dms.supernet import Channels, Space, Supernet


@dataclass(frozen=True)
class SiteShape:
    """What a convolution costs per input-output channel pair: output positions and kernel area / groups."""

    positions: int
    kernel: int
    bias: bool


class ResourceModel:
    """GFLOPs and parameters of a `Supernet` at image size `imgsz`, from its mask counts."""

    def __init__(self, supernet: Supernet, imgsz: int | tuple[int, int] = 640) -> None:
        self.supernet = supernet
        self.imgsz = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
        self.shapes = self._trace()

    def _trace(self) -> dict[str, SiteShape]:
        """Run the supernet once at `imgsz` to record each convolution's output positions."""
        shapes: dict[str, SiteShape] = {}
        hooks = []
        for site in self.supernet.sites:
            conv = self.supernet.get_submodule(site.path)

            def record(module: nn.Conv2d, _, y: torch.Tensor, path: str = site.path) -> None:
                kernel = module.kernel_size[0] * module.kernel_size[1] // module.groups
                shapes[path] = SiteShape(y[0, 0].numel(), kernel, module.bias is not None)

            hooks.append(conv.register_forward_hook(record))
        training = self.supernet.training
        p = next(self.supernet.parameters())
        try:
            self.supernet.eval()
            with torch.no_grad(), self.supernet.masks_off():
                self.supernet(torch.zeros(1, self.supernet.yaml.get("channels", 3), *self.imgsz, device=p.device))
        finally:
            self.supernet.train(training)
            for hook in hooks:
                hook.remove()
        return shapes

    def _site_costs(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(conv path, MACs, parameters) of every convolution, as straight-through tensors."""
        counts = self.supernet.channel_counts()
        gates = self.supernet.depth_gates()

        def width(c: Channels) -> torch.Tensor | int:
            return counts[c.mask] if isinstance(c, Space) else c

        costs = []
        for site in self.supernet.sites:
            shape = self.shapes[site.path]
            c_in = sum(width(c) * (gates[ref[0]][ref[1]] if ref else 1) for c, ref in site.inputs)
            c_out = sum(width(c) for c in site.outputs)
            keep = gates[site.block[0]][site.block[1]] if site.block else 1
            weights = shape.kernel * c_in * c_out
            macs = keep * (shape.positions * weights + (4 * shape.positions * c_out if site.bn else 0))
            params = keep * (weights + (c_out if shape.bias else 0) + (2 * c_out if site.bn else 0))
            costs.append((site.path, macs, params))
        return costs

    def gflops(self) -> torch.Tensor:
        """GFLOPs in Ultralytics' units; exact at hard masks, differentiable in the keep ratios."""
        return 2 * sum(macs for _, macs, _ in self._site_costs()) / 1e9

    def params(self) -> torch.Tensor:
        """Parameter count; exact at hard masks, differentiable in the keep ratios."""
        return sum(params for _, _, params in self._site_costs())

    def per_layer(self) -> dict[int, tuple[float, int]]:
        """Hard (GFLOPs, parameters) of each layer index, for reports."""
        table: dict[int, tuple[float, int]] = {}
        with torch.no_grad():
            for path, macs, params in self._site_costs():
                i = int(path.split(".")[1])
                gflops, count = table.get(i, (0.0, 0))
                table[i] = (gflops + 2 * float(macs) / 1e9, count + round(float(params)))
        return table
