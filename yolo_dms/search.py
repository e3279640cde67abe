"""Running a search from user arguments: split DMS settings from Ultralytics train arguments, check everything
that can be checked before any output is written, then train with `DMSTrainer`."""

from __future__ import annotations

import difflib
from pathlib import Path

from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG_DICT

from yolo_dms.budget import resolve_budget
from yolo_dms.errors import DMSError
from yolo_dms.model_io import load_checkpoint_model, load_detection_model
from yolo_dms.resources import ResourceModel
from yolo_dms.settings import SearchSettings, load_defaults
from yolo_dms.supernet import Supernet
from yolo_dms.trainer import DMSTrainer


class DataError(DMSError):
    """The dataset YAML is missing, malformed, or points at no images."""


def split_arguments(arguments: dict) -> tuple[dict, dict]:
    """(DMS settings, Ultralytics train overrides); unknown keys are refused with Ultralytics' own message."""
    dms = {k: v for k, v in arguments.items() if k in SearchSettings.names()}
    train = {**load_defaults()["train"], **{k: v for k, v in arguments.items() if k not in dms}}
    train["mode"] = "train"
    known = set(DEFAULT_CFG_DICT) | {"save_dir"}
    for key in train:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | SearchSettings.names()), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise DMSError(f"unknown argument '{key}'{hint} (see 'yolo-dms help' and 'yolo cfg')")
    try:
        get_cfg(DEFAULT_CFG_DICT, train)  # validates keys and value types
    except (SyntaxError, TypeError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise DMSError(lines[0] if lines else str(e)) from None
    return dms, train


def check_data(data: str | None) -> dict:
    """The dataset dictionary, or a clear error (a missing file, no images)."""
    from ultralytics.data.utils import check_det_dataset

    if not data:
        raise DataError("search needs data=<dataset.yaml>")
    if str(data).endswith((".yaml", ".yml")) and not Path(data).is_file():
        raise DataError(f"dataset YAML '{data}' does not exist")
    try:
        info = check_det_dataset(data, autodownload=False)
    except Exception as e:  # Ultralytics raises several types for a bad dataset; all mean the same to the user
        raise DataError(f"dataset '{data}' cannot be used: {str(e).strip().splitlines()[0]}") from None
    for split in ("train", "val"):
        paths = info.get(split)
        paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths]) if p]
        if not any(_has_images(p) for p in paths):
            raise DataError(f"dataset '{data}' has no {split} images at {', '.join(map(str, paths))}")
    return info


def _has_images(path: Path) -> bool:
    """An image directory with at least one image, or a non-empty list file."""
    from ultralytics.data.utils import IMG_FORMATS

    if path.is_dir():
        return any(p.suffix[1:].lower() in IMG_FORMATS for p in path.rglob("*"))
    return path.is_file() and path.stat().st_size > 0


def preflight(model: str, nc: int, imgsz: int, settings: SearchSettings) -> tuple[float, float, float]:
    """Check the model and the budget before anything is written; returns (smallest, full, budget) GFLOPs."""
    source = load_detection_model(model) if str(model).endswith(".pt") else None
    if isinstance(source, Supernet):
        raise DMSError(
            f"'{model}' is a search checkpoint; continue it with resume=True or export it with 'yolo-dms export'"
        )
    cfg = source.yaml if source is not None else model
    supernet = Supernet.from_source(DetectionModel(cfg, nc=nc, verbose=False) if source else cfg, nc=nc)
    resources = ResourceModel(supernet, imgsz)
    return resolve_budget(supernet, resources, settings)


def resume_checkpoint(resume) -> Path:
    """The search checkpoint to resume from: an explicit path, or the newest last.pt under runs/dms."""
    if isinstance(resume, str | Path):
        path = Path(resume)
    else:
        project = Path(load_defaults()["train"]["project"])
        candidates = sorted(project.glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise DMSError(f"no search checkpoint to resume under '{project}'; pass resume=path/to/weights/last.pt")
        path = candidates[-1]
    if not path.is_file():
        raise DMSError(f"no search checkpoint to resume at '{path}'")
    if not isinstance(load_checkpoint_model(path), Supernet):
        raise DMSError(f"'{path}' is not a yolo-dms search checkpoint, so there is no search to resume")
    return path


def run_search(arguments: dict) -> DMSTrainer:
    """Search as the CLI does: `arguments` are `yolo-dms search` key=value pairs, already typed."""
    if arguments.get("resume"):
        last = resume_checkpoint(arguments["resume"])
        overrides = {"resume": str(last), "model": str(last)}
        overrides.update({k: v for k, v in arguments.items() if k not in {"resume", "model"}})
        trainer = DMSTrainer(overrides=overrides)
        trainer.train()
        return trainer
    dms, train = split_arguments(arguments)
    settings = SearchSettings.from_arguments(dms)
    if "model" not in train:
        raise DMSError("search needs model=<yaml|pt>, e.g. model=yolov8s.yaml or model=best.pt")
    data = check_data(train.get("data"))
    imgsz = train.get("imgsz", DEFAULT_CFG_DICT["imgsz"])
    preflight(train["model"], data["nc"], imgsz if isinstance(imgsz, int) else max(imgsz), settings)
    trainer = DMSTrainer(overrides=train, settings=settings)
    trainer.train()
    return trainer
