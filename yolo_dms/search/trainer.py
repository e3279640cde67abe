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

import os
import shlex
import shutil
import tempfile
from contextlib import contextmanager

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

from yolo_dms.core.errors import DMSError
from yolo_dms.core.latency import latency_line
from yolo_dms.core.model_io import (
    is_checkpoint,
    load_search_checkpoint,
    trained_on,
    with_stock_class_branch,
    write_checkpoint,
)
from yolo_dms.core.prune import prune
from yolo_dms.core.resource_registry import RESOURCES
from yolo_dms.core.resources import FUSED
from yolo_dms.core.supernet import Supernet
from yolo_dms.core.tasks import DISTILLATION, TASKS
from yolo_dms.search.session import SearchSession, as_stored, sync_structure, wrap_supernet
from yolo_dms.search.settings import SearchSettings, load_defaults


def _begin_epoch(trainer: SearchTrainer) -> None:
    """Callback: the search clock restarts at the epoch's first batch, and the schedule follows the run's length."""
    batches = len(trainer.train_loader)
    if trainer.session.begin_epoch(trainer.epoch, batches, trainer.epochs * batches) and RANK in {-1, 0}:
        LOGGER.info(f"{colorstr('DMS:')} the run's length changed; {trainer.session.describe_schedule()}")


def _begin_batch(trainer: SearchTrainer) -> None:
    """Callback: advance the search clock (entering the refine phase when due)."""
    trainer.session.begin_batch(trainer.loss_scale)


def _end_batch(trainer: SearchTrainer) -> None:
    """Callback: the structure step of a batch whose weights did not step (gradient accumulation)."""
    trainer.session.end_batch(trainer.loss_scale, trainer.epoch)


def _fit_before_last_validation(trainer: SearchTrainer) -> None:
    """Callback: a run too short for a refine phase fits its structure before the last validation, so that
    validation scores what is exported."""
    if trainer.epoch + 1 >= trainer.epochs and not trainer.session.frozen:
        trainer.session.fit_structure()


CALLBACKS = {
    "on_train_epoch_start": _begin_epoch,
    "on_train_batch_start": _begin_batch,
    "on_train_batch_end": _end_batch,
    "on_train_epoch_end": _fit_before_last_validation,
}


# fine-tuning pruned.pt at a tenth of the search's weight rate: +2.2 mAP50-95 for the searched model on the
# trees, +0.7 on the fashion set, against stock fine-tuning's full rate (docs/BENCHMARKS.md, "The hand-off")
FINETUNE_RATE = 0.1

UNSUPPORTED = {  # train arguments the search refuses, and what to do instead
    "distill_model": "distillation belongs to fine-tuning: search without it, then "
    "'yolo train model=<run>/pruned.pt distill_model=<teacher.pt>'",
    "compile": "torch.compile would recompile the supernet as its masks change every step: search without it, "
    "then fine-tune pruned.pt with compile=True",
}


def refuse_unsupported(args) -> None:
    """One line for a train argument the search cannot honour, before anything is written."""
    for key, instead in UNSUPPORTED.items():
        if getattr(args, key, None):
            raise DMSError(f"{key}= is not supported during the search; {instead}")


@contextmanager
def atomic_checkpoints(trainer: SearchTrainer):
    """Within it, stock `save_model` writes last.pt under a temporary name, renamed over last.pt at the end (a
    kill during the write leaves the previous checkpoint intact; a temporary file a kill left behind is never
    renamed over one); the supernet it would write as best.pt is dropped (best.pt is the pruned model)."""
    last, best = trainer.last, trainer.best
    trainer.last, trainer.best = (path.with_name(f".{path.name}.tmp") for path in (last, best))
    for path in (trainer.last, trainer.best):
        path.unlink(missing_ok=True)
    try:
        yield
    finally:
        trainer.best.unlink(missing_ok=True)
        if trainer.last.exists():
            os.replace(trainer.last, last)
        trainer.last, trainer.best = last, best


class SearchTrainer:
    """Differentiable Model Scaling search, mixed in ahead of an Ultralytics task trainer (see the task trainers
    at the end of this module). What the search adds lives in `self.session`; each hook here calls the stock
    hook and the session."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, settings: SearchSettings | None = None,
                 session: SearchSession | None = None):
        train_args = {k: v for k, v in (overrides or {}).items() if k != "session"}  # 8.4.0's Model.train adds it
        refuse_unsupported(get_cfg(cfg, train_args))
        super().__init__(cfg, overrides, _callbacks)
        self.settings = settings  # of a new supernet; None: taken from the supernet (resume, DDP workers)
        self.session = session or SearchSession()  # prepared by the preflight, or here at the start
        for event, callback in CALLBACKS.items():
            if callback not in self.callbacks[event]:  # DDP workers inherit the parent's callbacks
                self.add_callback(event, callback)

    @property
    def supernet(self) -> Supernet:
        return unwrap_model(self.model)

    # ------------------------------------------------------------------------------------------------ set-up
    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> Supernet:
        """Stock model from `cfg` (and pretrained weights), wrapped as a supernet; a search checkpoint resumes.

        Every class-count-dependent width is the data's, as `yolo train` builds it (`Detect`'s class branch is
        kept at a checkpoint's width only where pruning can bring it to what exported YAMLs rebuild).
        """
        if isinstance(weights, Supernet):  # the layers the search had (stock loading shapes the head alike)
            supernet = wrap_supernet(super().get_model(cfg, weights, verbose), weights.dms_settings)
            supernet.load_state_dict(weights.float().state_dict())
            supernet.search_state = getattr(weights, "search_state", {})
            return supernet
        model = super().get_model(cfg, weights, verbose)
        if weights is not None:  # a checkpoint of another class count: a class branch exported YAMLs can rebuild
            model = with_stock_class_branch(model, super().get_model(cfg, None, verbose=False))
        return wrap_supernet(model, self.settings or SearchSettings())

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
        """Stock weight optimizer without the keep ratios, which the session's structure step optimizes."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        structure = {id(p) for p in self.supernet.structure_parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in structure]
        return optimizer

    def finetune_arguments(self) -> dict[str, object]:
        """`yolo train` arguments for fine-tuning pruned.pt: the search's weight optimizer at `FINETUNE_RATE` of
        its rate. Its weights are already trained at the exported structure; a stock fine-tune restarts at
        optimizer=auto's full rate and undoes part of that (docs/BENCHMARKS.md, "The hand-off").

        Read from the optimizer as optimizer=auto resolved it (8.4.0 leaves args at "auto"): its class and base
        rate, the groups' `initial_lr` that the warmup also reads (MuSGD gives some groups 3x the base rate)."""
        if getattr(self, "optimizer", None) is None:
            return {}
        rate = min(group["initial_lr"] for group in self.optimizer.param_groups)
        return {"optimizer": type(self.optimizer).__name__, "lr0": float(f"{rate * FINETUNE_RATE:.3g}")}

    def _setup_train(self):
        """Stock set-up, then the search starts on the model on its device (a resumed one where it stopped)."""
        super()._setup_train()
        refresh = self.supernet.dms_settings.latency_refresh and RANK == -1  # DDP: the parent measured
        self.session.start(self.supernet, self.args.imgsz, self.device, self.epochs * len(self.train_loader), refresh)
        state = getattr(self.supernet, "search_state", None)
        if self.resume and state:
            self.session.load_state(state)
        if RANK in {-1, 0}:
            plan = self.session.open_log(self.save_dir)
            (LOGGER.warning if self.session.without_refine else LOGGER.info)(f"{colorstr('DMS:')} {plan}")

    def _handle_nan_recovery(self, epoch):
        """Stock recovery from a non-finite loss reloads last.pt's weights and masks; the search state follows."""
        recovered = super()._handle_nan_recovery(epoch)
        if recovered:
            supernet, _ = load_search_checkpoint(self.last, "NaN recovery reloads the search's own last.pt")
            self.session.load_state(supernet.search_state)
        return recovered

    # ------------------------------------------------------------------------------------------ search step
    @property
    def loss_scale(self) -> float | torch.Tensor:
        """The factor AMP multiplies the loss by before backward (1 without AMP), read without waiting for the
        device: the scaler's own scale tensor, which its `update` changes in place after each weight step (its
        initial float before the first step). `GradScaler.get_scale()` would synchronize on every read."""
        if not self.scaler.is_enabled():
            return 1.0
        scale = self.scaler._get_scale_async()
        return self.scaler.get_scale() if scale is None else scale

    def optimizer_step(self):
        """Structure step first (its gradients must not enter the weights' clipping), then the stock weight step."""
        self.session.step(self.loss_scale, self.epoch)
        super().optimizer_step()

    # ---------------------------------------------------------------------------------------- epoch and end
    def validate(self):
        """Validate the EMA weights at the live structure; best.pt waits until the structure is fixed."""
        if self.ema:
            sync_structure(self.supernet, self.ema.ema)
        metrics, fitness = super().validate()
        if not self.session.frozen:  # best.pt is the best model at the exported structure: none before it is fixed
            self.best_fitness = None
        return metrics, fitness

    def save_metrics(self, metrics):
        """Stock results.csv row plus the search's columns (`SearchSession.epoch_columns`)."""
        columns = self.session.epoch_columns()
        LOGGER.info(f"{colorstr('DMS:')} {self.session.epoch_line(self.epoch, columns)}")
        super().save_metrics({**metrics, **columns})

    def save_model(self):
        """Stock last.pt, written atomically, whose EMA supernet carries the search state and settings; best.pt is
        the pruned model (a stock checkpoint) at the best fitness since the structure was fixed."""
        ema = self.ema.ema
        sync_structure(self.supernet, ema)
        ema.dms_settings = self.session.settings
        ema.search_state = self.session.checkpoint_state(self.search_source())
        with atomic_checkpoints(self):
            saved = super().save_model()
        if self.session.frozen and self.best_fitness == self.fitness:
            write_checkpoint(prune(as_stored(ema)), self.best, {"imgsz": self.args.imgsz})
        return saved

    def final_eval(self):
        """Export from the last EMA weights, validate `pruned.pt` with the stock validator, and say what was found.

        As in stock `final_eval`, rank 0 writes while the other ranks wait, then every rank validates: the
        validator synchronizes the ranks, so a rank that skipped it would leave rank 0 waiting forever.
        """
        with torch_distributed_zero_first(LOCAL_RANK):
            if RANK in {-1, 0}:
                self.export()
        self.validator.args.plots = self.args.plots
        metrics = self.validator(model=str(self.save_dir / "pruned.pt"))
        if RANK not in {-1, 0}:
            return
        self.metrics = {**{k: v for k, v in metrics.items() if k != "fitness"}, **self.final_figures()}
        self.epoch += 1  # as stock final_eval: logger integrations record the final figures at step epochs + 1
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1
        LOGGER.info(search_done(self))
        latency = self.session.summary.get("latency", {})
        if latency.get("over_budget"):  # said when measured; said again where the log ends
            LOGGER.warning(latency_line(latency))

    def final_figures(self) -> dict[str, float]:
        """What loggers get beside pruned.pt's metrics: the DMS figures (the budget and parameters as search.json's)."""
        session = self.session
        return {
            "dms/budget": RESOURCES[session.settings.resource].absolute(session.budget),
            "dms/GFLOPs": session.export_result.gflops,
            "dms/params": session.summary["final"]["params"],  # as deployed
            "dms/fit_factor": session.fit.get("factor", 1.0),
        }

    def export(self) -> None:
        """Strip last.pt and write searched.yaml, pruned.pt, search.json and the plots (`SearchSession.export`);
        best.pt is pruned.pt when nothing was validated since the structure was fixed."""
        if self.last.exists():
            strip_optimizer(self.last)
        result = self.session.export(self.ema.ema, self.save_dir, self.args.imgsz, self.search_source(),
                                     self.finetune_arguments())
        if not self.best.exists():
            shutil.copyfile(result.weights_path, self.best)

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
            def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, settings=None, session=None):
                super().__init__(cfg, {**search_defaults, **(overrides or {})}, _callbacks, settings or bound, session)

        return ConfiguredDMSTrainer


def search_done(trainer: SearchTrainer) -> str:
    """The search's closing lines: what was found, pruned.pt's metrics, and the commands that come next."""
    session, result, data = trainer.session, trainer.session.export_result, q(trainer.args.data)
    metrics, source = trainer.metrics, trainer.search_source()
    weights = q(result.weights_path)
    latency = session.summary.get("latency", {})
    finetune = "".join(f" {key}={value}" for key, value in (session.summary.get("finetune") or {}).items())
    if is_checkpoint(source) and trained_on(source, trainer.data["names"]):  # a teacher must know the data
        distilled = f"yolo train model={weights} data={data}{finetune} distill_model={q(source)}"
    else:
        distilled = (f"train the teacher first, the unpruned model on this data: yolo train model={q(source)} "
                     f"data={data} epochs={trainer.epochs}; then yolo train model={weights} data={data}{finetune} "
                     f"distill_model=<that run's weights/last.pt>")
    return (
        f"\n{colorstr('DMS search done:')} {result.gflops:.4g} GFLOPs at imgsz={trainer.args.imgsz}, "
        f"{metrics['dms/params']:,} parameters{figures_line(session.summary['final'])} "
        f"(budget {session.describe(session.budget)}, supernet {session.describe(session.full)}), "
        f"{metrics_line(metrics)} (pruned.pt, stock validator)\n"
        f"pruned.pt and searched.yaml are taken from the last EMA weights (epoch {trainer.epoch + 1}).\n"
        f"Fine-tune:             yolo train model={weights} data={data}{finetune}\n"
        + (f"Fine-tune, distilled:  {distilled}\n" if DISTILLATION else "")
        + f"Retrain from scratch:  yolo train model={q(result.yaml_path)} data={data}\n"
        + f"Export:                yolo export model={weights} format=onnx"
        + (f"\nONNX, as timed:        {trainer.save_dir / latency['onnx']}" if "onnx" in latency else "")
    )


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


def trainer_for(task: str) -> type[SearchTrainer]:
    """The search trainer over the stock trainer the task table names for `task`, as `yolo train` picks it."""
    return next(t for t in SearchTrainer.__subclasses__() if TASKS[task].trainer in t.__bases__)
