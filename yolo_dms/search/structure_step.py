"""The structure update of one search step: task gradient plus the budget constraint's force times its balanced
gradient, then Adam.

Kept apart from the trainer so that it can be timed and tested on its own. The constraint is
`log(F / F_target) <= 0` on the straight-through figure `F` (GFLOPs, parameters or latency) while the target
falls, and `log(F / budget) = 0` once it holds at the budget. Its gradient on the keep ratios is rescaled to the
running norm of the task gradient, so the force is a pure number whatever the loss scale (1: equal norms, as the
DMS reference balances them). The force is that of an augmented Lagrangian, `multiplier + PENALTY * log(F /
target)`: the penalty answers a lag at once, and the multiplier, starting at `weight`, integrates the lag by dual
ascent, so a structure that the task gradient holds back (from a trained model it resists every cut) meets a
push that grows until it keeps up, with no steady-state lag left to tune away. While the target falls the
force and the multiplier are at least 0 (an inequality: being ahead of the schedule is no violation); at the
budget they take either sign, since capacity left unused under the budget is accuracy given away.
"""

from __future__ import annotations

import torch

from yolo_dms.core.budget import figure
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.distributed import average_importance, broadcast_keep_ratios

# Augmented-Lagrangian penalty: the constraint's force is `multiplier + PENALTY * log(F / target)` (in units of
# the task gradient's norm), so a lag is answered at once, and the multiplier integrates the lag so that none
# persists. Adam moves every keep ratio by about `lr` per step, so log F moves by about 2 * lr per step and unit
# of force (FLOPs grow with two widths): the lag decays with a time constant of 1 / (2 * lr * PENALTY) steps,
# about a tenth of the target's descent at the auto step size, and the multiplier's dual-ascent step
# PENALTY**2 / 2 * lr damps the loop critically (the integral alone, dual ascent, oscillates around the target).
PENALTY = 4.0


class StructureStep:
    """Owns the keep ratios' optimizer, the running task-gradient norm and the budget's Lagrange multiplier.

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
        self.multiplier = weight

    def set_lr(self, lr: float) -> None:
        """Set the keep ratios' learning rate (known once the run length is; 0 freezes the structure)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def update_multiplier(self, log_ratio: float, two_sided: bool) -> float:
        """Dual ascent on `log(F / target)` at the critically damped rate (see `PENALTY`); returns the force of the
        constraint at this step: none while the target falls and the structure is far enough below it (an
        inequality: both the multiplier and the force are at least 0), of either sign at the budget."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.multiplier += PENALTY**2 / 2 * lr * log_ratio
        force = self.multiplier + PENALTY * log_ratio
        if two_sided:
            return force
        self.multiplier = max(0.0, self.multiplier)
        return max(0.0, force)

    def pending(self) -> bool:
        """Whether a backward pass left task gradients on the keep ratios that no step has used yet."""
        return any(p.grad is not None for p in self.supernet.structure_parameters())

    def step(self, target: float, grad_scale: float = 1.0, two_sided: bool = False) -> tuple[float, float] | None:
        """Update the keep ratios from their accumulated task gradient (divided by `grad_scale`, the AMP scale).

        While the target falls, the resource loss is the DMS loss `max(0, log(F / target))`; once it holds at
        the budget (`two_sided`), `|log(F / budget)|`. Returns (resource
        figure, resource loss) at the step, or None when the gradients overflowed and the step was skipped.
        The constraint's force is the multiplier (see the module) times the balanced resource gradient.
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
        force = self.update_multiplier(read[1], two_sided)
        total = task
        if force != 0:
            grads = torch.autograd.grad(log_ratio, params, allow_unused=True)
            resource = torch.stack([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
            balance = max(self.task_norm, 1e-12) / resource.norm().double().clamp(min=1e-12)  # on the device
            total = task + (force * balance).to(task.dtype) * resource
        if self.normalize:
            total = total * (len(params) ** 0.5 / max(self.task_norm, 1e-12))
        for p, g in zip(params, total):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.supernet.clamp_keep_ratios()
        broadcast_keep_ratios(self.supernet)
        return read[0], read[2]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "task_norm": self.task_norm, "multiplier": self.multiplier}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_norm = state["task_norm"]
        self.multiplier = state.get("multiplier", self.weight)  # a checkpoint from before the multiplier
