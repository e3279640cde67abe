"""Fitting a structure under a budget, the one rule of every fit: one common factor scales the learned keep
ratios, the largest for which the hard structure fits. The refine phase, the export of a search stopped before
it, `yolo-dms export` and the search's per-step projection all come here (`fit_factors` is the batched rule;
`fit_structure` the final fit with its record)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from ultralytics.utils import LOGGER, colorstr

from yolo_dms.core.budget import describe, figure, hard_figure, keep_ratios, set_keep_ratios, step_cost, step_costs
from yolo_dms.core.masks import DepthMask
from yolo_dms.core.resource_registry import resource as registry_entry
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet

FIT_TOLERANCE = 0.05  # a search that ends within this fraction of its budget (plus one step of its layers) reached it
MEASURED_FIT_TRIES = 5  # a measured resource: refits to a budget lowered by the measured overshoot before giving up

GRID = 256  # candidate factors per pass of the batched fit: one pass decides what 8 bisection steps did
GRID_BITS = 8


def _owners(supernet: Supernet) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keep ratio parameters, their stacked values, their floors, whether each is a depth mask), in the order
    `MaskBank.owner_ratios` stacks them, all on the keep ratios' device (cached there per supernet and device)."""
    bank, masks = supernet.mask_bank(), supernet.masks
    params = bank.owner_parameters(masks)
    with torch.no_grad():
        ratios = torch.stack(params)  # one operation, not a detach per mask

    def constants(device):
        names = bank.order[: len(bank.owner_size)]
        floors = torch.tensor([masks[n].min_ratio for n in names], dtype=torch.float64, device=device)
        depth = torch.tensor([isinstance(masks[n], DepthMask) for n in names], dtype=torch.bool, device=device)
        return floors, depth

    floors, depth = bank._on_device("fit constants", ratios.device, constants)
    return params, ratios, floors, depth


def fit_factors(
    resources: ResourceModel,
    resource: str,
    budget: float | torch.Tensor,
    learned: torch.Tensor,
    scaled: torch.Tensor,
    floors: torch.Tensor,
    steps: int = 40,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batched fit, on the device and without a host read: for each of `P` problems (rows of `learned`, keep
    ratios `[P, owners]`, and of `scaled`, which of them the common factor scales), the largest factor for which
    the hard structure `clamp(learned * factor)` (unscaled ratios kept) fits `budget`.

    Every pass evaluates the hard figure at `GRID` candidate factors of every problem in one vectorized pass
    (`figure` of a `[P * GRID, owners]` batch) and keeps the largest candidate under the budget, then the next
    pass refines between it and the next candidate: `ceil(steps / 8)` passes decide exactly what `steps` bisection
    steps would (the figure grows with the factor). The first pass holds the bisection's brackets: `[0, 1]`
    and `[1, saturated]`, `saturated` being where every scaled ratio reaches 1.

    Returns (factor `[P]` float64, fitted keep ratios `[P, owners]` in `learned`'s dtype, their hard figure `[P]`,
    whether it fits `[P]`, the hard figure at factor 1 `[P]`: `learned` itself, clamped); where nothing fits, factor 0 (the narrowest widths), as the bisection ended.
    """
    dtype, base = learned.dtype, learned.double()
    owners, problems = base.shape[-1], base.shape[0]
    positive = scaled & (base > 0)
    floor = torch.where(positive, base, torch.full_like(base, torch.inf)).amin(-1)
    floor = torch.where(torch.isinf(floor), torch.ones_like(floor), floor)
    saturated = 1.0 / floor.clamp(min=1e-6)  # [P]
    k = torch.arange(GRID + 1, dtype=torch.float64, device=base.device) / GRID  # 0, 1/G, ..., 1

    def structures(factors: torch.Tensor) -> torch.Tensor:  # [P, C] -> [P, C, owners] keep ratios
        ratios = torch.where(scaled[:, None, :], base[:, None, :] * factors[..., None], base[:, None, :])
        return torch.minimum(torch.maximum(ratios, floors), torch.ones_like(ratios)).to(dtype)

    def evaluate(factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = structures(factors)
        with torch.no_grad():
            values = figure(resources, resource, candidates.reshape(-1, owners)).reshape(factors.shape)
        return candidates, values

    def largest(factors: torch.Tensor, values: torch.Tensor, above: torch.Tensor):
        """The largest candidate under the budget of every problem (the first where none is), and the next one."""
        fits = values <= budget
        index = torch.arange(factors.shape[1], device=base.device).expand_as(factors)
        best = torch.where(fits, index, torch.zeros_like(index)).amax(-1, keepdim=True)  # [P, 1]
        following = torch.cat([factors, above[:, None]], 1).gather(1, best + 1)
        return best, factors.gather(1, best)[:, 0], following[:, 0]

    factors = torch.cat([k[None, :] * torch.ones_like(saturated)[:, None],
                         1 + (saturated[:, None] - 1) * k[None, 1:]], 1)  # [P, 2G + 1], ascending
    candidates, values = evaluate(factors)
    at_one = values[:, GRID]
    best, low, high = largest(factors, values, saturated)
    for _ in range(max(1, math.ceil(steps / GRID_BITS)) - 1):
        factors = low[:, None] + (high - low)[:, None] * k[None, :-1]  # low, then G - 1 points below high
        candidates, values = evaluate(factors)
        best, low, high = largest(factors, values, high)
    pick = best[:, :, None].expand(problems, 1, owners)
    fitted = candidates.gather(1, pick)[:, 0]
    value = values.gather(1, best)[:, 0]
    return low, fitted, value, value <= budget, at_one


def write_keep_ratios(params: list[torch.Tensor], ratios: torch.Tensor) -> None:
    """Write stacked keep ratios into their parameters in one operation (not one fill_ per mask)."""
    with torch.no_grad():
        torch._foreach_copy_(params, list(ratios.unbind()))


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
    Returns the factor. The rule is `fit_factors`, which the search's per-step projection runs too.
    """
    return fit_factor(supernet, resources, budget, resource, steps, depth).item()


def fit_factor(
    supernet: Supernet, resources: ResourceModel, budget: float, resource: str = "gflops", steps: int = 40,
    depth: bool = True,
) -> torch.Tensor:
    """`fit_to_budget`, the factor left on the device (0-d float64)."""
    params, learned, floors, depth_mask = _owners(supernet)
    scaled = torch.ones_like(depth_mask) if depth else ~depth_mask
    factor, fitted, *_ = fit_factors(resources, resource, budget, learned[None], scaled[None], floors, steps)
    write_keep_ratios(params, fitted[0])
    return factor[0]


def fit_to_measured_budget(
    supernet: Supernet, resources: ResourceModel, budget: float, resource: str = "latency",
    tries: int = MEASURED_FIT_TRIES,
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
        factor = fit_to_budget(supernet, resources, target, resource)
        measured = resources.latency.measure()
        if measured <= budget:
            break
        target = min(target * budget / measured, hard_figure(resources, resource) * (1 - 1e-9))
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
    if registry_entry(resource).measured:
        before, step = hard_figure(resources, resource), step_cost(supernet, resources, resource)
        factor, measured = fit_to_measured_budget(supernet, resources, budget, resource)
        return Fit(resource, budget, before, factor, hard_figure(resources, resource), step, measured)
    with torch.no_grad():
        before = figure(resources, resource)
    step = step_costs(supernet, resources, resource)
    factor = fit_factor(supernet, resources, budget, resource)
    with torch.no_grad():
        after = figure(resources, resource)
    before, factor, after, step = torch.stack([before, factor, after, step.to(before.device)]).tolist()  # one read
    return Fit(resource, budget, before, factor, after, step, None)
