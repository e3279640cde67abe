"""The structure update of one search step: a projected gradient step on the keep ratios.

Kept apart from the trainer so that it can be timed and tested on its own. The budget is the constraint
`F <= F_target` on the straight-through figure `F` (GFLOPs, parameters or latency) while the target falls, and
`F = budget` once it holds. Each step has two parts:

- **Trade-off.** Adam on the task gradient plus the DMS resource loss's gradient (`log(F / target)`), rescaled
  to the running norm of the task gradient and weighted by `resource_weight` (1: equal norms, as the DMS
  reference balances them). This decides which layers give way: a keep ratio falls where its task gradient is
  weaker than its share of the cost. The resource term is off while the structure is under a falling target
  (being ahead is no violation), as in the DMS loss.
- **Projection.** As in the final fit (`budget.fit_to_budget`), one common factor scales the widths' keep
  ratios to bring the hard figure to the largest value under the target (`project`). While the target falls this
  happens only when the step left the structure over it; at the budget, either way.

The projection replaces a budget controller: no multiplier to wind up, no gain to tune for the run's length,
and a block that drops out (a step of several percent of the cost) is answered at the next step, so the search
enters its refine phase on its budget in runs of 40 steps as in runs of 40,000. A common factor keeps the
proportions the trade-off learned.
"""

from __future__ import annotations

import torch

from yolo_dms.core.budget import figure, fit_to_budget, hard_figure
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.distributed import average_importance, broadcast_keep_ratios

# Bisection steps of the per-step projection: 2**-16 of the factor's range, finer than one channel of any layer.
PROJECTION_STEPS = 16


class StructureStep:
    """Owns the keep ratios' optimizer and the running task-gradient norm.

    `optimizer="adam"` normalizes every keep ratio's step on its own (each moves by about `lr` whatever its
    gradient), so a layer's speed reflects the sign consistency of its gradient. `"sgd"` divides the whole
    gradient by the running task-gradient norm (times sqrt of the number of keep ratios, so an average keep
    ratio moves by about `lr` too) and keeps the proportions between layers: a layer moves in proportion to its
    net trade-off of task loss against resource, and the structure settles where those trade-offs are equal.
    """

    def __init__(
        self,
        supernet: Supernet,
        resources: ResourceModel,
        lr: float,
        weight: float,
        resource: str = "gflops",
        optimizer: str = "adam",
    ) -> None:
        self.supernet, self.resources, self.weight, self.resource = supernet, resources, weight, resource
        params = supernet.structure_parameters()
        self.normalize = optimizer == "sgd"
        optimizer = torch.optim.SGD if self.normalize else torch.optim.Adam
        fused = params[0].device.type in ("cpu", "cuda")  # one kernel for every keep ratio, not ~20 ops for each
        self.optimizer = optimizer(params, lr=lr, fused=True) if fused else optimizer(params, lr=lr, foreach=True)
        self.task_norm: float | None = None

    def set_lr(self, lr: float) -> None:
        """Set the keep ratios' learning rate (known once the run length is; 0 freezes the structure)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def pending(self) -> bool:
        """Whether a backward pass left task gradients on the keep ratios that no step has used yet."""
        return any(p.grad is not None for p in self.supernet.structure_parameters())

    def step(self, target: float, grad_scale: float = 1.0, two_sided: bool = False) -> tuple[float, float] | None:
        """Update the keep ratios from their accumulated task gradient (divided by `grad_scale`, the AMP scale),
        then project them onto the target (see the module).

        Returns (resource figure, resource loss) before the step, the loss being the DMS loss
        `max(0, log(F / target))` while the target falls and `|log(F / budget)|` once it holds (`two_sided`); or
        None when the gradients overflowed and the step was skipped.
        """
        average_importance(self.supernet)  # every rank ranks channels alike (a no-op outside DDP)
        params = self.supernet.structure_parameters()
        task = torch.stack([(p.grad if p.grad is not None else torch.zeros_like(p)).float() for p in params])
        task = task / grad_scale
        for p in params:
            p.grad = None
        finite, norm = torch.stack([torch.isfinite(task).all().float(), task.norm()]).tolist()  # one host read
        if not finite:
            return None
        self.task_norm = norm if self.task_norm is None else 0.9 * self.task_norm + 0.1 * norm
        value = figure(self.resources, self.resource)
        log_ratio = torch.log(value / target)
        resource_loss = log_ratio.abs() if two_sided else log_ratio.clamp(min=0.0)
        read = torch.stack([value.double(), log_ratio.double(), resource_loss.double()]).tolist()  # one host read
        total = task
        if two_sided or read[1] > 0:
            grads = torch.autograd.grad(log_ratio, params, allow_unused=True)
            resource = torch.stack([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
            balance = max(self.task_norm, 1e-12) / resource.norm().double().clamp(min=1e-12)  # on the device
            total = task + (self.weight * balance).to(task.dtype) * resource
        if self.normalize:
            total = total * (len(params) ** 0.5 / max(self.task_norm, 1e-12))
        for p, g in zip(params, total):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.supernet.clamp_keep_ratios()
        if two_sided or hard_figure(self.resources, self.resource) > target:
            self.project(target)
        broadcast_keep_ratios(self.supernet)
        return read[0], read[2]

    def project(self, target: float) -> None:
        """Scale the widths by the common factor that brings the hard figure to the largest value under `target`;
        the blocks stay, unless even the narrowest widths leave the structure over it. Blocks are the trade-off's
        to drop or keep: as steps of several percent of the cost, they would leave the figure up to one block
        under the target if the rescale moved them too."""
        fit_to_budget(self.supernet, self.resources, target, self.resource, PROJECTION_STEPS, depth=False)
        if hard_figure(self.resources, self.resource) > target:
            fit_to_budget(self.supernet, self.resources, target, self.resource, PROJECTION_STEPS)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "task_norm": self.task_norm}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_norm = state["task_norm"]
