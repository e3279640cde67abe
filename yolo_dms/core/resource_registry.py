"""The resources a search can be budgeted in, one entry each: adding a resource is one `Resource` here plus the
figure it reads from the resource model (docs/ARCHITECTURE.md, "Adding a resource").

Settings, defaults, help, the log, `search.csv`, `search.json`, the API and the plots all read this table.
Budgets, the log and plots count in the budget's unit (what the user types: GFLOPs, millions of parameters, ms);
the search's files count in `unit` (parameters one by one, as Ultralytics counts them), `scale` of which make one
budget unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from yolo_dms.core.errors import DMSError
from yolo_dms.core.resources import ResourceModel


@dataclass(frozen=True)
class Resource:
    """One budgetable resource: how its figure is computed and how it is written."""

    name: str  # the setting (`resource=<name>`) and its absolute budget (`<name>=value`)
    unit: str  # the unit of search.csv, search.json and results.csv
    axis: str  # plot label, in the budget's unit
    words: str  # a budget figure in words, formatted with the value in the budget's unit
    figure_of: Callable[[ResourceModel, torch.Tensor | None], torch.Tensor]  # differentiable in the keep ratios
    scale: float = 1.0  # file units per budget unit
    measured: bool = False  # held to a measurement of the deployed model, not only to its differentiable prediction

    def describe(self, value: float) -> str:
        """A figure in the budget's unit, in words: '4.21 GFLOPs', '1.23M parameters', '3.2 ms'."""
        return self.words.format(value)

    def absolute(self, budget_figure: float) -> float:
        """A figure in the budget's unit, in `unit`."""
        return budget_figure * self.scale

    def from_setting(self, value: float) -> float:
        """An absolute budget as the user types it (`params=1.5e6`), in the budget's unit."""
        return value / self.scale


def _latency_ms(resources: ResourceModel, ratios: torch.Tensor | None) -> torch.Tensor:
    if resources.latency is None:
        raise DMSError("a latency budget needs the latency model: core.latency.attach_latency(resources)")
    return resources.latency.ms(ratios)


RESOURCES: dict[str, Resource] = {
    entry.name: entry
    for entry in (
        Resource("gflops", "GFLOPs", "GFLOPs", "{:.4g} GFLOPs", lambda r, ratios: r.gflops(ratios)),
        Resource("params", "parameters", "parameters (M)", "{:.4g}M parameters",
                 lambda r, ratios: r.params(ratios) / 1e6, scale=1e6),
        Resource("latency", "ms", "latency (ms)", "{:.4g} ms", _latency_ms, measured=True),
    )
}


def resource(name: str) -> Resource:
    """The registry entry of `name`, refusing an unknown one."""
    if name not in RESOURCES:
        raise DMSError(f"resource must be one of {', '.join(RESOURCES)}, got {name}")
    return RESOURCES[name]
