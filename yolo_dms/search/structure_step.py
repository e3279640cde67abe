"""The structure update of one search step: a projected gradient step on the keep ratios.

Kept apart from the trainer so that it can be timed and tested on its own. The budget is the constraint
`F <= F_target` on the straight-through figure `F` (GFLOPs, parameters or latency) while the target falls, and
`F = budget` once it holds. Each step has two parts:

- **Trade-off.** Adam on the task gradient plus the DMS resource loss's gradient (`log(F / target)`), rescaled
  to the running norm of the task gradient and weighted by `resource_weight` (1: equal norms, as the DMS
  reference balances them). This decides which layers give way: a keep ratio falls where its task gradient is
  weaker than its share of the cost. The resource term is off while the structure is under a falling target
  (being ahead is no violation), as in the DMS loss.
- **Projection.** As in the final fit (`fit.fit_to_budget`), one common factor scales the widths' keep
  ratios to bring the hard figure to the largest value under the target (`project`). While the target falls this
  happens only when the step left the structure over it; at the budget, either way.

The projection replaces a budget controller: no multiplier to wind up, no gain to tune for the run's length,
and a block that drops out (a step of several percent of the cost) is answered at the next step, so the search
enters its refine phase on its budget in runs of 40 steps as in runs of 40,000. A common factor keeps the
proportions the trade-off learned.

Nothing in a step reads the device back (on a GPU each read would drain the queue): the finiteness check, the
task-norm average, the one-/two-sided choice and whether and how to project are decided on the device
(`torch.where`), the skipped step of an overflow by the fused optimizer's `found_inf`, and the projection is the
batched fit (`fit.fit_factors`: the widths-only fit and its fallback with depths, both in the same passes).
"""

from __future__ import annotations

import torch

from yolo_dms.core.budget import figure
from yolo_dms.core.fit import _owners, fit_factors, write_keep_ratios
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.distributed import average_importance, broadcast_keep_ratios

# Bisection steps of the per-step projection: 2**-16 of the factor's range, finer than one channel of any layer.
PROJECTION_STEPS = 16


class StructureStep:
    """Owns the keep ratios' optimizer and the running task-gradient norm (a device tensor).

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
        # one kernel for every keep ratio, not ~20 ops for each; and it skips an overflowed step on the device
        self.fused = params[0].device.type in ("cpu", "cuda")
        self.optimizer = optimizer(params, lr=lr, fused=True) if self.fused else optimizer(params, lr=lr, foreach=True)
        self._task_norm: torch.Tensor | None = None  # NaN until the first finite step

    @property
    def task_norm(self) -> float | None:
        """The running task-gradient norm (a host read: for checkpoints and tests, never per step)."""
        if self._task_norm is None:
            return None
        value = float(self._task_norm)
        return None if value != value else value

    def set_lr(self, lr: float) -> None:
        """Set the keep ratios' learning rate (known once the run length is; 0 freezes the structure)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def pending(self) -> bool:
        """Whether a backward pass left task gradients on the keep ratios that no step has used yet."""
        return any(p.grad is not None for p in self.supernet.structure_parameters())

    def _running_norm(self, norm: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """0.9 * running + 0.1 * norm (the first finite norm as it is), unchanged by a non-finite step."""
        if self._task_norm is None or self._task_norm.device != norm.device:
            old = None if self._task_norm is None else self._task_norm.to(norm.device)
            self._task_norm = torch.full((), torch.nan, dtype=torch.float64, device=norm.device) if old is None else old
        old, norm = self._task_norm, norm.double()
        updated = torch.where(torch.isnan(old), norm, 0.9 * old + 0.1 * norm)
        self._task_norm = torch.where(finite, updated, old)
        return self._task_norm

    def step(
        self, target: float, grad_scale: float | torch.Tensor = 1.0, two_sided: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update the keep ratios from their accumulated task gradient (divided by `grad_scale`, the AMP scale),
        then project them onto the target (see the module).

        Returns device tensors, read by nobody here: (resource figure, resource loss) before the step, the loss
        being the DMS loss `max(0, log(F / target))` while the target falls and `|log(F / budget)|` once it holds
        (`two_sided`), and whether the gradients were finite (False: an AMP overflow, the step was skipped: the
        keep ratios, the optimizer's state and the running norm are as before).
        """
        average_importance(self.supernet)  # every rank ranks channels alike (a no-op outside DDP)
        params = self.supernet.mask_bank().owner_parameters(self.supernet.masks)
        task = torch.stack([(p.grad if p.grad is not None else torch.zeros_like(p)).float() for p in params])
        task = task / grad_scale
        for p in params:
            p.grad = None
        finite = torch.isfinite(task).all()
        task_norm = self._running_norm(task.norm(), finite).clamp(min=1e-12)
        ratios = torch.stack(params)  # the resource gradient comes back stacked, not as one select per ratio
        value = figure(self.resources, self.resource, ratios)
        log_ratio = torch.log(value / target)
        resource_loss = log_ratio.abs() if two_sided else log_ratio.clamp(min=0.0)
        (resource,) = torch.autograd.grad(log_ratio, ratios)  # used where the resource term is on
        balance = task_norm / resource.norm().double().clamp(min=1e-12)
        on = log_ratio.detach() > 0 if not two_sided else torch.ones((), dtype=torch.bool, device=task.device)
        total = task + torch.where(on, self.weight * balance, torch.zeros_like(balance)).to(task.dtype) * resource
        if self.normalize:
            total = total * (len(params) ** 0.5 / task_norm).to(task.dtype)
        if self.fused:  # the fused kernel skips the whole update (state and step count too) where found_inf is 1
            self.optimizer.found_inf = (~finite).float()  # 0-d, as the step counts are
            grads = list(total.unbind())
        else:  # no found_inf outside the fused kernels: a zero gradient (Adam's momentum still moves the ratio)
            grads = list(torch.where(finite, total, torch.zeros_like(total)).unbind())
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        try:
            self.optimizer.step()
        finally:
            self.optimizer.__dict__.pop("found_inf", None)
        self.optimizer.zero_grad(set_to_none=True)
        self.supernet.clamp_keep_ratios()
        self.project(target, gate=finite, two_sided=two_sided)
        broadcast_keep_ratios(self.supernet)
        return value.detach().double(), resource_loss.detach().double(), finite

    def project(self, target: float, gate: torch.Tensor | None = None, two_sided: bool = True) -> None:
        """Scale the widths by the common factor that brings the hard figure to the largest value under `target`;
        the blocks stay, unless even the narrowest widths leave the structure over it (then every ratio scales,
        from the narrowest widths, as the final fit would). Blocks are the trade-off's to drop or keep: as steps of
        several percent of the cost, they would leave the figure up to one block under the target if the rescale
        moved them too.

        Both fits run in the same batched passes and the choice is made on the device: projected when
        `two_sided`, or when the structure is over the target; never where `gate` is False (a skipped step)."""
        params, current, floors, depth = _owners(self.supernet)
        learned = torch.stack([current, torch.where(depth, current, floors.to(current.dtype))])
        scaled = torch.stack([~depth, torch.ones_like(depth)])
        _, fitted, _, fits, at_one = fit_factors(
            self.resources, self.resource, target, learned, scaled, floors, PROJECTION_STEPS
        )
        projected = torch.where(fits[0], fitted[0], fitted[1])
        apply = at_one[0] > target if not two_sided else torch.ones_like(fits[0])
        if gate is not None:
            apply = apply & gate
        write_keep_ratios(params, torch.where(apply, projected, current))

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "task_norm": self.task_norm}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        norm = state["task_norm"]
        device = self.supernet.structure_parameters()[0].device
        self._task_norm = None if norm is None else torch.as_tensor(norm, dtype=torch.float64).to(device)
