"""Analytic FLOPs and parameter counts of a supernet as differentiable functions of its masks.

Counting follows THOP as Ultralytics' `get_flops` uses it: a convolution costs `out_h * out_w * C_out *
C_in / groups * k_h * k_w` multiply-adds, a BatchNorm `4 * numel`, an attention's two matrix products
`heads * N^2 * (key_dim + head_dim)`, activations, pooling, nearest upsampling and concatenation nothing;
GFLOPs are `2 * MACs / 1e9`.

Which model is counted: the pruned model as deployed (`deployed_model`). Where Ultralytics' `fuse()` removes
training-only layers (YOLO26: an end-to-end head's one-to-many branch, Pose26's keypoint spreads and flow model,
Proto26's semantic branch), the saved pruned.pt still carries them and its own `get_flops` counts them, so the
deployed model is the fused one: `get_flops(copy.deepcopy(pruned).fuse())` and the parameters of that model
(BatchNorm folded into the convolutions, one-to-one head), as Ultralytics' tables count YOLO26. Every other model
(YOLOv8, YOLO11, classifiers) has no training-only layers: its figure is `get_flops(pruned)` of pruned.pt as
saved (BatchNorm counted) and its parameter count, as they have always been reported. `ResourceModel.counted_as`
says which, and `ResourceModel.training_graph()` gives pruned.pt's own figures (equal where nothing is fused).

Channel counts are straight-through (hard forward, soft backward), so the figure at hard masks is exactly the
pruned model's as deployed, while its gradient reaches every keep ratio. The wiring is compiled once into index
tensors, so a figure costs a handful of vector operations (in float64, exact for any model size) however many
convolutions the model has.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property

import thop
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from yolo_dms.core.handlers import Channels, Space
from yolo_dms.core.masks import DepthMask, channels_per_element
from yolo_dms.core.supernet import Supernet


# Which figure `ResourceModel` (`counted_as`) and `deployed_gflops` give, and the other one where they differ
FUSED = "as deployed: fused, BatchNorm folded, one-to-one head only, as Ultralytics' tables count YOLO26"
AS_SAVED = "as stock get_flops counts pruned.pt, which has no training-only layers for fuse() to drop"
TRAINING_GRAPH = "pruned.pt as saved: stock get_flops before fuse(), training-only layers included"


def _layers(model: nn.Module) -> int:
    """Convolutions and linear layers of `model` (what `fuse()` removes when it drops training-only layers)."""
    return sum(isinstance(m, nn.modules.conv._ConvNd | nn.Linear) for m in model.modules())


def deployed_model(model: nn.Module) -> nn.Module:
    """`model` as deployed, which is what `ResourceModel` counts: `copy.deepcopy(model).fuse()` where Ultralytics'
    `fuse()` drops training-only layers (YOLO26's end-to-end heads: the one-to-many branch, Pose26's keypoint
    spreads and flow model, Proto26's semantic branch), else `model` itself, unchanged (YOLOv8, YOLO11 and every
    classifier: their `get_flops` has always been that of the unfused model)."""
    fused = copy.deepcopy(model).fuse(verbose=False)
    return fused if _layers(fused) < _layers(model) else model


def _thop_gflops(model: nn.Module, imgsz: int | tuple[int, int]) -> float:
    """THOP's count at the full image size, as `get_flops` counts since Ultralytics 8.4.x (8.4.0 scales a
    32-pixel count, which misses attention's quadratic cost)."""
    p = next(model.parameters())
    size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    image = torch.empty(1, p.shape[1], *size, dtype=p.dtype, device=p.device)
    return thop.profile(model, inputs=[image], verbose=False)[0] / 1e9 * 2


def deployed_gflops(model: DetectionModel, imgsz: int | tuple[int, int] = 640) -> float:
    """GFLOPs of `model` as deployed (`deployed_model`), which is what `ResourceModel.gflops()` counts."""
    return _thop_gflops(deployed_model(model), imgsz)


def deployed_params(model: nn.Module) -> int:
    """Parameters of `model` as deployed (`deployed_model`), which is what `ResourceModel.params()` counts."""
    return sum(p.numel() for p in deployed_model(model).parameters())


def counted_as(model: nn.Module) -> str:
    """Which figure `deployed_gflops` and `deployed_params` give for `model`: `FUSED` or `AS_SAVED`."""
    return AS_SAVED if deployed_model(model) is model else FUSED


@dataclass(frozen=True)
class TracedPass:
    """What one full-width eval pass of a supernet saw: the input and output shapes of every convolution site that
    ran, and the inputs of every module kept whole (`LayerHandler.kept_whole`) that ran, by module path."""

    conv_shapes: dict[str, tuple[torch.Size, torch.Size]]
    whole_inputs: dict[str, tuple]


def traced_pass(supernet: Supernet, imgsz: tuple[int, int]) -> TracedPass:
    """Run `supernet` once at batch 1 and `imgsz`, unmasked (full width) in eval mode without gradients, recording
    what the resource model and the latency table read from it. The input is made on the device and in the dtype
    of the supernet's parameters, so a supernet on a GPU or in float64 traces as it is."""
    conv_shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    whole_inputs: dict[str, tuple] = {}

    def record_conv(path: str):
        def hook(module: nn.Module, inputs: tuple, y: torch.Tensor) -> None:
            conv_shapes[path] = (inputs[0].shape, y.shape)
        return hook

    def record_inputs(path: str):
        def hook(module: nn.Module, inputs: tuple, y) -> None:
            whole_inputs[path] = inputs
        return hook

    whole = [path for handler in supernet.handlers for path in handler.kept_whole]
    hooks = [supernet.get_submodule(s.path).register_forward_hook(record_conv(s.path)) for s in supernet.sites]
    hooks += [supernet.get_submodule(path).register_forward_hook(record_inputs(path)) for path in whole]
    training = supernet.training
    p = next(supernet.parameters())
    image = torch.zeros(1, supernet.yaml.get("channels", 3), *imgsz, device=p.device, dtype=p.dtype)
    try:
        supernet.eval()
        with torch.no_grad(), supernet.masks_off():
            supernet(image)
    finally:
        supernet.train(training)
        for hook in hooks:
            hook.remove()
    return TracedPass(conv_shapes, whole_inputs)


@dataclass(frozen=True)
class SiteShape:
    """What a convolution costs per input-output channel pair: output positions and kernel area."""

    positions: int
    kernel: int
    bias: bool


def site_shape(conv: nn.Conv2d | nn.ConvTranspose2d, positions: int) -> SiteShape:
    """A convolution's shape over `positions`; its kernel area counts per input channel (depthwise: per channel)."""
    return SiteShape(positions, conv.kernel_size[0] * conv.kernel_size[1], conv.bias is not None)


@dataclass(frozen=True)
class WholeCost:
    """A module kept whole (`LayerHandler.kept_whole`): fixed MACs and parameters."""

    path: str
    macs: float
    params: int
    ran: bool  # ran in an eval forward: deployed (a loss-only module, like Pose26's flow model, is not)


class ResourceModel:
    """GFLOPs and parameters of a `Supernet` at image size `imgsz`, from its mask counts, as its pruned model is
    deployed (`deployed_model`; `counted_as` says which figure that is)."""

    def __init__(self, supernet: Supernet, imgsz: int | tuple[int, int] = 640) -> None:
        self.supernet = supernet
        self.imgsz = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
        self.shapes, self.whole = self._trace()
        # fused where `fuse()` drops training-only layers: sites not `counted`, modules that do not run in eval
        self.fused = any(not s.counted for s in supernet.sites) or not all(w.ran for w in self.whole)
        self.counted_as = FUSED if self.fused else AS_SAVED
        self._compile()
        self.latency = None  # a `latency.LatencyModel`, attached when the budget is in milliseconds

    def _compile(self) -> None:
        """Index tensors: which count and which block gate each input or output segment of each site reads."""
        sites = self.supernet.sites
        self.widths = list(self.supernet.soft_counts())  # every width mask, own or derived
        self.depths = [n for n, m in self.supernet.masks.items() if isinstance(m, DepthMask)]
        attention = self.supernet.attention_sites
        constants = {c for s in sites for c in (*(c for c, _ in s.inputs), *s.outputs) if isinstance(c, int)}
        constants = sorted(constants | {a.heads for a in attention if isinstance(a.heads, int)})
        channel = {n: i for i, n in enumerate(self.widths)}
        channel.update({c: len(self.widths) + i for i, c in enumerate(constants)})
        gate_offset, offset = {}, 0
        for name in self.depths:
            gate_offset[name] = offset
            offset += self.supernet.masks[name].size
        no_gate = offset  # the gate vector ends with a constant 1

        def gate(ref) -> int:
            return no_gate if ref is None else gate_offset[ref[0]] + ref[1]

        def index(c: Channels) -> int:
            return channel[c.mask if isinstance(c, Space) else c]

        def scale(c: Channels) -> int:  # channels per counted element (attention heads count whole)
            return channels_per_element(self.supernet.masks[c.mask], c.row) if isinstance(c, Space) else 1

        def tensor(values, dtype=torch.long) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype)

        self.constants = tensor(constants, torch.float64)
        self.width_count = tensor([self.supernet.mask_bank().position[n] for n in self.widths])
        self.in_site = tensor([i for i, s in enumerate(sites) for _ in s.inputs])
        self.in_channel = tensor([index(c) for s in sites for c, _ in s.inputs])
        self.in_scale = tensor([scale(c) for s in sites for c, _ in s.inputs], torch.float64)
        self.in_gate = tensor([gate(ref) for s in sites for _, ref in s.inputs])
        self.out_site = tensor([i for i, s in enumerate(sites) for _ in s.outputs])
        self.out_channel = tensor([index(c) for s in sites for c in s.outputs])
        self.out_scale = tensor([scale(c) for s in sites for c in s.outputs], torch.float64)
        self.block = tensor([gate(s.block) for s in sites])
        shapes = [self.shapes[s.path] for s in sites]
        self.positions = tensor([sh.positions for sh in shapes], torch.float64)
        self.kernel = tensor([sh.kernel for sh in shapes], torch.float64)
        self.bias = tensor([sh.bias for sh in shapes], torch.float64)
        self.bn = tensor([s.bn for s in sites], torch.float64)
        self.depthwise = tensor([s.depthwise for s in sites], torch.bool)
        self.counted = tensor([s.counted for s in sites], torch.float64)
        self.attention_macs = tensor(  # per head
            [(a.key_dim + a.head_dim) * self.shapes[f"{a.path}.qkv.conv"].positions ** 2 for a in attention],
            torch.float64,
        )
        self.attention_heads = tensor([index(a.heads) for a in attention])
        self.attention_block = tensor([gate(a.block) for a in attention])
        self.whole_macs = tensor([w.macs for w in self.whole], torch.float64)
        self.whole_params = tensor([w.params for w in self.whole], torch.float64)
        self.whole_ran = tensor([w.ran for w in self.whole], torch.float64)
        self.layer = [int(s.path.split(".")[1]) for s in (*sites, *attention, *self.whole)]

    def _trace(self) -> tuple[dict[str, SiteShape], list[WholeCost]]:
        """Each convolution's positions at `imgsz` (its output's; a transposed one's input, as THOP walks it) and
        the cost of every module kept whole, from one traced pass. A site that does not run in an eval forward
        must be a training-only branch (not `counted`): it has parameters and no positions."""
        traced = traced_pass(self.supernet, self.imgsz)
        shapes: dict[str, SiteShape] = {}
        for site in self.supernet.sites:
            conv = self.supernet.get_submodule(site.path)
            if site.path in traced.conv_shapes:
                input_shape, output_shape = traced.conv_shapes[site.path]
                walked = input_shape if isinstance(conv, nn.ConvTranspose2d) else output_shape
                shapes[site.path] = site_shape(conv, walked[2:].numel())
            elif site.counted:
                raise RuntimeError(f"{site.path} does not run in an eval forward, yet its cost is counted")
            else:
                shapes[site.path] = site_shape(conv, 0)
        whole = [path for handler in self.supernet.handlers for path in handler.kept_whole]
        return shapes, [self._whole_cost(path, traced.whole_inputs.get(path)) for path in whole]

    def _whole_cost(self, path: str, inputs: tuple | None) -> WholeCost:
        """A module kept whole: its parameters, and THOP's count (as `get_flops` makes it) where it ran."""
        module = self.supernet.get_submodule(path)
        macs = thop.profile(module, inputs=inputs, verbose=False)[0] if inputs is not None else 0.0
        return WholeCost(path, macs, sum(p.numel() for p in module.parameters()), inputs is not None)

    def _counts(self, ratios: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Straight-through width of every channel entry, gate of every block then a constant 1), float64; of the
        masks' own keep ratios, or `[candidates, ...]` of a `[candidates, owners]` batch `ratios`
        (`MaskBank.counts`)."""
        bank, masks = self.supernet.mask_bank(), self.supernet.masks  # every mask in one pass, no host read
        counts = bank.counts(masks, ratios)
        batch = counts.shape[:-1]
        widths = counts.index_select(-1, self.width_count.to(counts.device))
        width = torch.cat([widths, self.constants.to(counts.device).expand(*batch, -1)], -1)
        blocks = (bank.masks_of(masks, tuple(self.depths), counts).double() if self.depths
                  else counts.new_zeros(*batch, 0))
        gate = torch.cat([blocks, counts.new_ones(*batch, 1)], -1)
        return width, gate

    def _site_figures(
        self, graph: str = "deployed", ratios: torch.Tensor | None = None, macs: bool = True, params: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(MACs, parameters) of every convolution site, then of every attention's products, then of every module
        kept whole: of the deployed model (`deployed_model`: the fused one where `fused`, else pruned.pt as
        saved), or with `graph="saved"` of pruned.pt as saved (`training_graph`). Rows `[candidates, ...]` for a
        batch of keep ratios `ratios`. Only the figures asked for are computed (None for the other): a GFLOPs
        figure, evaluated every step and for every candidate of the projection, needs no parameter count."""
        width, gate = self._counts(ratios)
        batch, device = width.shape[:-1], width.device
        conv = ConvTerms(self, width, gate)
        fused = self.fused and graph == "deployed"  # training-only sites and modules (not run in eval) dropped
        site_macs = site_params = None
        if macs:
            heads = width.index_select(-1, self.attention_heads.to(device))
            blocks = gate.index_select(-1, self.attention_block.to(device))
            attention = self.attention_macs.to(device) * heads * blocks
            whole = self.whole_macs.to(device).expand(*batch, -1)
            site_macs = torch.cat([conv.fused_macs if fused else conv.saved_macs, attention, whole], -1)
        if params:
            whole = self.whole_params.to(device).expand(*batch, -1)
            whole = whole * self.whole_ran.to(device) if fused else whole
            attention = width.new_zeros(*batch, len(self.attention_macs))  # products have no parameters
            site_params = torch.cat([conv.fused_params if fused else conv.saved_params, attention, whole], -1)
        return site_macs, site_params

    def conv_features(self, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Per convolution site, what a latency model weighs: (kept, MACs, output elements), differentiable;
        `[sites, 3]`, or `[candidates, sites, 3]` for a batch of keep ratios `ratios`."""
        conv = ConvTerms(self, *self._counts(ratios))
        return torch.stack([conv.kept, conv.macs, conv.outputs], -1)

    def gflops(self, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """GFLOPs in Ultralytics' units, as deployed (`counted_as`); exact at hard masks, differentiable in the keep
        ratios."""
        return 2 * self._site_figures(ratios=ratios, params=False)[0].sum(-1) / 1e9

    def params(self, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Parameter count as deployed (`counted_as`); exact at hard masks, differentiable in the keep ratios."""
        return self._site_figures(ratios=ratios, macs=False)[1].sum(-1)

    def training_graph(self) -> tuple[float, int]:
        """Hard (GFLOPs, parameters) of pruned.pt as saved: stock `get_flops` of the unfused pruned model and its
        parameter count, training-only layers included (`TRAINING_GRAPH`). Equal to `gflops()` and `params()`
        where nothing is fused (`not fused`)."""
        with torch.no_grad():
            macs, params = self._site_figures("saved")
        return 2 * macs.sum().item() / 1e9, round(params.sum().item())

    def per_layer(self) -> dict[int, tuple[float, int]]:
        """Hard (GFLOPs, parameters) of each layer index, for reports."""
        table: dict[int, tuple[float, int]] = {}
        with torch.no_grad():
            macs, params = self._site_figures()
        for layer, m, p in zip(self.layer, macs.tolist(), params.tolist()):
            gflops, count = table.get(layer, (0.0, 0))
            table[layer] = (gflops + 2 * m / 1e9, count + round(p))
        return table


class ConvTerms:
    """Straight-through float64 vectors over a resource model's convolution sites (or `[candidates, sites]` rows
    of a batch), each computed when first read, so a figure pays only for the terms it uses: `kept` (the site
    exists and is deployed), `macs` (with BatchNorm's, of the deployed sites), `outputs` (deployed output
    elements), and for the figures: `saved_macs` and `saved_params` (pruned.pt as saved: every site that runs
    in an eval forward, BatchNorm counted, and every site's parameters), `fused_macs` and `fused_params` (the
    fused model: a BatchNorm folds into its convolution, no MACs of its own and one bias per channel for its two
    parameters; training-only sites are gone).

    A depthwise site costs its kernel once per channel; a site that is not `counted` (a training-only branch) has
    parameters but no deployed MACs.
    """

    def __init__(self, resources: ResourceModel, width: torch.Tensor, gate: torch.Tensor) -> None:
        self.model, self.width, self.gate = resources, width, gate

    def _index(self, name: str) -> torch.Tensor:
        return getattr(self.model, name).to(self.width.device)

    @cached_property
    def c_in(self) -> torch.Tensor:  # every index reads and adds along the last dimension
        width, gate = self.width, self.gate
        return width.new_zeros(*width.shape[:-1], len(self.model.kernel)).index_add(
            -1, self._index("in_site"),
            width.index_select(-1, self._index("in_channel")) * self._index("in_scale")
            * gate.index_select(-1, self._index("in_gate")),
        )

    @cached_property
    def c_out(self) -> torch.Tensor:
        return torch.zeros_like(self.c_in).index_add(
            -1, self._index("out_site"), self.width.index_select(-1, self._index("out_channel")) * self._index("out_scale")
        )

    @cached_property
    def keep(self) -> torch.Tensor:
        return self.gate.index_select(-1, self._index("block"))

    @cached_property
    def weights(self) -> torch.Tensor:
        return self._index("kernel") * torch.where(self._index("depthwise"), torch.ones_like(self.c_in), self.c_in) * self.c_out

    @cached_property
    def conv_macs(self) -> torch.Tensor:  # zero for a site that does not run in an eval forward
        return self.keep * self._index("positions") * self.weights

    @cached_property
    def saved_macs(self) -> torch.Tensor:
        return self.conv_macs + self.keep * 4 * self._index("positions") * self.c_out * self._index("bn")

    @property
    def kept(self) -> torch.Tensor:
        return self._index("counted") * self.keep

    @property
    def macs(self) -> torch.Tensor:
        return self._index("counted") * self.saved_macs

    @property
    def outputs(self) -> torch.Tensor:
        return self._index("counted") * self.keep * self._index("positions") * self.c_out

    @property
    def saved_params(self) -> torch.Tensor:
        c_out = self.c_out
        return self.keep * (self.weights + c_out * self._index("bias") + 2 * c_out * self._index("bn"))

    @property
    def fused_macs(self) -> torch.Tensor:
        return self._index("counted") * self.conv_macs

    @property
    def fused_params(self) -> torch.Tensor:
        bias, bn = self._index("bias"), self._index("bn")
        return self._index("counted") * self.keep * (self.weights + self.c_out * torch.maximum(bias, bn))
