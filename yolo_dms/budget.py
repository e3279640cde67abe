"""Budget arithmetic on a supernet's structure: what the extremes cost, and fitting a structure under a budget."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from yolo_dms.errors import DMSError
from yolo_dms.resources import ResourceModel
from yolo_dms.settings import SearchSettings
from yolo_dms.supernet import Supernet


class BudgetError(DMSError):
    """The requested budget cannot be met by any structure of this supernet."""


def keep_ratios(supernet: Supernet) -> dict[str, float]:
    """Current keep ratio of every structural mask."""
    return {name: mask.keep_ratio.item() for name, mask in supernet.keep_ratio_masks().items()}


def set_keep_ratios(supernet: Supernet, ratios: dict[str, float]) -> None:
    """Set keep ratios, clamped into each mask's legal range."""
    with torch.no_grad():
        for name, mask in supernet.keep_ratio_masks().items():
            mask.keep_ratio.fill_(min(1.0, max(mask.min_ratio, ratios[name])))


@contextmanager
def structure_as(supernet: Supernet, ratios: dict[str, float]):
    """Temporarily give the supernet other keep ratios."""
    saved = keep_ratios(supernet)
    set_keep_ratios(supernet, ratios)
    try:
        yield supernet
    finally:
        set_keep_ratios(supernet, saved)


def hard_gflops(resources: ResourceModel) -> float:
    """GFLOPs of the current hard structure (what the pruned model will cost)."""
    with torch.no_grad():
        return resources.gflops().item()


def gflops_range(supernet: Supernet, resources: ResourceModel) -> tuple[float, float]:
    """(smallest structure, full supernet) GFLOPs: every width at its floor and no blocks, then everything kept."""
    names = supernet.keep_ratio_masks()
    with structure_as(supernet, dict.fromkeys(names, 0.0)):
        smallest = hard_gflops(resources)
    with structure_as(supernet, dict.fromkeys(names, 1.0)):
        full = hard_gflops(resources)
    return smallest, full


def resolve_budget(
    supernet: Supernet, resources: ResourceModel, settings: SearchSettings
) -> tuple[float, float, float]:
    """(smallest, full, budget) GFLOPs of a search, refusing a budget the supernet cannot reach."""
    smallest, full = gflops_range(supernet, resources)
    budget = settings.final_gflops(full)
    imgsz = resources.imgsz[0]
    if budget > full * (1 + 1e-9):
        raise BudgetError(
            f"budget {budget:.4g} GFLOPs is above the supernet's {full:.4g} GFLOPs at imgsz={imgsz}; "
            "there is nothing to search (start from a larger supernet, e.g. 'yolo-dms expand')"
        )
    if budget < smallest:
        raise BudgetError(
            f"budget {budget:.4g} GFLOPs is below {smallest:.4g} GFLOPs, the cost of the smallest structure this "
            f"supernet allows at imgsz={imgsz} (8 channels per layer, no C2f blocks)"
        )
    return smallest, full, budget


def fit_to_budget(supernet: Supernet, resources: ResourceModel, budget: float, steps: int = 40) -> float:
    """Scale every keep ratio by one common factor, the largest for which the hard structure fits the budget.

    The search approaches its target from above and ends a few percent off it, either way; one common factor
    keeps the learned proportions (a C2f stage that lost all its blocks stays removed). Returns the factor.
    """
    learned = keep_ratios(supernet)

    def fits(factor: float) -> bool:
        set_keep_ratios(supernet, {k: v * factor for k, v in learned.items()})
        return hard_gflops(resources) <= budget

    saturated = 1.0 / max(min((v for v in learned.values() if v > 0), default=1.0), 1e-6)  # all ratios reach 1
    if fits(saturated):
        return saturated
    low, high = (1.0, saturated) if fits(1.0) else (0.0, 1.0)  # the structure fits at `low`, not at `high`
    for _ in range(steps):
        mid = (low + high) / 2
        if fits(mid):
            low = mid
        else:
            high = mid
    set_keep_ratios(supernet, {k: v * low for k, v in learned.items()})
    return low
