"""Budget arithmetic on a supernet's structure: the searched resource's figure of a structure, what the extremes
cost, and which budgets a supernet can reach (fitting a structure under one is `core.fit`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from yolo_dms.core.errors import DMSError
from yolo_dms.core.resource_registry import resource as registry_entry
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet


class BudgetError(DMSError):
    """The requested budget cannot be met by any structure of this supernet."""


def keep_ratios(supernet: Supernet) -> dict[str, float]:
    """Current keep ratio of every structural mask, read in one transfer (the projection reads them every step)."""
    masks = supernet.keep_ratio_masks()
    return dict(zip(masks, torch.stack([mask.keep_ratio.detach() for mask in masks.values()]).tolist()))


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


def figure(resources: ResourceModel, resource: str, ratios: torch.Tensor | None = None) -> torch.Tensor:
    """The searched resource of the current structure, differentiable in the keep ratios: GFLOPs or millions of
    parameters (exact at hard masks), or predicted milliseconds (`resources.latency`, see `core.latency`).

    With `ratios`, a `[candidates, owners]` batch of keep ratios (`MaskBank.owner_ratios` order), the figure of
    every candidate structure, `[candidates]`, in one vectorized pass through the same formulas."""
    return registry_entry(resource).figure_of(resources, ratios)


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
    return registry_entry(resource).describe(value)


def step_cost(supernet: Supernet, resources: ResourceModel, resource: str = "gflops") -> float:
    """`step_costs` read to the host."""
    return step_costs(supernet, resources, resource).item()


def step_costs(supernet: Supernet, resources: ResourceModel, resource: str = "gflops") -> torch.Tensor:
    """The finest move of the resource the structure allows here: what one divisor step (one block, for a depth
    mask) of the mask where it costs most changes, from the figure's gradient in the keep ratios. A search that
    ends this close to its budget could not have come closer."""
    masks = supernet.keep_ratio_masks()
    ratios = [mask.keep_ratio for mask in masks.values()]
    trainable = [r.requires_grad for r in ratios]  # an EMA copy's ratios are frozen
    try:
        for r in ratios:
            r.requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(figure(resources, resource), ratios, allow_unused=True)
    finally:
        for r, flag in zip(ratios, trainable):
            r.requires_grad_(flag)
    steps = [g.detach().abs().double() * (m.divisor / m.size) for g, m in zip(grads, masks.values())
             if g is not None]
    return torch.stack(steps).amax() if steps else torch.zeros((), dtype=torch.float64)  # on the device, no read


def resolve_budget(
    supernet: Supernet, resources: ResourceModel, resource: str, budget_of: Callable[[float], float]
) -> tuple[float, float, float]:
    """(smallest, full, budget) of a search in its resource's unit, refusing a budget the supernet cannot reach;
    `budget_of` gives the budget from the supernet's figure (`SearchSettings.budget`)."""
    smallest, full = figure_range(supernet, resources, resource)
    if registry_entry(resource).measured:  # target= is a fraction of what the supernet measures, not of a prediction
        full = resources.latency.table.measured_full_ms
    budget = budget_of(full)
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
