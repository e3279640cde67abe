"""The Python API, in Ultralytics' style: `DMS(model).search(**arguments)` as `YOLO(model).train(**arguments)`.

    from yolo_dms import DMS
    result = DMS("yolov8s.pt").search(data="coco8.yaml", target=0.5, epochs=10)
    result.model.val(data="coco8.yaml")       # a stock YOLO of pruned.pt: .train(), .val(), .export()

A search from Python runs exactly what `yolo-dms search` runs (`yolo_dms.search.run.run_search`), takes the same
arguments as keywords, and raises `DMSError` with the line the command line prints for the same mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ultralytics.utils import callbacks

from yolo_dms.core.errors import DMSError
from yolo_dms.core.model_io import check_model_source
from yolo_dms.search.summary import read_summary, recommended_finetune

if TYPE_CHECKING:
    from ultralytics import YOLO


@dataclass(frozen=True)
class SearchResult:
    """What a finished search wrote and found. Figures come from its `search.json`; `metrics` are the stock
    validator's on `pruned.pt`, with the DMS figures under `dms/` (empty when the search ran in DDP workers)."""

    save_dir: Path
    resource: str  # what the budget counts: gflops, params or latency
    budget: float  # in search.json's budget unit: GFLOPs, parameters or milliseconds
    gflops: float  # of pruned.pt, at the search's imgsz
    params: int
    supernet_gflops: float
    supernet_params: int
    fit_factor: float  # 1.0 when the search itself landed on the budget
    metrics: dict[str, float] = field(default_factory=dict)
    # `yolo train` arguments for fine-tuning pruned.pt, as `result.model.train(data=..., **result.finetune_args)`
    finetune_args: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, save_dir: str | Path, metrics: dict[str, float] | None = None) -> SearchResult:
        """The result of the search whose run directory is `save_dir` (`runs/detect/dms/<name>`)."""
        save_dir = Path(save_dir)
        summary = read_summary(save_dir)
        return cls(
            save_dir=save_dir,
            resource=summary["budget"]["resource"],
            budget=summary["budget"]["value"],
            gflops=summary["final"]["gflops"],
            params=summary["final"]["params"],
            supernet_gflops=summary["supernet"]["gflops"],
            supernet_params=summary["supernet"]["params"],
            fit_factor=summary["fit_factor"],
            metrics=dict(metrics or {}),
            finetune_args=recommended_finetune(summary),
        )

    @property
    def searched_yaml(self) -> Path:
        return self.save_dir / "searched.yaml"

    @property
    def pruned(self) -> Path:
        return self.save_dir / "pruned.pt"

    @property
    def summary(self) -> Path:
        """`search.json`."""
        return self.save_dir / "search.json"

    @property
    def map(self) -> float | None:
        """mAP50-95 of pruned.pt from the search's final validation."""
        return self.metrics.get("metrics/mAP50-95(B)")

    @property
    def map50(self) -> float | None:
        return self.metrics.get("metrics/mAP50(B)")

    @cached_property
    def model(self) -> YOLO:
        """A stock `YOLO` of pruned.pt, ready for `.train()`, `.val()`, `.predict()` and `.export()`."""
        from ultralytics import YOLO

        return YOLO(str(self.pruned))


class DMS:
    """A model to search, as `YOLO(model)` is a model to train.

    `model` is anything `yolo-dms search model=` takes (a YAML or a checkpoint, by file or by name); leave it out
    to resume the newest interrupted search with `DMS().search(resume=True)`.
    """

    def __init__(self, model: str | Path | None = None):
        """A model that cannot be found or read is refused here, as `YOLO(model)` refuses it."""
        self.model = None if model is None else check_model_source(model)
        self.callbacks = callbacks.get_default_callbacks()

    def add_callback(self, event: str, func) -> None:
        """Register an Ultralytics callback (`on_fit_epoch_end`, ...) for the searches this object runs."""
        self.callbacks[event].append(func)

    def search(self, **arguments: Any) -> SearchResult:
        """Search under a budget: every `yolo train` argument and every DMS setting, as keywords (`data=`,
        `epochs=`, `target=`, `gflops=`, `cfg="pretrained-short"`, ...). `resume=True` continues this model's
        search when it is a search's `last.pt`, else the newest one."""
        from yolo_dms.search.run import run_search

        if "model" in arguments:
            raise DMSError("give the model to DMS(model), not to search()")
        arguments = {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}
        if self.model is not None:
            if arguments.get("resume") is True:
                arguments["resume"] = self.model
            else:
                arguments["model"] = self.model
        trainer = run_search(arguments, callbacks=self.callbacks)
        return SearchResult.from_dir(trainer.save_dir, trainer.metrics if isinstance(trainer.metrics, dict) else None)
