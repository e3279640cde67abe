"""The search's timeline in batches: the target falls, holds, then the structure is fitted and frozen.

    0 ── target falls from the supernet's figure to the budget ── S ── hold ── R ── refine (fixed structure) ── T

`S = target_schedule * T`; `R = (1 - refine) * T`. Until `R` the keep ratios take one structure step per batch;
at `R` the structure is fitted under the budget and frozen, and the weights train at that exact hard structure,
so the exported model is a trained model. The step size of the keep ratios is derived from the run length,
because an Adam step moves a keep ratio by about its learning rate: a few dozen steps need large steps, a few
hundred thousand small ones, to travel the same distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Adam moves a keep ratio by about `lr` per step when its gradient has a steady sign; the auto step size lets the
# scheduled descent travel this many times the distance a uniform shrink to the budget needs, so the structure
# keeps up with the target and layers can move further than average.
TRAVEL = 4.0
MAX_AUTO_LR = 0.1
FINAL_LR_FACTOR = 0.1


@dataclass(frozen=True)
class SearchSchedule:
    """Target and phases of one search of `total_steps` batches from `full` to `budget` (same unit, e.g. GFLOPs)."""

    total_steps: int
    full: float
    budget: float
    target_schedule: float = 0.6
    refine: float = 0.2

    @property
    def schedule_steps(self) -> int:
        """Batches over which the target falls to the budget."""
        return max(1, math.ceil(self.target_schedule * self.total_steps))

    @property
    def refine_start(self) -> int:
        """First batch of the refine phase (`total_steps` when there is none)."""
        return self.total_steps - math.floor(self.refine * self.total_steps)

    def target(self, step: int) -> float:
        """Scheduled target at batch `step`: `full * (budget / full) ** progress`, then the budget."""
        fraction = min(1.0, step / self.schedule_steps)
        return self.full * (self.budget / self.full) ** fraction

    def searching(self, step: int) -> bool:
        """Whether the keep ratios still learn at batch `step`."""
        return step < self.refine_start

    def holding(self, step: int) -> bool:
        """Whether the target has reached the budget and holds there."""
        return step >= self.schedule_steps

    def lr_factor(self, step: int) -> float:
        """Keep-ratio learning rate relative to its start: linear from 1 down to `FINAL_LR_FACTOR` at the refine
        phase, so early steps travel and late steps settle onto the budget instead of jumping around it."""
        return 1.0 - (1.0 - FINAL_LR_FACTOR) * min(1.0, step / max(1, self.refine_start))

    def auto_structure_lr(self) -> float:
        """Keep-ratio learning rate sized to the run: `TRAVEL` uniform-shrink distances over the schedule.

        A uniform shrink to a fraction `b` of the FLOPs keeps about `sqrt(b)` of every width (FLOPs grow with the
        product of input and output widths), so the distance is `1 - sqrt(b)`.
        """
        distance = 1.0 - math.sqrt(self.budget / self.full)
        return min(MAX_AUTO_LR, TRAVEL * max(distance, 0.05) / self.schedule_steps)
