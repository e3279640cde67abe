"""The structure update of one search step: task gradient plus the balanced resource-loss gradient, then Adam.

Kept apart from the trainer so that it can be timed and tested on its own. The resource loss is
`log(F / F_target)` while the straight-through GFLOPs `F` exceed the target (zero below; two-sided once the
target holds at the budget); its gradient on the keep ratios is rescaled to `weight` times the running norm of
the task gradient, so neither term drowns the other whatever the loss scale, as the DMS reference does. A
structure that lags above its target gets a stronger push, `(F / target) ** TRACKING_GAIN`: from a trained
model the task gradient resists every cut, and at equal norms a 30% search ended 10 to 15% above its budget,
leaving the final fit to make the cut at once.
"""

from __future__ import annotations

import torch

from yolo_dms.core.budget import figure
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.distributed import average_importance, broadcast_keep_ratios

TRACKING_GAIN = 8.0  # while F is above its target the resource gradient grows as (F / target) ** TRACKING_GAIN
MAX_BOOST = 10.0  # up to this factor (reached 33% above the target)


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
        self.optimizer = optimizer(params, lr=lr, foreach=True)  # one batched update, not one per keep ratio
        self.task_norm: float | None = None

    def set_lr(self, lr: float) -> None:
        """Set the keep ratios' learning rate (known once the run length is; 0 freezes the structure)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def pending(self) -> bool:
        """Whether a backward pass left task gradients on the keep ratios that no step has used yet."""
        return any(p.grad is not None for p in self.supernet.structure_parameters())

    def step(self, target: float, grad_scale: float = 1.0, two_sided: bool = False) -> tuple[float, float] | None:
        """Update the keep ratios from their accumulated task gradient (divided by `grad_scale`, the AMP scale).

        While the target falls, only a structure above it is pushed down (the DMS loss). Once it holds at the
        budget (`two_sided`), the loss is `|log(F / budget)|`: a structure that overshot below the budget is
        pulled back up, since capacity left unused under the budget is accuracy given away. Returns (resource
        figure, resource loss) at the step, or None when the gradients overflowed and the step was skipped.
        """
        average_importance(self.supernet)  # every rank ranks channels alike (a no-op outside DDP)
        params = self.supernet.structure_parameters()
        task = torch.stack([(p.grad if p.grad is not None else torch.zeros_like(p)).float() for p in params])
        task = task / grad_scale
        for p in params:
            p.grad = None
        if not torch.isfinite(task).all():
            return None
        norm = task.norm().item()
        self.task_norm = norm if self.task_norm is None else 0.9 * self.task_norm + 0.1 * norm
        value = figure(self.resources, self.resource)
        log_ratio = torch.log(value / target)
        resource_loss = log_ratio.abs() if two_sided else log_ratio.clamp(min=0.0)
        total = task
        if resource_loss.item() > 0:
            grads = torch.autograd.grad(resource_loss, params, allow_unused=True)
            resource = torch.stack([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
            balance = self.weight * max(self.task_norm, 1e-12) / max(resource.norm().item(), 1e-12)
            balance *= min(MAX_BOOST, max(1.0, value.item() / target) ** TRACKING_GAIN)
            total = task + balance * resource
        if self.normalize:
            total = total * (len(params) ** 0.5 / max(self.task_norm, 1e-12))
        for p, g in zip(params, total):
            p.grad = g.to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.supernet.clamp_keep_ratios()
        broadcast_keep_ratios(self.supernet)
        return value.item(), resource_loss.item()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "task_norm": self.task_norm}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_norm = state["task_norm"]
