"""Budget arithmetic on a supernet's structure: what the extremes cost, and fitting a structure under a budget."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from yolo_dms.core.errors import DMSError
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.settings import SearchSettings


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


def figure(resources: ResourceModel, resource: str) -> torch.Tensor:
    """The searched resource of the current structure, differentiable in the keep ratios: GFLOPs or millions of
    parameters (exact at hard masks), or predicted milliseconds (`resources.latency`, see `core.latency`)."""
    if resource == "latency":
        if resources.latency is None:
            raise DMSError("a latency budget needs the latency model: core.latency.attach_latency(resources)")
        return resources.latency.ms()
    return resources.params() / 1e6 if resource == "params" else resources.gflops()


def hard_figure(resources: ResourceModel, resource: str = "gflops") -> float:
    """The resource of the current hard structure (what the pruned model will cost): GFLOPs, or millions of
    parameters."""
    with torch.no_grad():
        return figure(resources, resource).item()


def hard_gflops(resources: ResourceModel) -> float:
    """GFLOPs of the current hard structure."""
    return hard_figure(resources, "gflops")


def figure_range(supernet: Supernet, resources: ResourceModel, resource: str = "gflops") -> tuple[float, float]:
    """(smallest structure, full supernet) figures: every width at its floor and no blocks, then everything kept."""
    names = supernet.keep_ratio_masks()
    with structure_as(supernet, dict.fromkeys(names, 0.0)):
        smallest = hard_figure(resources, resource)
    with structure_as(supernet, dict.fromkeys(names, 1.0)):
        full = hard_figure(resources, resource)
    return smallest, full


def describe(value: float, resource: str) -> str:
    """A budget figure in words: '4.21 GFLOPs', '1.23M parameters' or '3.2 ms'."""
    return {"params": f"{value:.4g}M parameters", "latency": f"{value:.4g} ms"}.get(resource, f"{value:.4g} GFLOPs")


def resolve_budget(
    supernet: Supernet, resources: ResourceModel, settings: SearchSettings
) -> tuple[float, float, float]:
    """(smallest, full, budget) of a search in its resource's unit, refusing a budget the supernet cannot reach."""
    resource = settings.resource
    smallest, full = figure_range(supernet, resources, resource)
    budget = settings.budget(full)
    imgsz = resources.imgsz[0]
    if budget > full * (1 + 1e-9):
        raise BudgetError(
            f"budget {describe(budget, resource)} is above the supernet's {describe(full, resource)} at "
            f"imgsz={imgsz}; there is nothing to search (start from a larger supernet, e.g. 'yolo-dms expand')"
        )
    if budget < smallest:
        raise BudgetError(
            f"budget {describe(budget, resource)} is below {describe(smallest, resource)}, the cost of the smallest "
            f"structure this supernet allows at imgsz={imgsz} ({supernet.divisor} channels per layer, no blocks)"
        )
    return smallest, full, budget


def fit_to_budget(
    supernet: Supernet, resources: ResourceModel, budget: float, resource: str = "gflops", steps: int = 40
) -> float:
    """Scale every keep ratio by one common factor, the largest for which the hard structure fits the budget.

    The search approaches its target from above and ends a few percent off it, either way; one common factor
    keeps the learned proportions (a C2f stage that lost all its blocks stays removed). Returns the factor.
    """
    learned = keep_ratios(supernet)

    def fits(factor: float) -> bool:
        set_keep_ratios(supernet, {k: v * factor for k, v in learned.items()})
        return hard_figure(resources, resource) <= budget

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
