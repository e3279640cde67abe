"""Budget arithmetic on a supernet's structure: what the extremes cost, and fitting a structure under a budget."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from ultralytics.utils import LOGGER, colorstr

from yolo_dms.core.errors import DMSError
from yolo_dms.core.masks import DepthMask
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.settings import SearchSettings


class BudgetError(DMSError):
    """The requested budget cannot be met by any structure of this supernet."""


FIT_TOLERANCE = 0.05  # a search that ends within this fraction of its budget (plus one step of its layers) reached it
MEASURED_FIT_TRIES = 3  # latency: refits to a budget lowered by the measured overshoot before the fit gives up


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


def step_cost(supernet: Supernet, resources: ResourceModel, resource: str = "gflops") -> float:
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
    steps = [abs(g.item()) * m.divisor / m.size for g, m in zip(grads, masks.values()) if g is not None]
    return max(steps, default=0.0)


def resolve_budget(
    supernet: Supernet, resources: ResourceModel, settings: SearchSettings
) -> tuple[float, float, float]:
    """(smallest, full, budget) of a search in its resource's unit, refusing a budget the supernet cannot reach."""
    resource = settings.resource
    smallest, full = figure_range(supernet, resources, resource)
    if resource == "latency":  # target= is a fraction of what the supernet measures, not of its prediction
        full = resources.latency.table.measured_full_ms
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
    supernet: Supernet,
    resources: ResourceModel,
    budget: float,
    resource: str = "gflops",
    steps: int = 40,
    depth: bool = True,
) -> float:
    """Scale every keep ratio by one common factor, the largest for which the hard structure fits the budget.

    The search approaches its target from above and ends a few percent off it, either way; one common factor
    keeps the learned proportions (a C2f stage that lost all its blocks stays removed). With `depth=False` only
    the widths scale and every stage keeps its blocks: a block is a step of several percent of the cost, so a
    factor that also moves depths can find no structure between "one block too many" and "one too few".
    Returns the factor.
    """
    learned = keep_ratios(supernet)
    scaled = {name for name, mask in supernet.keep_ratio_masks().items() if depth or not isinstance(mask, DepthMask)}

    def fits(factor: float) -> bool:
        set_keep_ratios(supernet, {k: v * factor if k in scaled else v for k, v in learned.items()})
        return hard_figure(resources, resource) <= budget

    floor = min((v for k, v in learned.items() if k in scaled and v > 0), default=1.0)
    saturated = 1.0 / max(floor, 1e-6)  # every scaled ratio reaches 1
    if fits(saturated):
        return saturated
    low, high = (1.0, saturated) if fits(1.0) else (0.0, 1.0)  # the structure fits at `low`, not at `high`
    for _ in range(steps):
        mid = (low + high) / 2
        if fits(mid):
            low = mid
        else:
            high = mid
    set_keep_ratios(supernet, {k: v * low if k in scaled else v for k, v in learned.items()})
    return low


def fit_to_measured_budget(
    supernet: Supernet, resources: ResourceModel, budget: float, tries: int = MEASURED_FIT_TRIES
) -> tuple[float, float]:
    """Fit the structure under `budget` ms on the prediction, then hold it to the measured figure: while the
    exported structure measures above the budget, refit to a budget lowered by the overshoot, and at least below
    the structure's own prediction, so that every refit is a smaller structure (at most `tries` fits; the last one
    may still measure above the budget).

    Returns (the common factor applied to the learned keep ratios, the measured milliseconds)."""
    target = budget
    learned = keep_ratios(supernet)
    for _ in range(tries):
        set_keep_ratios(supernet, learned)
        factor = fit_to_budget(supernet, resources, target, "latency")
        measured = resources.latency.measure()
        if measured <= budget:
            break
        target = min(target * budget / measured, hard_figure(resources, "latency") * (1 - 1e-9))
    return factor, measured


@dataclass(frozen=True)
class Fit:
    """What fitting a searched structure under its budget did, in the budget's unit (ms: predicted, except
    `measured_ms`)."""

    resource: str
    budget: float
    before: float  # the searched structure
    factor: float  # the common factor every keep ratio was scaled by
    after: float  # the fitted structure
    step: float  # `step_cost` of the searched structure: the finest the structure moves
    measured_ms: float | None = None  # latency: the fitted structure as deployed and timed, what the budget holds

    @property
    def held(self) -> float:
        """The figure the budget is held to: measured milliseconds for latency, else the exact count."""
        return self.after if self.measured_ms is None else self.measured_ms

    @property
    def over_budget(self) -> bool:
        """The fit gave up above the budget."""
        return self.held > self.budget * (1 + 1e-9)

    @property
    def by_rescale(self) -> bool:
        """The search ended further from its budget than its tolerance and one step of its layers: the fit, not
        the search, reached the budget."""
        return abs(self.before - self.budget) > FIT_TOLERANCE * self.budget + self.step

    def record(self) -> dict:
        """The fit as plain values (checkpoints and search.json)."""
        return {**asdict(self), "over_budget": self.over_budget}

    def summary(self) -> str:
        """One line: from where to where the fit moved the structure."""
        measured = "" if self.measured_ms is None else f" predicted, {self.measured_ms:.4g} ms measured"
        return (f"structure at {describe(self.before, self.resource)} fitted to the budget "
                f"{describe(self.budget, self.resource)}: keep ratios scaled by {self.factor:.4f}, now "
                f"{describe(self.after, self.resource)}{measured}")

    def warnings(self) -> list[str]:
        """What a user must know about this fit: it gave up over the budget, or the search did not reach it."""
        warnings = []
        if self.over_budget:
            cause = (f"still measured above it after {MEASURED_FIT_TRIES} refits (timing noise, or a budget near the "
                     "smallest structure)" if self.measured_ms is not None else "no common rescale of the keep "
                     "ratios brings it under (a budget near the smallest structure)")
            held, budget = describe(self.held, self.resource), describe(self.budget, self.resource)
            warnings.append(f"the fit gave up at {held}, {self.held / self.budget - 1:+.1%} over the budget {budget}: "
                            f"{cause}")
        if self.by_rescale:
            warnings.append(
                f"the search ended {self.before / self.budget - 1:+.1%} off its budget (one step of its costliest "
                f"layer is {self.step / self.budget:.1%}) and the fit had to scale every keep ratio by "
                f"{self.factor:.3f}, so the budget was reached by a uniform rescale, not by the search (it stopped "
                "before its target reached the budget). Search more epochs, or lower target_schedule or refine."
            )
        return warnings

    def log(self) -> None:
        """Say what the fit did, on a line of its own (a progress bar may be drawing), and warn as `warnings`."""
        LOGGER.info(f"\n{colorstr('DMS:')} {self.summary()}")
        for warning in self.warnings():
            LOGGER.warning(f"{colorstr('DMS:')} {warning}")


def fit_structure(supernet: Supernet, resources: ResourceModel, budget: float, resource: str = "gflops") -> Fit:
    """Fit `supernet`'s structure under `budget` by the one rule every fit follows (the refine phase, an export
    of a search stopped before it, `yolo-dms export`): one common factor on the learned keep ratios, the largest
    under the budget; a latency budget is held to the deployed model's measured milliseconds."""
    before = hard_figure(resources, resource)
    step = step_cost(supernet, resources, resource)
    if resource == "latency":
        factor, measured = fit_to_measured_budget(supernet, resources, budget)
    else:
        factor, measured = fit_to_budget(supernet, resources, budget, resource), None
    return Fit(resource, budget, before, factor, hard_figure(resources, resource), step, measured)
