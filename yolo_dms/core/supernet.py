"""A YOLO DetectionModel whose every width and CSP depth is searchable.

`Supernet` keeps the stock layers and weights of the model it wraps. It walks the layers like `parse_model`,
and the handler registered for each layer type (`yolo_dms.core.handlers`) declares that layer's masks, gives it a
gated forward and records which channel spaces each convolution reads and writes (`ConvSite`), the one
record shared by the resource model and by pruning. In train mode masks are straight-through (hard values, the
relaxation's gradient); in eval mode they are hard, so the supernet then computes exactly what the pruned model
computes.
"""

from __future__ import annotations

from contextlib import contextmanager
from copy import deepcopy

import torch
from torch import nn
from ultralytics.nn.tasks import ClassificationModel, DetectionModel, OBBModel, PoseModel, SegmentationModel

from yolo_dms.core.handlers import AttentionSite, ConvSite, LayerHandler, Layout, Space, Wiring, handlers_for
from yolo_dms.core.handlers.base import OUTPUT_DIVISOR, default_hidden_divisor
from yolo_dms.core.handlers.gates import set_channel_gates
from yolo_dms.core.mask_bank import MaskBank
from yolo_dms.core.masks import DepthMask, DerivedWidthMask, KeepRatioMask


class Supernet(DetectionModel):
    """A YOLO `DetectionModel` with DMS masks; it still trains, validates and saves as one.

    Build it with `Supernet(model)` from a `DetectionModel` (copied: the model given is left as it was) or with
    `model_io.load_supernet("yolov8s.yaml" | "weights.pt")`. Once `structure_frozen` is set (the search's refine
    phase) it trains at hard masks too: the weights then train exactly the structure that will be exported.
    """

    structure_frozen: bool = False
    grad_scale: float | torch.Tensor = 1.0  # AMP's loss scale for the coming backward pass (a tensor: no host read)

    def __new__(cls, model: nn.Module | None = None, *args, **kwargs):
        """`Supernet(model)` is the supernet of `model`'s task: a segmentation model gets a `SegmentationSupernet`
        (the subclass over its exact stock class: a subclass such as `WorldModel` changes what it computes), which
        trains with the segmentation loss; any other model gets `Supernet`, which names the layers it cannot
        search. Unpickling passes no model."""
        if cls is Supernet and model is not None:
            cls = next((task for task in Supernet.__subclasses__() if type(model) in task.__bases__), Supernet)
        return super().__new__(cls)

    def __init__(
        self,
        model: DetectionModel,
        lam: float = 1.0,
        depth_lam: float = 4.0,
        decay: float = 0.99,
        divisor: int = OUTPUT_DIVISOR,
        hidden_divisor: int | None = None,
        *,
        copy: bool = True,
    ):
        """`copy=False` takes `model` over instead of copying it (its layers become the supernet's gated layers):
        for a model built only to be wrapped, where a copy would only double its memory for a moment."""
        nn.Module.__init__(self)
        model = deepcopy(model) if copy else model
        self.__dict__.update(model.__dict__)  # same layers, yaml, stride, names, save list, args
        self.masks = nn.ModuleDict()
        self.divisor = divisor
        hidden_divisor = default_hidden_divisor(divisor) if hidden_divisor is None else hidden_divisor
        wiring = Wiring(self.masks, lam, depth_lam, decay, divisor, hidden_divisor)
        self.handlers: list[LayerHandler] = handlers_for(self.model, wiring, model.yaml.get("channels", 3))
        self.layouts: list[Layout] = [h.outputs for h in self.handlers]  # each layer's output spaces, for reports
        self.sites: list[ConvSite] = wiring.sites
        self.attention_sites: list[AttentionSite] = wiring.attention_sites
        self.gated_convs: dict[str, Layout] = wiring.gated_convs  # Conv module path -> spaces of its output
        self.gated_csps: dict[str, str] = wiring.gated_csps  # depth-gated CSP layer path -> depth mask name
        self.to(next(model.parameters()).device)

    def layer_sites(self, index: int) -> list[ConvSite]:
        """The convolution sites of layer `index`."""
        return [s for s in self.sites if s.path.startswith(f"model.{index}.")]

    # ------------------------------------------------------------------------------------------- structure
    def keep_ratio_masks(self) -> dict[str, KeepRatioMask]:
        """The masks that own a learnable keep ratio (the structural parameters)."""
        return {name: m for name, m in self.masks.items() if isinstance(m, KeepRatioMask)}

    def structure_parameters(self) -> list[nn.Parameter]:
        """Keep ratios, to be optimized apart from the weights."""
        return [m.keep_ratio for m in self.keep_ratio_masks().values()]

    def clamp_keep_ratios(self) -> None:
        """Project every keep ratio into `[min_ratio, 1]` (call after each structure optimizer step), in one
        batched operation per bound."""
        masks = list(self.keep_ratio_masks().values())
        with torch.no_grad():
            ratios = [m.keep_ratio for m in masks]
            torch._foreach_maximum_(ratios, [m.min_ratio for m in masks])
            torch._foreach_clamp_max_(ratios, 1.0)

    def hard_counts(self) -> dict[str, int]:
        """Kept elements of every mask (channels, or blocks for depth masks) at hard masks, read in one sync."""
        owners = self.keep_ratio_masks()
        values = torch.stack([m.keep_ratio.detach() for m in owners.values()]).tolist()
        counts = {name: m.hard_count(v) for (name, m), v in zip(owners.items(), values)}
        for name, mask in self.masks.items():
            if isinstance(mask, DerivedWidthMask):
                counts[name] = mask.derive_hard(sum(counts[s] for s in mask.sources))
        return counts

    def mask_bank(self) -> MaskBank:
        """Every mask in one batched pass (`core.mask_bank`), compiled on first use (never saved)."""
        if getattr(self, "_mask_bank", None) is None:
            self._mask_bank = MaskBank(self.masks, self.gated_convs, self.gated_csps, self.get_submodule)
        return self._mask_bank

    def soft_counts(self) -> dict[str, torch.Tensor]:
        """Straight-through channel count of every width mask, computed on the device (no host read).

        Its value is the exact hard count (rounding included), its gradient that of the continuous count `k N`
        (derived widths follow their sources), so soft masks and the resource model see what pruning keeps.
        """
        bank = self.mask_bank()
        counts = dict(zip(bank.order, bank.counts(self.masks).unbind()))
        return {n: c for n, c in counts.items() if not isinstance(self.masks[n], DepthMask)}

    def hard_channel_counts(self) -> dict[str, int]:
        """Channel count of every width mask at hard masks."""
        return {k: v for k, v in self.hard_counts().items() if not isinstance(self.masks[k], DepthMask)}

    def kept_blocks(self) -> dict[str, list[int]]:
        """Indices of the blocks each CSP layer keeps at hard masks."""
        counts = self.hard_counts()
        return {
            name: mask.kept(counts[name])[0].tolist()
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
        """Compute every mask once for this pass, in one batched pass, and hand each gated layer its gate.

        Training masks are straight-through (hard values, the relaxation's gradient) and need no host
        synchronization: counts, derived widths included, are computed on the device.
        """
        bank = self.mask_bank()
        channels, blocks = bank.gates(self.masks, hard, self.grad_scale)
        set_channel_gates(bank.conv_modules, channels, bank.conv_sizes)
        decided = iter(torch.cat(blocks).tolist() if hard and blocks else [])  # hard: one host read for all blocks
        for module, gate in zip(bank.csp_modules, blocks):
            kept = [next(decided) > 0.5 for _ in gate] if hard else None
            module.__dict__.update(depth_gate=gate, depth_hard=hard, depth_kept=kept)  # see set_channel_gates

    def _clear_gates(self) -> None:
        """Drop this pass's gates so that copies and checkpoints never carry autograd graphs."""
        bank = self.mask_bank()
        set_channel_gates(bank.conv_modules, None, [])
        for module in bank.csp_modules:
            module.__dict__["depth_gate"] = None

    @contextmanager
    def masks_off(self):
        """Run as the unmasked supernet, every channel and block active (to trace shapes, or compare)."""
        self._masks_off = True
        try:
            yield self
        finally:
            self._masks_off = False

    def predict(self, x, *args, **kwargs):
        """Stock forward with soft masks in train mode and hard masks in eval mode or once the structure is frozen.

        Arguments pass through untouched: their list differs between Ultralytics versions (8.4.0 has `visualize`).
        """
        if getattr(self, "_masks_off", False):
            return super().predict(x, *args, **kwargs)
        self._set_gates(hard=not self.training or self.structure_frozen)
        try:
            return super().predict(x, *args, **kwargs)
        finally:
            self._clear_gates()

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        """Keep BatchNorm unfused: fusing swaps each Conv's forward and would bypass the channel gates."""
        return self


# A supernet trains, validates and saves as the model it wraps, so it must be that model's class: the task's loss
# (`init_criterion`), and what trainers and validators look for. `Supernet` itself is the detection one;
# segmentation, pose and oriented-box models subclass `DetectionModel` and combine with it directly. A
# classification model does not, so `ClassificationSupernet` takes back the methods `DetectionModel` would
# otherwise put ahead of `ClassificationModel`'s. The classes live at module level so that checkpoints unpickle.
class SegmentationSupernet(Supernet, SegmentationModel):
    """Supernet of a YOLO instance segmentation model (`Segment`, `Segment26` heads)."""


class PoseSupernet(Supernet, PoseModel):
    """Supernet of a YOLO pose model (`Pose`, `Pose26` heads)."""


class OBBSupernet(Supernet, OBBModel):
    """Supernet of a YOLO oriented-box model (`OBB`, `OBB26` heads)."""


class ClassificationSupernet(Supernet, ClassificationModel):
    """Supernet of a YOLO classification model (`Classify` head)."""

    init_criterion = ClassificationModel.init_criterion
    _predict_augment = ClassificationModel._predict_augment  # BaseModel's: single-scale, not Detect's flips
