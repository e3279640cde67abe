"""`SearchTrainer`: over any Ultralytics task trainer, trains a supernet's weights and structure together.

`DMSTrainer` searches detection models over `DetectionTrainer`; `DMSSegmentationTrainer`, `DMSPoseTrainer`,
`DMSOBBTrainer` and `DMSClassificationTrainer` the other tasks over theirs (`trainer_for(task)` picks it as
`yolo train` does), each with its task's data, loss, validator, metrics and plots. Everything is stock
Ultralytics (data, augmentation, loss, AMP, warmup, schedulers, EMA, validation,
checkpoints, callbacks, resume) except:

- the model is a `Supernet` carrying its `SearchSettings`, so resume and DDP workers rebuild it as it was;
- keep ratios leave the weight optimizer for their own Adam, with no weight decay and a step size sized to the
  run (`schedule.SearchSchedule`);
- every batch (not only those where the weights step after gradient accumulation) updates the keep ratios
  with the task gradient plus the balanced resource-loss gradient, then projects them onto the target
  (`structure_step.StructureStep`); the target falls
  from the supernet's GFLOPs to the budget over the first `target_schedule` of the run, as
  `full * (budget / full) ** progress` (the DMS reference's "root" schedule), then holds;
- for the last `refine` of the run the structure is fitted under the budget and frozen, and the weights train
  at exactly that hard structure;
- the EMA model takes its structure (keep ratios, importance) from the live model whenever it is validated or
  saved, instead of its average;
- validation runs on hard masks, so its metrics are those of the model pruned at that point; the run ends by
  exporting `searched.yaml`, `pruned.pt` and `search.json` from the last EMA weights and validating
  `pruned.pt` with the stock validator.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK, LOGGER, RANK, USER_CONFIG_DIR, colorstr
from ultralytics.utils.torch_utils import strip_optimizer, torch_distributed_zero_first, unwrap_model

from yolo_dms.core.budget import describe, fit_structure, hard_figure, hard_gflops, resolve_budget
from yolo_dms.core.errors import DMSError
from yolo_dms.core.export import ExportResult, export_searched
from yolo_dms.core.latency import latency_line, resource_model, same_resources
from yolo_dms.core.latency_backends import latency_backend
from yolo_dms.core.model_io import (
    is_checkpoint,
    load_search_checkpoint,
    trained_on,
    with_stock_class_branch,
    write_checkpoint,
)
from yolo_dms.core.prune import prune
from yolo_dms.core.resources import FUSED, ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.distributed import broadcast_keep_ratios
from yolo_dms.search.schedule import FINAL_LR_FACTOR, SearchSchedule
from yolo_dms.search.search_log import UNITS, SearchLog, structure_columns
from yolo_dms.search.settings import SearchSettings, load_defaults
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.search.summary import write_search_outputs

TRACE_ROWS = 2000  # search.csv keeps about this many steps, however long the run


def sync_structure(source: Supernet, target: Supernet) -> None:
    """Give `target` (the EMA model) exactly the live structure: keep ratios and importance are copied."""
    target.masks.load_state_dict(source.masks.state_dict())


def _start_epoch(trainer: SearchTrainer) -> None:
    """Callback: the schedule follows the run's length, and the search clock restarts at the epoch's first batch
    (an epoch retried with a halved batch after an out-of-memory error runs more batches)."""
    trainer.follow_run_length()
    trainer.search_iteration = trainer.epoch * len(trainer.train_loader)


def _count_batch(trainer: SearchTrainer) -> None:
    """Callback: advance the search clock by one batch, and enter the refine phase when it is due."""
    trainer.search_iteration += 1
    if trainer.schedule and not trainer.schedule.searching(trainer.search_iteration) and not trainer.frozen:
        trainer.freeze_structure()


def _structure_after_batch(trainer: SearchTrainer) -> None:
    """Callback: the structure step of a batch whose weights did not step (gradient accumulation); in the refine
    phase, the fixed structure's row of the search log."""
    trainer.structure_step()
    if trainer.frozen and trainer.search_log:
        trainer.search_log.record(trainer.search_iteration, trainer.epoch, trainer.fit["after"], trainer.budget, 0.0)


CALLBACKS = {
    "on_train_epoch_start": _start_epoch,
    "on_train_batch_start": _count_batch,
    "on_train_batch_end": _structure_after_batch,
}


UNSUPPORTED = {  # train arguments the search refuses, and what to do instead
    "distill_model": "distillation belongs to fine-tuning: search without it, then "
    "'yolo train model=<run>/pruned.pt distill_model=<teacher.pt>'",
    "compile": "torch.compile would recompile the supernet as its masks change every step: search without it, "
    "then fine-tune pruned.pt with compile=True",
}


def as_stored(supernet: Supernet) -> Supernet:
    """A float32 evaluation copy of `supernet` with the weights last.pt stores, in half precision: pruning sums
    some weights, so pruned.pt and best.pt are pruned from these, and `yolo-dms export` of last.pt writes them
    again weight for weight."""
    return deepcopy(supernet).half().float().eval()


def refuse_unsupported(args) -> None:
    """One line for a train argument the search cannot honour, before anything is written."""
    for key, instead in UNSUPPORTED.items():
        if getattr(args, key, None):
            raise DMSError(f"{key}= is not supported during the search; {instead}")


class SearchTrainer:
    """Differentiable Model Scaling search, mixed in ahead of an Ultralytics task trainer (see the task trainers
    at the end of this module)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, settings: SearchSettings | None = None):
        train_args = {k: v for k, v in (overrides or {}).items() if k != "session"}  # 8.4.0's Model.train adds it
        refuse_unsupported(get_cfg(cfg, train_args))
        super().__init__(cfg, overrides, _callbacks)
        self.settings = settings  # None: taken from the supernet (resume, DDP workers)
        self.search_iteration = 0
        self.structure: StructureStep | None = None
        self.resources: ResourceModel | None = None
        self.search_log: SearchLog | None = None
        self.export_result: ExportResult | None = None
        self.schedule: SearchSchedule | None = None
        self.fit: dict = {}  # what the final fit did: the figure before and after it, its factor, and its batch
        self.summary: dict = {}  # search.json, once written
        for event, callback in CALLBACKS.items():
            if callback not in self.callbacks[event]:  # DDP workers inherit the parent's callbacks
                self.add_callback(event, callback)

    @property
    def supernet(self) -> Supernet:
        return unwrap_model(self.model)

    @property
    def frozen(self) -> bool:
        """Whether the structure is fitted and fixed (the refine phase)."""
        return self.supernet.structure_frozen

    # ------------------------------------------------------------------------------------------------ set-up
    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> Supernet:
        """Stock model from `cfg` (and pretrained weights), wrapped as a supernet; a search checkpoint resumes.

        Every class-count-dependent width is the data's, as `yolo train` builds it (`Detect`'s class branch is
        kept at a checkpoint's width only where pruning can bring it to what exported YAMLs rebuild).
        """
        if isinstance(weights, Supernet):  # the layers the search had (stock loading shapes the head alike)
            supernet = self.wrap(super().get_model(cfg, weights, verbose), weights.dms_settings)
            supernet.load_state_dict(weights.float().state_dict())
            supernet.search_state = getattr(weights, "search_state", {})
            return supernet
        model = super().get_model(cfg, weights, verbose)
        if weights is not None:  # a checkpoint of another class count: a class branch exported YAMLs can rebuild
            model = with_stock_class_branch(model, super().get_model(cfg, None, verbose=False))
        return self.wrap(model, self.settings or SearchSettings())

    @staticmethod
    def wrap(model, settings: SearchSettings) -> Supernet:
        """A supernet over `model` with the mask settings of `settings`, which it carries along.

        It takes `model` over rather than copying it: every caller builds that model only to wrap it."""
        supernet = Supernet(
            model,
            lam=settings.width_lam,
            depth_lam=settings.depth_lam,
            decay=settings.importance_decay,
            divisor=settings.divisor,
            hidden_divisor=settings.hidden_divisor,
            copy=False,
        )
        supernet.dms_settings = settings
        return supernet

    def train(self):
        """Multi-GPU: build the supernet before Ultralytics starts its DDP workers, and hand it to them.

        The workers are re-created from default arguments, so the settings must travel inside the supernet (a
        resumed search reads them from its checkpoint instead). Since 8.4.140 Ultralytics pickles the model for
        them; earlier versions build it from `args.model`, which names a checkpoint of the supernet for the run.
        """
        if not self.ddp or self.resume or isinstance(self.model, nn.Module):
            return super().train()
        self.setup_model()
        self.model.search_state = {"source": str(self.args.model)}
        # beside Ultralytics' own DDP file, not in save_dir, which 8.4.0 deletes before starting the workers
        (USER_CONFIG_DIR / "DDP").mkdir(parents=True, exist_ok=True)
        fd, handoff = tempfile.mkstemp(prefix="_yolo_dms_", suffix=".pt", dir=USER_CONFIG_DIR / "DDP")
        os.close(fd)
        torch.save({"model": self.model, "train_args": vars(self.args)}, handoff)
        self.args.model = handoff
        try:
            return super().train()
        finally:
            os.remove(handoff)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Stock weight optimizer without the keep ratios, which get their own Adam."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        structure = {id(p) for p in self.supernet.structure_parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in structure]
        settings = self.supernet.dms_settings
        self.latency_backend = latency_backend(settings.latency_backend, self.device)
        self.resources = resource_model(self.supernet, self.args.imgsz, settings.resource, self.latency_backend,
                                        refresh=settings.latency_refresh and RANK == -1)  # DDP: the parent measured
        self.structure = StructureStep(
            self.supernet,
            self.resources,
            settings.structure_lr or 0.0,
            settings.resource_weight,
            settings.resource,
            settings.structure_optimizer,
        )
        return optimizer

    def _setup_train(self):
        """Stock set-up (which builds the resource model with the optimizer), then the budget and the search log."""
        super()._setup_train()
        self.settings = self.supernet.dms_settings
        smallest, self.full, self.budget = resolve_budget(self.supernet, self.resources, self.settings)
        self.follow_run_length()
        if RANK in {-1, 0}:
            every = math.ceil(self.schedule.total_steps / TRACE_ROWS)
            self.search_log = SearchLog(self.save_dir, self.settings.resource, every=every)
            no_refine = self.schedule.refine_start == self.schedule.total_steps and self.settings.refine
            (LOGGER.warning if no_refine else LOGGER.info)(
                f"{colorstr('DMS:')} supernet {self.describe(self.full)} at imgsz={self.args.imgsz}, budget "
                f"{self.describe(self.budget)} ({self.budget / self.full:.1%}), smallest structure "
                f"{self.describe(smallest)}. {self.describe_schedule()}"
            )

    def follow_run_length(self) -> None:
        """Size the schedule (target, refine start, keep-ratio step size) to the batches the run will train, again
        whenever Ultralytics changes them: a batch halved after an out-of-memory error, `time=` re-estimating the
        epochs after each one."""
        total = self.epochs * len(self.train_loader)
        if self.schedule and self.schedule.total_steps == total:
            return
        moved = self.schedule is not None
        self.schedule = SearchSchedule(total, self.full, self.budget, self.settings.target_schedule, self.settings.refine)
        auto = self.settings.structure_lr is None
        self.structure_lr = self.schedule.auto_structure_lr() if auto else self.settings.structure_lr
        if moved and RANK in {-1, 0}:
            LOGGER.info(f"{colorstr('DMS:')} the run's length changed; {self.describe_schedule()}")

    def describe_schedule(self) -> str:
        """The schedule in words, for the log."""
        schedule, lr = self.schedule, self.structure_lr
        refine = schedule.total_steps - schedule.refine_start
        return (
            f"{schedule.total_steps} batches: the target reaches the budget after {schedule.schedule_steps}, one "
            f"structure step per batch (keep-ratio lr {lr:.3g} decaying to {lr * FINAL_LR_FACTOR:.3g}"
            f"{', auto' if self.settings.structure_lr is None else ''}), then "
            + (f"{refine} batches at the fitted, frozen structure" if refine else
               f"no refine phase: refine={self.settings.refine:g} of {schedule.total_steps} batches is less than "
               f"one batch, so pruned.pt is fitted after the last batch and never trained at its structure (more "
               f"epochs or a smaller batch give it one)" if self.settings.refine else "no refine phase (refine=0)")
        )

    def resume_training(self, ckpt):
        """Stock resume, plus the structure optimizer, gradient norm and search clock saved with the supernet."""
        super().resume_training(ckpt)
        state = getattr(self.supernet, "search_state", None)
        if self.resume and state:
            self.restore_search_state(state)

    def restore_search_state(self, state: dict) -> None:
        """The structure step's optimizer and gradient norm, the fit, and whether the structure is frozen, as saved
        with the supernet (its keep ratios and importance come back with its weights; the clock with the epoch)."""
        self.structure.load_state_dict(state)
        self.fit = state.get("fit", {})
        self.supernet.structure_frozen = bool(self.fit)

    def _handle_nan_recovery(self, epoch):
        """Stock recovery from a non-finite loss reloads last.pt's weights and masks; the search state follows."""
        recovered = super()._handle_nan_recovery(epoch)
        if recovered:
            supernet, _ = load_search_checkpoint(self.last, "NaN recovery reloads the search's own last.pt")
            self.restore_search_state(supernet.search_state)
        return recovered

    # ------------------------------------------------------------------------------------------ search step
    def current_target(self) -> float:
        """Scheduled target (in the budget's unit) at this point of the run."""
        return self.schedule.target(self.search_iteration)

    @property
    def loss_scale(self) -> float | torch.Tensor:
        """The factor AMP multiplies the loss by before backward (1 without AMP), read without waiting for the
        device: the scaler's own scale tensor, which its `update` changes in place after each weight step (its
        initial float before the first step). `GradScaler.get_scale()` would synchronize on every read."""
        if not self.scaler.is_enabled():
            return 1.0
        scale = self.scaler._get_scale_async()
        return self.scaler.get_scale() if scale is None else scale

    def preprocess_batch(self, batch):
        """Stock preprocessing; importance learns the AMP loss scale the coming backward pass will carry."""
        self.supernet.grad_scale = self.loss_scale
        return super().preprocess_batch(batch)

    def optimizer_step(self):
        """Structure step first (its gradients must not enter the weights' clipping), then the stock weight step."""
        self.structure_step()
        super().optimizer_step()

    def structure_step(self) -> None:
        """One structure update from this batch's gradients; skipped when AMP gradients overflowed.

        Runs every batch: from `optimizer_step` on batches where the weights step, else from the batch-end
        callback (a no-op there when the gradients were already used, and in the refine phase).
        """
        if self.frozen or not self.structure.pending():
            return
        target = self.current_target()
        self.structure.set_lr(self.structure_lr * self.schedule.lr_factor(self.search_iteration))
        value, loss, finite = self.structure.step(
            target, self.loss_scale, two_sided=self.schedule.holding(self.search_iteration)
        )
        if self.search_log:  # device tensors, read in a batch by the log (a skipped step leaves no row)
            self.search_log.record(self.search_iteration, self.epoch, value, target, loss, valid=finite)

    def freeze_structure(self) -> None:
        """Fit the structure under the budget and fix it: from here on the weights train the exported structure."""
        self.fit_structure()
        self.supernet.structure_frozen = True

    # ---------------------------------------------------------------------------------------- epoch and end
    def validate(self):
        """Validate the EMA weights at the live structure; without a refine phase, fit the structure before the
        last validation, so it validates what is exported."""
        if self.epoch + 1 >= self.epochs and not self.frozen:
            self.fit_structure()
        if self.ema:
            sync_structure(self.supernet, self.ema.ema)
        metrics, fitness = super().validate()
        if not self.frozen:  # best.pt is the best model at the exported structure: none before it is fixed
            self.best_fitness = None
        return metrics, fitness

    def fit_structure(self, supernet: Supernet | None = None, resources: ResourceModel | None = None) -> None:
        """Scale the keep ratios of `supernet` (the live one by default, on `resources`) by the common factor that
        brings them just under the budget (`budget.fit_structure`, the rule of every fit), record it in `self.fit`
        for search.json and checkpoints, and say what it did."""
        live = supernet is None
        if live:
            supernet, resources = self.supernet, self.resources
        fit = fit_structure(supernet, resources, self.budget, self.settings.resource)
        if live:
            broadcast_keep_ratios(supernet)  # rank 0's fit for all (measured latency differs between ranks)
        self.fit = {**fit.record(), "iteration": self.search_iteration}
        if RANK in {-1, 0}:
            fit.log()

    def save_metrics(self, metrics):
        """Stock results.csv row plus the search's columns: GFLOPs, parameters, target (in the resource's file unit,
        as search.csv: GFLOPs, parameters, ms), resource loss, depth per stage."""
        target = self.current_target()
        extra = {
            "dms/GFLOPs": hard_gflops(self.resources),
            "dms/params": hard_figure(self.resources, "params") * 1e6,
            "dms/target": UNITS[self.settings.resource].absolute(target),
            "dms/resource_loss": self.search_log.end_epoch(),
            **structure_columns(self.supernet),
        }
        LOGGER.info(
            f"{colorstr('DMS:')} epoch {self.epoch + 1}: "
            f"{self.describe(hard_figure(self.resources, self.settings.resource))}"
            f" (target {self.describe(target)}, budget {self.describe(self.budget)}), mean resource loss "
            f"{extra['dms/resource_loss']:.4f}"
        )
        super().save_metrics({**metrics, **extra})

    def save_model(self):
        """Stock last.pt, written atomically, whose EMA supernet carries the search state and settings; best.pt is
        the pruned model (a stock checkpoint) at the best fitness since the structure was fixed.

        Ultralytics writes its checkpoints in place; last.pt is written under a temporary name and renamed, so a
        kill during the write leaves the previous checkpoint intact (and a temporary file a kill left behind is
        never renamed over one). The supernet Ultralytics would write as best.pt is dropped.
        """
        ema = self.ema.ema
        sync_structure(self.supernet, ema)
        ema.dms_settings = self.settings
        ema.search_state = {**self.structure.state_dict(), "fit": self.fit, "source": self.search_source(),
                            "total_iterations": self.schedule.total_steps, "structure_lr": self.structure_lr}
        last, best = self.last, self.best
        self.last, self.best = (path.with_name(f".{path.name}.tmp") for path in (last, best))
        for path in (self.last, self.best):
            path.unlink(missing_ok=True)
        try:
            saved = super().save_model()
        finally:
            self.best.unlink(missing_ok=True)
            if self.last.exists():
                os.replace(self.last, last)
            self.last, self.best = last, best
        if self.frozen and self.best_fitness == self.fitness:
            self.write_pruned(ema, best)
        return saved

    def write_pruned(self, supernet: Supernet, path: Path) -> None:
        """`supernet` at its hard structure as a stock checkpoint: what best.pt and pruned.pt hold."""
        write_checkpoint(prune(as_stored(supernet)), path, {"imgsz": self.args.imgsz})

    def final_eval(self):
        """Export from the last EMA weights, validate `pruned.pt` with the stock validator, and say what was found.

        As in stock `final_eval`, rank 0 writes while the other ranks wait, then every rank validates: the
        validator synchronizes the ranks, so a rank that skipped it would leave rank 0 waiting forever.
        """
        weights = self.save_dir / "pruned.pt"
        with torch_distributed_zero_first(LOCAL_RANK):
            if RANK in {-1, 0}:
                self.export()
        self.validator.args.plots = self.args.plots
        metrics = self.validator(model=str(weights))
        if RANK not in {-1, 0}:
            return
        result, latency = self.export_result, self.summary.get("latency", {})
        self.metrics = {  # what loggers get: pruned.pt's metrics and the DMS figures (the budget as search.json's)
            **{k: v for k, v in metrics.items() if k != "fitness"},
            "dms/budget": UNITS[self.settings.resource].absolute(self.budget),
            "dms/GFLOPs": result.gflops,
            "dms/params": self.summary["final"]["params"],  # as deployed, as search.json's
            "dms/fit_factor": self.fit.get("factor", 1.0),
        }
        self.epoch += 1  # as stock final_eval: logger integrations record the final figures at step epochs + 1
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1
        LOGGER.info(
            f"\n{colorstr('DMS search done:')} {result.gflops:.4g} GFLOPs at imgsz={self.args.imgsz}, "
            f"{self.metrics['dms/params']:,} parameters{figures_line(self.summary['final'])} "
            f"(budget {self.describe(self.budget)}, supernet {self.describe(self.full)}), "
            f"{metrics_line(self.metrics)} (pruned.pt, stock validator)\n"
            f"pruned.pt and searched.yaml are taken from the last EMA weights (epoch {self.epoch + 1}).\n"
            f"Retrain from scratch:  yolo train model={q(result.yaml_path)} data={q(self.args.data)}\n"
            f"Fine-tune:             yolo train model={q(result.weights_path)} data={q(self.args.data)}\n"
            + (  # a teacher must know the data: the starting .pt if trained on its classes, else a fine-tune of it
                f"Fine-tune, distilled:  yolo train model={q(result.weights_path)} data={q(self.args.data)} "
                f"distill_model={q(self.search_source())}\n"
                if is_checkpoint(self.search_source()) and trained_on(self.search_source(), self.data["names"])
                else f"Fine-tune, distilled:  train the teacher first, the unpruned model on this data: yolo train "
                f"model={q(self.search_source())} data={q(self.args.data)} epochs={self.epochs}; then yolo train "
                f"model={q(result.weights_path)} data={q(self.args.data)} distill_model=<that run's weights/last.pt>\n"
            )
            + f"Export:                yolo export model={q(result.weights_path)} format=onnx"
            + (f"\nONNX, as timed:        {self.save_dir / latency['onnx']}" if "onnx" in latency else "")
        )
        if latency.get("over_budget"):  # said when measured; said again where the log ends
            LOGGER.warning(latency_line(latency))

    def describe(self, value: float) -> str:
        """A figure in the budget's unit, in words."""
        return describe(value, self.settings.resource)

    def export(self) -> None:
        """Strip last.pt, write searched.yaml, pruned.pt, search.json and the plots from the last EMA weights, in
        the half precision last.pt stores them (so `yolo-dms export` of last.pt writes this pruned.pt again)."""
        if self.last.exists():
            strip_optimizer(self.last)
        supernet = as_stored(self.ema.ema)
        resources = same_resources(self.resources, supernet)
        if not self.fit:  # stopped before any fit (early stop, time=): fitted now by the same rule, and said so
            self.fit_structure(supernet, resources)
            sync_structure(supernet, self.supernet)  # the live structure is the exported one
        self.export_result = result = export_searched(supernet, self.save_dir, self.args.imgsz)
        if not self.best.exists():  # not validated since the structure was fixed: the best model is the last
            shutil.copyfile(result.weights_path, self.best)
        self.summary = write_search_outputs(self.save_dir, supernet, resources, self.settings, self.budget, result,
                                            self.fit, self.search_source(), self.schedule.total_steps,
                                            self.structure_lr)

    def search_source(self) -> str:
        """The model the search started from (a trained `.pt` is the natural teacher for distillation)."""
        state = getattr(self.supernet, "search_state", None) or {}
        return state.get("source") or str(self.args.model)

    @classmethod
    def configured(cls, **settings) -> type[SearchTrainer]:
        """This trainer bound to DMS settings, for `YOLO(model).train(trainer=DMSTrainer.configured(target=0.5),
        data=..., epochs=...)`: Ultralytics takes a trainer class and refuses keys it does not know, so the settings
        travel in the class. The search's defaults for train arguments (`project=dms`, `name=search`, `patience`)
        apply under the caller's, as in `yolo-dms search`; a bad setting raises `DMSError` here."""
        bound, search_defaults = SearchSettings.from_arguments(settings), load_defaults()["train"]

        class ConfiguredDMSTrainer(cls):
            def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, settings=None):
                super().__init__(cfg, {**search_defaults, **(overrides or {})}, _callbacks, settings or bound)

        return ConfiguredDMSTrainer


def q(path) -> str:
    """A path as a shell word, so a printed command works when pasted (spaces and all)."""
    return shlex.quote(str(path))


def figures_line(final: dict) -> str:
    """Where the final figures are the fused model's (YOLO26), which they are and pruned.pt's as saved beside them;
    nothing where the two are the same."""
    if final.get("counted_as") != FUSED:
        return ""
    return (f" ({final['counted_as']}; pruned.pt as saved: {final['gflops_training_graph']:.4g} GFLOPs, "
            f"{final['params_training_graph']:,} parameters)")


def metrics_line(metrics: dict) -> str:
    """A task's validation metrics in one line (mAP50-95(B) and (M) for segmentation, top-1 accuracy, ...)."""
    return ", ".join(f"{k.removeprefix('metrics/')} {v:.4f}" for k, v in metrics.items() if k.startswith("metrics/"))


class DMSTrainer(SearchTrainer, DetectionTrainer):
    """DMS search of a detection model."""


class DMSSegmentationTrainer(SearchTrainer, SegmentationTrainer):
    """DMS search of an instance segmentation model."""


class DMSPoseTrainer(SearchTrainer, PoseTrainer):
    """DMS search of a pose model."""


class DMSOBBTrainer(SearchTrainer, OBBTrainer):
    """DMS search of an oriented-box model."""


class DMSClassificationTrainer(SearchTrainer, ClassificationTrainer):
    """DMS search of a classification model."""


TRAINERS: dict[str, type[SearchTrainer]] = {
    "detect": DMSTrainer,
    "segment": DMSSegmentationTrainer,
    "pose": DMSPoseTrainer,
    "obb": DMSOBBTrainer,
    "classify": DMSClassificationTrainer,
}


def trainer_for(task: str) -> type[SearchTrainer]:
    """The search trainer of a model's task, as `yolo train` picks its trainer."""
    return TRAINERS[task]
