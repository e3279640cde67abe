"""What the mask tests check `MaskBank` against, and a bank over stand-alone masks.

The reference computes each mask on its own, the straightforward way: its count straight-through from its
host-side hard count (`KeepRatioMask.hard_count`, `DerivedWidthMask.derive_hard`) onto the continuous count,
its top-k masks over its own importance rows (`topk.straight_through_topk`, which ranks with `topk.ranks`),
and an importance hook of its own. The batched bank computes the same in one pass, from its own counts
(`masks.keep_ratio_counts`, `masks.derived_counts`), one segmented sort (`topk.segment_ranks`) and one hook.
"""

from __future__ import annotations

import torch
from torch import nn

from yolo_dms.core.handlers import Space
from yolo_dms.core.mask_bank import MaskBank
from yolo_dms.core.masks import DerivedWidthMask, HeadMask, ImportanceMask, KeepRatioMask, straight_through
from yolo_dms.core.topk import straight_through_topk


# ------------------------------------------------------------------------------------------------ reference
def count(mask: KeepRatioMask) -> torch.Tensor:
    """Straight-through count (float64): value `hard_count()`, read on the host; gradient that of `k N`."""
    return straight_through(float(mask.hard_count()), (mask.keep_ratio * mask.size).double())


def derive_count(mask: DerivedWidthMask, source_count: torch.Tensor) -> torch.Tensor:
    """Straight-through count from the sources' summed straight-through count: value `derive_hard`, gradient
    that of `source / div` held between the floor and the size (bounds as tensors, as in the bank: where
    `source / div` equals a bound, clamp passes half the gradient)."""
    hard = mask.derive_hard(int(source_count.item()))
    low, high = (torch.tensor(float(v), dtype=torch.float64) for v in (mask.floor, mask.size))
    return straight_through(float(hard), torch.clamp(source_count / mask.div, low, high).double())


def counts(masks: nn.ModuleDict) -> dict[str, torch.Tensor]:
    """`count` of every keep-ratio mask, then `derive_count` of every derived mask (its sources come first)."""
    found = {n: count(m) for n, m in masks.items() if isinstance(m, KeepRatioMask)}
    for name, mask in masks.items():
        if isinstance(mask, DerivedWidthMask):
            found[name] = derive_count(mask, sum(found[s] for s in mask.sources))
    return found


def soft_masks(mask: ImportanceMask, count: torch.Tensor, track: bool = True, grad_scale=1.0) -> list[torch.Tensor]:
    """Training masks of each channel space for a straight-through `count` (a head mask's in channels): the hard
    top-k mask of the count's value with the relaxation's gradient. With `track`, in a grad-enabled pass, the
    gradient reaching them folds `(m dL/dm)^2 / grad_scale^2` into importance, unless a score is not finite."""
    masks, relaxation = straight_through_topk(mask.importance, count, mask.lam)
    if track and torch.is_grad_enabled():
        if not masks.requires_grad:
            masks.requires_grad_()
        masks.register_hook(_taylor_hook(mask, relaxation.detach(), grad_scale))
    if isinstance(mask, HeadMask):
        return [masks[0].repeat_interleave(unit) for unit in mask.units]
    return list(masks)


def _taylor_hook(mask: ImportanceMask, relaxation: torch.Tensor, grad_scale):
    def hook(grad: torch.Tensor) -> None:
        score = (relaxation * grad / grad_scale).float().pow(2)
        if torch.isfinite(score).all():
            mask.importance.copy_(mask.importance * mask.decay + score * (1.0 - mask.decay))

    return hook


def clamp_(mask: KeepRatioMask) -> None:
    """Project one keep ratio back into `[min_ratio, 1]`."""
    with torch.no_grad():
        mask.keep_ratio.clamp_(mask.min_ratio, 1.0)


# ------------------------------------------------------------------------------------------ stand-alone bank
def stand_alone_bank(**masks: ImportanceMask) -> tuple[MaskBank, nn.ModuleDict]:
    """A `MaskBank` over masks of no supernet, each of their channel spaces gating a layer of its own."""
    modules = nn.ModuleDict(masks)
    layouts = {f"{n}/{r}": (Space(n, r),) for n, m in masks.items() for r in range(_rows(m))}
    return MaskBank(modules, layouts, {}, lambda path: None), modules


def training_masks(grad_scale: float | torch.Tensor = 1.0, **masks: ImportanceMask) -> dict[str, list[torch.Tensor]]:
    """The training gates `MaskBank` computes for stand-alone masks: per mask, one gate per channel space (a head
    mask's in channels). In a grad-enabled pass their gradient updates importance, divided by `grad_scale`."""
    bank, modules = stand_alone_bank(**masks)
    channels, _ = bank.gates(modules, hard=False, grad_scale=grad_scale)
    gates = iter(channels.split(bank.conv_sizes))
    return {name: [next(gates) for _ in range(_rows(mask))] for name, mask in masks.items()}


def _rows(mask: ImportanceMask) -> int:
    return len(mask.units) if isinstance(mask, HeadMask) else mask.spaces
