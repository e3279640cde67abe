"""`DMSTrainer`: Ultralytics' `DetectionTrainer` that trains a supernet's weights and structure together.

Everything is stock Ultralytics (data, augmentation, loss, AMP, warmup, schedulers, EMA, validation,
checkpoints, callbacks, resume) except:

- the model is a `Supernet` carrying its `SearchSettings`, so resume and DDP workers rebuild it as it was;
- keep ratios leave the weight optimizer for their own Adam, with no weight decay;
- each optimizer step updates the keep ratios with the task gradient plus the balanced resource-loss
  gradient (`objective.StructureStep`); the target falls from the supernet's GFLOPs to the budget over the
  first `target_schedule` of the run, as
  `full * (budget / full) ** progress` (the DMS reference's "root" schedule), then holds;
- EMA copies structure (keep ratios, importance) from the live model instead of averaging it;
- validation runs on hard masks, so its mAP is the mAP of the model pruned at that point; before the last
  validation the structure is fitted under the budget, and the run ends by exporting `searched.yaml` and
  `pruned.pt` from the last EMA weights and validating `pruned.pt` with the stock validator.
"""

from __future__ import annotations

import math
import os
from copy import deepcopy

from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import strip_optimizer, unwrap_model

from yolo_dms.budget import fit_to_budget, hard_gflops, resolve_budget
from yolo_dms.export import ExportResult, export_searched
from yolo_dms.objective import StructureStep
from yolo_dms.resources import ResourceModel
from yolo_dms.search_log import SearchLog, plot_search, plot_structure, structure_columns
from yolo_dms.settings import SearchSettings
from yolo_dms.supernet import Supernet

TRACE_ROWS = 2000  # search.csv keeps about this many steps, however long the run


def sync_structure(source: Supernet, target: Supernet) -> None:
    """Give `target` (the EMA model) exactly the live structure: keep ratios and importance are copied."""
    target.masks.load_state_dict(source.masks.state_dict())


def _count_batch(trainer: DMSTrainer) -> None:
    """Callback: advance the search clock by one batch."""
    trainer.search_iteration += 1


class DMSTrainer(DetectionTrainer):
    """Differentiable Model Scaling search as an Ultralytics detection trainer."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, settings: SearchSettings | None = None):
        super().__init__(cfg, overrides, _callbacks)
        self.settings = settings  # None: taken from the supernet (resume, DDP workers)
        self.search_iteration = 0
        self.structure: StructureStep | None = None
        self.resources: ResourceModel | None = None
        self.search_log: SearchLog | None = None
        self.export_result: ExportResult | None = None
        self.add_callback("on_train_batch_start", _count_batch)

    @property
    def supernet(self) -> Supernet:
        return unwrap_model(self.model)

    # ------------------------------------------------------------------------------------------------ set-up
    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> Supernet:
        """Stock model from `cfg` (and pretrained weights), wrapped as a supernet; a search checkpoint resumes."""
        if isinstance(weights, Supernet):
            supernet = self.wrap(super().get_model(cfg, None, verbose), weights.dms_settings)
            supernet.load_state_dict(weights.float().state_dict())
            supernet.search_state = getattr(weights, "search_state", {})
            return supernet
        return self.wrap(super().get_model(cfg, weights, verbose), self.settings or SearchSettings())

    @staticmethod
    def wrap(model, settings: SearchSettings) -> Supernet:
        """A supernet over `model` with the mask settings of `settings`, which it carries along."""
        supernet = Supernet(
            model, lam=settings.width_lam, depth_lam=settings.depth_lam, decay=settings.importance_decay
        )
        supernet.dms_settings = settings
        return supernet

    def train(self):
        """Multi-GPU: build the supernet before Ultralytics pickles the model for its DDP workers.

        The workers are re-created from default arguments and that pickled model, so the settings must travel
        inside the supernet (a resumed search reads them from its checkpoint instead).
        """
        if self.ddp and not self.resume and not isinstance(self.model, nn.Module):
            self.setup_model()
        return super().train()

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Stock weight optimizer without the keep ratios, which get their own Adam."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        structure = {id(p) for p in self.supernet.structure_parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in structure]
        settings = self.supernet.dms_settings
        self.resources = ResourceModel(self.supernet, self.args.imgsz)
        self.structure = StructureStep(self.supernet, self.resources, settings.structure_lr, settings.resource_weight)
        return optimizer

    def _setup_train(self):
        """Stock set-up (which builds the resource model with the optimizer), then the budget and the search log."""
        super()._setup_train()
        self.settings = self.supernet.dms_settings
        smallest, self.full_gflops, self.budget = resolve_budget(self.supernet, self.resources, self.settings)
        total_steps = self.epochs * len(self.train_loader)
        if RANK in {-1, 0}:
            self.search_log = SearchLog(self.save_dir, every=math.ceil(total_steps / TRACE_ROWS))
            LOGGER.info(
                f"{colorstr('DMS:')} supernet {self.full_gflops:.4g} GFLOPs at imgsz={self.args.imgsz}, budget "
                f"{self.budget:.4g} GFLOPs ({self.budget / self.full_gflops:.1%}) reached after "
                f"{self.settings.target_schedule:.0%} of the run; smallest structure {smallest:.4g} GFLOPs"
            )

    def resume_training(self, ckpt):
        """Stock resume, plus the structure optimizer, gradient norm and search clock saved with the supernet."""
        super().resume_training(ckpt)
        state = getattr(self.supernet, "search_state", None)
        if self.resume and state:
            self.structure.load_state_dict(state)
            self.search_iteration = self.start_epoch * len(self.train_loader)

    # ------------------------------------------------------------------------------------------ search step
    def current_target(self) -> float:
        """Scheduled GFLOPs target at this point of the run."""
        progress = self.search_iteration / max(1, self.epochs * len(self.train_loader))
        fraction = min(1.0, progress / self.settings.target_schedule)
        return self.full_gflops * (self.budget / self.full_gflops) ** fraction

    def optimizer_step(self):
        """Structure step (task + resource gradient on keep ratios), then the stock weight step and EMA."""
        self.structure_step()
        super().optimizer_step()
        if self.ema:
            sync_structure(self.supernet, self.ema.ema)

    def structure_step(self) -> None:
        """One structure update; skipped, like the weight step, when AMP gradients overflowed."""
        target = self.current_target()
        result = self.structure.step(target, self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
        if result and self.search_log:
            self.search_log.record(self.search_iteration, self.epoch, result[0], target, result[1])

    # ---------------------------------------------------------------------------------------- epoch and end
    def validate(self):
        """Before the last validation, fit the structure under the budget, so it validates what is exported."""
        if self.epoch + 1 >= self.epochs:
            self.fit_structure()
        return super().validate()

    def fit_structure(self) -> None:
        """Scale the live (and EMA) keep ratios by the common factor that brings them just under the budget."""
        before = hard_gflops(self.resources)
        factor = fit_to_budget(self.supernet, self.resources, self.budget)
        if self.ema:
            sync_structure(self.supernet, self.ema.ema)
        if RANK in {-1, 0}:
            LOGGER.info(
                f"{colorstr('DMS:')} structure at {before:.4g} GFLOPs fitted to the budget {self.budget:.4g}: keep "
                f"ratios scaled by {factor:.4f}, now {hard_gflops(self.resources):.4g} GFLOPs"
            )

    def save_metrics(self, metrics):
        """Stock results.csv row plus the search's columns: GFLOPs, target, resource loss, depth per stage."""
        extra = {
            "dms/GFLOPs": hard_gflops(self.resources),
            "dms/target": self.current_target(),
            "dms/resource_loss": self.search_log.end_epoch(),
            **structure_columns(self.supernet),
        }
        LOGGER.info(
            f"{colorstr('DMS:')} epoch {self.epoch + 1}: {extra['dms/GFLOPs']:.4g} GFLOPs (target "
            f"{extra['dms/target']:.4g}, budget {self.budget:.4g}), mean resource loss {extra['dms/resource_loss']:.4f}"
        )
        super().save_metrics({**metrics, **extra})

    def save_model(self):
        """Stock checkpoint, written atomically; the EMA supernet carries the structure step's state and settings.

        Ultralytics writes last.pt and best.pt in place; here they are written under temporary names and renamed,
        so a kill during the write leaves the previous checkpoint intact.
        """
        ema = self.ema.ema
        ema.dms_settings = self.settings
        ema.search_state = self.structure.state_dict()
        final = {"last": self.last, "best": self.best}
        for attr, path in final.items():
            setattr(self, attr, path.with_name(f".{path.name}.tmp"))
        try:
            return super().save_model()
        finally:
            for attr, path in final.items():
                if getattr(self, attr).exists():
                    os.replace(getattr(self, attr), path)
                setattr(self, attr, path)

    def final_eval(self):
        """Export from the last EMA weights, validate `pruned.pt` with the stock validator, and say what was found."""
        if RANK not in {-1, 0}:
            return
        if self.last.exists():
            strip_optimizer(self.last)
        supernet = deepcopy(self.ema.ema).float().eval()
        fit_to_budget(supernet, ResourceModel(supernet, self.args.imgsz), self.budget)
        self.export_result = result = export_searched(supernet, self.save_dir, self.args.imgsz)
        plot_structure(supernet, self.save_dir / "structure.png")
        if self.search_log and self.search_log.path.exists():
            plot_search(self.search_log.path, self.save_dir / "search.png", self.budget)
        self.validator.args.plots = self.args.plots
        metrics = self.validator(model=str(result.weights_path))
        self.metrics = {k: v for k, v in metrics.items() if k != "fitness"}
        LOGGER.info(
            f"\n{colorstr('DMS search done:')} {result.gflops:.4g} GFLOPs at imgsz={self.args.imgsz} (budget "
            f"{self.budget:.4g}, supernet {self.full_gflops:.4g}), {result.params:,} parameters, "
            f"mAP50-95 {self.metrics.get('metrics/mAP50-95(B)', float('nan')):.4f} "
            f"mAP50 {self.metrics.get('metrics/mAP50(B)', float('nan')):.4f} (pruned.pt, stock validator)\n"
            f"pruned.pt and searched.yaml are taken from the last EMA weights (epoch {self.epoch + 1}).\n"
            f"Retrain from scratch:  yolo train model={result.yaml_path} data={self.args.data}\n"
            f"Fine-tune:             yolo train model={result.weights_path} data={self.args.data}\n"
            f"Export:                yolo export model={result.weights_path} format=onnx"
        )
