"""`SearchSession`: everything one search adds to an Ultralytics training run, in one object.

It owns the supernet's resource model, the budget, the structure step, the schedule, the search clock, the fit
and the search log; `search.trainer.SearchTrainer` calls it from the stock hooks in a line or two. The preflight
of `yolo-dms search` prepares it (resource model and budget: a budget the supernet cannot reach is refused
before anything is written) and hands it to the trainer, which starts it on the model it trains. See
docs/ARCHITECTURE.md for the path of one batch through it.
"""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path

import torch
from ultralytics.utils import RANK

from yolo_dms.core.budget import describe, hard_figure, hard_gflops, resolve_budget
from yolo_dms.core.export import ExportResult, export_searched
from yolo_dms.core.fit import fit_structure
from yolo_dms.core.latency import resource_model, same_resources
from yolo_dms.core.latency_backends import latency_backend
from yolo_dms.core.resource_registry import RESOURCES
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.distributed import broadcast_keep_ratios
from yolo_dms.search.schedule import FINAL_LR_FACTOR, SearchSchedule
from yolo_dms.search.search_log import SearchLog, structure_columns
from yolo_dms.search.settings import SearchSettings
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.search.summary import write_search_outputs

TRACE_ROWS = 2000  # search.csv keeps about this many steps, however long the run


def wrap_supernet(model: torch.nn.Module, settings: SearchSettings) -> Supernet:
    """A supernet over `model` (taken over, not copied) with the mask settings of `settings`, which it carries
    along so that resume and DDP workers rebuild it as it was."""
    supernet = Supernet(model, lam=settings.width_lam, depth_lam=settings.depth_lam, decay=settings.importance_decay,
                        divisor=settings.divisor, hidden_divisor=settings.hidden_divisor, copy=False)
    supernet.dms_settings = settings
    return supernet


def sync_structure(source: Supernet, target: Supernet) -> None:
    """Give `target` (the EMA model) exactly the live structure: keep ratios and importance are copied."""
    target.masks.load_state_dict(source.masks.state_dict())


def as_stored(supernet: Supernet) -> Supernet:
    """A float32 evaluation copy of `supernet` with the weights last.pt stores, in half precision: pruning sums
    some weights, so pruned.pt and best.pt are pruned from these, and `yolo-dms export` of last.pt writes them
    again weight for weight."""
    return deepcopy(supernet).half().float().eval()


class SearchSession:
    """The search of one run: `prepare` (resource model, budget), `start` (structure step, schedule, log), then per
    batch `begin_batch` and `step`, per epoch `begin_epoch` and `epoch_columns`, and at the end `export`."""

    def __init__(self) -> None:
        self.supernet: Supernet | None = None
        self.settings: SearchSettings | None = None
        self.resources: ResourceModel | None = None
        self.smallest = self.full = self.budget = 0.0  # in the budget's unit
        self.structure: StructureStep | None = None
        self.schedule: SearchSchedule | None = None
        self.structure_lr = 0.0
        self.iteration = 0  # batches trained so far: the search clock
        self.fit: dict = {}  # what the final fit did: the figure before and after it, its factor, and its batch
        self.log: SearchLog | None = None  # rank 0 only
        self.export_result: ExportResult | None = None
        self.summary: dict = {}  # search.json, once written

    # ------------------------------------------------------------------------------------------------ set-up
    def prepare(self, supernet: Supernet, imgsz: int, device, refresh: bool = False) -> None:
        """The resource model of `supernet` on its device (timing the latency table when the budget is in ms and
        no cached one fits) and the budget, refused with `BudgetError` when the supernet cannot reach it."""
        self.supernet, self.settings = supernet, supernet.dms_settings
        backend = latency_backend(self.settings.latency_backend, device)
        self.resources = resource_model(supernet, imgsz, self.settings.resource, backend, refresh=refresh)
        self.resolve_budget()

    def resolve_budget(self) -> None:
        self.smallest, self.full, self.budget = resolve_budget(
            self.supernet, self.resources, self.settings.resource, self.settings.budget)

    def start(self, supernet: Supernet, imgsz: int, device, total_steps: int, refresh: bool = False) -> None:
        """Start the search on the supernet the trainer trains: prepared for another copy (the preflight's), its
        resource model moves over with the measured latency table; then the structure step and the schedule."""
        if self.resources is None:
            self.prepare(supernet, imgsz, device, refresh)
        elif supernet is not self.supernet:
            self.supernet, self.resources = supernet, same_resources(self.resources, supernet)
            self.resolve_budget()
        settings = self.settings
        self.structure = StructureStep(supernet, self.resources, settings.structure_lr or 0.0,
                                       settings.resource_weight, settings.resource, settings.structure_optimizer)
        self.follow_run_length(total_steps)

    def open_log(self, save_dir: Path) -> str:
        """Start `search.csv` in `save_dir` (rank 0); returns the search's plan in words, for the log."""
        self.log = SearchLog(save_dir, self.settings.resource, every=math.ceil(self.schedule.total_steps / TRACE_ROWS))
        return (f"supernet {self.describe(self.full)} at imgsz={self.resources.imgsz[0]}, budget "
                f"{self.describe(self.budget)} ({self.budget / self.full:.1%}), smallest structure "
                f"{self.describe(self.smallest)}. {self.describe_schedule()}")

    @property
    def without_refine(self) -> bool:
        """A refine phase was asked for but the run is too short to give it a batch."""
        return self.schedule.refine_start == self.schedule.total_steps and bool(self.settings.refine)

    def follow_run_length(self, total_steps: int) -> bool:
        """Size the schedule (target, refine start, keep-ratio step size) to the batches the run will train;
        returns whether it changed (a batch halved after an out-of-memory error, `time=` re-estimating epochs)."""
        if self.schedule and self.schedule.total_steps == total_steps:
            return False
        settings = self.settings
        self.schedule = SearchSchedule(total_steps, self.full, self.budget, settings.target_schedule, settings.refine)
        auto = settings.structure_lr is None
        self.structure_lr = self.schedule.auto_structure_lr() if auto else settings.structure_lr
        return True

    def describe_schedule(self) -> str:
        """The schedule in words, for the log."""
        schedule, lr, refine = self.schedule, self.structure_lr, self.settings.refine
        tail = schedule.total_steps - schedule.refine_start
        return (
            f"{schedule.total_steps} batches: the target reaches the budget after {schedule.schedule_steps}, one "
            f"structure step per batch (keep-ratio lr {lr:.3g} decaying to {lr * FINAL_LR_FACTOR:.3g}"
            f"{', auto' if self.settings.structure_lr is None else ''}), then "
            + (f"{tail} batches at the fitted, frozen structure" if tail else
               f"no refine phase: refine={refine:g} of {schedule.total_steps} batches is less than one batch, so "
               f"pruned.pt is fitted after the last batch and never trained at its structure (more epochs or a "
               f"smaller batch give it one)" if refine else "no refine phase (refine=0)")
        )

    def describe(self, value: float) -> str:
        """A figure in the budget's unit, in words."""
        return describe(value, self.settings.resource)

    # ------------------------------------------------------------------------------------------ per batch
    @property
    def frozen(self) -> bool:
        """Whether the structure is fitted and fixed (the refine phase)."""
        return self.supernet.structure_frozen

    def begin_epoch(self, epoch: int, batches_per_epoch: int, total_steps: int) -> bool:
        """The clock restarts at the epoch's first batch (an epoch retried with a halved batch runs more batches);
        returns whether the schedule had to follow a new run length."""
        self.iteration = epoch * batches_per_epoch
        return self.follow_run_length(total_steps)

    def begin_batch(self, loss_scale: float | torch.Tensor) -> None:
        """Advance the clock by one batch, entering the refine phase when it is due; importance learns the AMP
        loss scale the coming backward pass carries."""
        self.supernet.grad_scale = loss_scale
        self.iteration += 1
        if not self.schedule.searching(self.iteration) and not self.frozen:
            self.freeze()

    def step(self, loss_scale: float | torch.Tensor, epoch: int) -> None:
        """One structure update from this batch's gradients (skipped on the device when AMP overflowed); a no-op
        once the gradients were used, and in the refine phase."""
        if self.frozen or not self.structure.pending():
            return
        target = self.current_target()
        self.structure.set_lr(self.structure_lr * self.schedule.lr_factor(self.iteration))
        value, loss, finite = self.structure.step(target, loss_scale, two_sided=self.schedule.holding(self.iteration))
        if self.log:  # device tensors, read in a batch by the log (a skipped step leaves no row)
            self.log.record(self.iteration, epoch, value, target, loss, valid=finite)

    def end_batch(self, loss_scale: float | torch.Tensor, epoch: int) -> None:
        """The step of a batch whose weights did not step (gradient accumulation); in the refine phase, the
        fixed structure's row of the search log."""
        self.step(loss_scale, epoch)
        if self.frozen and self.log:
            self.log.record(self.iteration, epoch, self.fit["after"], self.budget, 0.0)

    def current_target(self) -> float:
        """Scheduled target (in the budget's unit) at this point of the run."""
        return self.schedule.target(self.iteration)

    # ------------------------------------------------------------------------------------------------ fit
    def freeze(self) -> None:
        """Fit the structure under the budget and fix it: from here on the weights train the exported structure."""
        self.fit_structure()
        self.supernet.structure_frozen = True

    def fit_structure(self, supernet: Supernet | None = None, resources: ResourceModel | None = None) -> None:
        """Scale the keep ratios of `supernet` (the live one by default) by the common factor that brings them just
        under the budget (`core.fit`, the rule of every fit), record it for search.json and checkpoints, and say
        what it did."""
        live = supernet is None
        fit = fit_structure(supernet or self.supernet, resources or self.resources, self.budget,
                            self.settings.resource)
        if live:
            broadcast_keep_ratios(self.supernet)  # rank 0's fit for all (measured latency differs between ranks)
        self.fit = {**fit.record(), "iteration": self.iteration}
        if RANK in {-1, 0}:
            fit.log()

    # ----------------------------------------------------------------------------------- epochs and checkpoints
    def epoch_columns(self) -> dict[str, float]:
        """The search's columns of results.csv: GFLOPs, parameters, target (in the resource's file unit, as
        search.csv), the epoch's mean resource loss, depth per stage."""
        return {
            "dms/GFLOPs": hard_gflops(self.resources),
            "dms/params": hard_figure(self.resources, "params") * 1e6,
            "dms/target": RESOURCES[self.settings.resource].absolute(self.current_target()),
            "dms/resource_loss": self.log.end_epoch(),
            **structure_columns(self.supernet),
        }

    def epoch_line(self, epoch: int, columns: dict[str, float]) -> str:
        """The epoch's structure in words, for the log."""
        figure = hard_figure(self.resources, self.settings.resource)
        return (f"epoch {epoch + 1}: {self.describe(figure)} (target {self.describe(self.current_target())}, budget "
                f"{self.describe(self.budget)}), mean resource loss {columns['dms/resource_loss']:.4f}")

    def checkpoint_state(self, source: str) -> dict:
        """What a checkpoint's supernet carries beyond its weights, to resume or export the search."""
        return {**self.structure.state_dict(), "fit": self.fit, "source": source,
                "total_iterations": self.schedule.total_steps, "structure_lr": self.structure_lr}

    def load_state(self, state: dict) -> None:
        """The structure step's optimizer and gradient norm, the fit, and whether the structure is frozen, as saved
        with the supernet (its keep ratios and importance come back with its weights; the clock with the epoch)."""
        self.structure.load_state_dict(state)
        self.fit = state.get("fit", {})
        self.supernet.structure_frozen = bool(self.fit)

    def export(self, ema: Supernet, save_dir: Path, imgsz: int, source: str,
               finetune: dict | None = None) -> ExportResult:
        """Write searched.yaml, pruned.pt, search.json and the plots from the EMA weights in the half precision
        last.pt stores them; a structure never fitted (early stop, `time=`) is fitted now by the same rule.
        `finetune`: the `yolo train` arguments search.json recommends for fine-tuning pruned.pt."""
        supernet = as_stored(ema)
        resources = same_resources(self.resources, supernet)
        if not self.fit:
            self.fit_structure(supernet, resources)
            sync_structure(supernet, self.supernet)  # the live structure is the exported one
        self.export_result = export_searched(supernet, save_dir, imgsz)
        self.summary = write_search_outputs(save_dir, supernet, resources, self.settings, self.budget,
                                            self.export_result, self.fit, source, self.schedule.total_steps,
                                            self.structure_lr, finetune)
        return self.export_result
