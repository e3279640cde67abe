"""Running a search from user arguments: split DMS settings from Ultralytics train arguments, check everything
that can be checked before any output is written, then train with the search trainer of the model's task."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG_DICT

from yolo_dms.core.data import resolve_data
from yolo_dms.core.errors import DMSError, SearchInterrupted, first_line
from yolo_dms.core.imgsz import checked_imgsz, model_stride
from yolo_dms.core.model_io import load_model, load_search_checkpoint, resolve_model
from yolo_dms.core.resource_registry import RESOURCES
from yolo_dms.core.tasks import TASKS, model_task
from yolo_dms.search.preflight import (
    check_device,
    check_labels,
    check_run_directory,
    planned_save_dir,
    prepared_session,
)
from yolo_dms.search.settings import RECIPES_DIR, SearchSettings, load_defaults
from yolo_dms.search.trainer import SearchTrainer, trainer_for


def check_train_arguments(train: dict) -> None:
    """Refuse unknown keys (naming close ones) and badly typed values, with Ultralytics' own type checks."""
    known = set(DEFAULT_CFG_DICT) | {"save_dir"}
    for key in train:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | SearchSettings.names()), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise DMSError(f"unknown argument '{key}'{hint} (see 'yolo-dms help' and 'yolo cfg')")
    try:
        get_cfg(DEFAULT_CFG_DICT, train)
    except (SyntaxError, TypeError, ValueError) as e:
        raise DMSError(first_line(e)) from None


BUDGET_KEYS = {"target", *RESOURCES}


def recipe_names() -> list[str]:
    """The recipes packaged with yolo-dms, by the name `cfg=` takes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(cfg: str | Path) -> Path:
    """`cfg=` as a file, else as the name of a packaged recipe (`pretrained-short`, or `pretrained-short.yaml`)."""
    path = Path(cfg)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{path.stem}.yaml"
    if path.name in {path.stem, packaged.name} and path.parent == Path(".") and packaged.is_file():
        return packaged
    raise DMSError(f"cfg '{cfg}' is neither a file nor a packaged recipe; recipes: {', '.join(recipe_names())}")


def load_recipe(cfg: str | Path) -> dict:
    """A search recipe (`cfg=`, as Ultralytics takes it): a YAML of DMS settings and train arguments."""
    path = recipe_path(cfg)
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DMSError(f"cfg file '{path}' is not valid YAML: {first_line(e)}") from None
    if not isinstance(recipe, dict):
        raise DMSError(f"cfg file '{path}' must hold key: value pairs")
    return recipe


def with_recipe(arguments: dict) -> dict:
    """The user's arguments over their recipe's; a budget given on the command line replaces the recipe's."""
    if not arguments.get("cfg"):
        return {k: v for k, v in arguments.items() if k != "cfg"}
    recipe = load_recipe(arguments["cfg"])
    if BUDGET_KEYS & set(arguments):
        recipe = {k: v for k, v in recipe.items() if k not in BUDGET_KEYS | {"resource"}}
    return {**recipe, **{k: v for k, v in arguments.items() if k != "cfg"}}


def split_arguments(arguments: dict) -> tuple[dict, dict]:
    """(DMS settings, Ultralytics train overrides with the search defaults), both checked; `cfg=` names a recipe
    whose values come before the command line's."""
    arguments = with_recipe(arguments)
    dms = {k: v for k, v in arguments.items() if k in SearchSettings.names()}
    train = {**load_defaults()["train"], **{k: v for k, v in arguments.items() if k not in dms}, "mode": "train"}
    check_train_arguments(train)
    return dms, train


def search_projects(arguments: dict) -> list[Path]:
    """The directories that hold the searches of every task, resolved as Ultralytics resolves `project` (8.4 puts
    a relative one under `runs_dir/<task>`)."""
    train = {**load_defaults()["train"], **{k: v for k, v in arguments.items() if k == "project"}}
    return sorted({planned_save_dir({**train, "task": task, "mode": "train"}).parent for task in TASKS})


def resume_checkpoint(resume: bool | str | Path, projects: list[Path]) -> tuple[Path, str]:
    """The interrupted search to continue, an explicit last.pt or the newest last.pt under `projects`, and its
    task.

    A finished search is refused: Ultralytics strips the optimizer from its last.pt and marks it epoch -1 before
    searched.yaml and pruned.pt are written (a run killed after its last epoch but before that has trained
    every epoch); either way there is nothing left to train.
    """
    newest = not isinstance(resume, str | Path)
    if newest:
        candidates = sorted((p for d in projects for p in d.glob("*/weights/last.pt")), key=lambda p: p.stat().st_mtime)
        if not candidates:
            where = " or ".join(f"'{d}'" for d in projects)
            raise DMSError(f"no search checkpoint to resume under {where}; pass resume=path/to/weights/last.pt")
        path = candidates[-1]
    else:
        path = Path(resume)
        if not path.is_file():
            raise DMSError(f"no search checkpoint to resume at '{path}'")
    supernet, ckpt = load_search_checkpoint(path, "so there is no search to resume")
    epochs = (ckpt.get("train_args") or {}).get("epochs", DEFAULT_CFG_DICT["epochs"])
    if ckpt.get("epoch", -1) < 0 or ckpt["epoch"] + 1 >= epochs:
        run = path.parent.parent
        which = f"the newest search, {run}," if newest else f"the search {run}"
        raise DMSError(
            f"{which} has finished, so there is nothing to resume: its searched.yaml and pruned.pt are in {run} "
            f"('yolo-dms export model={path}' writes them again)"
            + ("; pass resume=path/to/weights/last.pt to continue another search" if newest else "")
        )
    return path, model_task(supernet)


def resume_overrides(arguments: dict) -> dict:
    """Trainer overrides that continue an interrupted search. Its DMS settings travel in its checkpoint and
    cannot change mid-search (the budget and schedule are the search's own), so giving one is refused."""
    dms = sorted(SearchSettings.names() & set(arguments))
    if dms:
        given = " ".join(f"{k}={arguments[k]}" for k in dms)
        raise DMSError(
            f"resume=True continues a search with the DMS settings it started with, so '{given}' cannot be "
            "applied; drop it, or start a new search to use it"
        )
    check_train_arguments(arguments)
    last, task = resume_checkpoint(arguments["resume"], search_projects(arguments))
    return {**arguments, "resume": str(last), "model": str(last), "task": task}


def run_search(arguments: dict, callbacks: dict | None = None) -> SearchTrainer:
    """Search as `yolo-dms search` and `DMS(model).search()` do, with the trainer of the model's task:
    `arguments` are its key=value pairs, already typed; `callbacks` are Ultralytics callbacks by event (its
    defaults when None)."""
    if arguments.get("resume"):
        overrides = resume_overrides(arguments)
        trainer = trainer_for(overrides["task"])(overrides=overrides, _callbacks=callbacks)
    else:
        dms, train = split_arguments(arguments)
        settings = SearchSettings.from_arguments(dms)
        if "model" not in train:
            raise DMSError("search needs model=<yaml|pt>, e.g. model=yolov8s.yaml or model=yolov8n.pt")
        train["model"] = resolve_model(train["model"])
        model = load_model(train["model"])
        train["task"] = model_task(model)
        stride = model_stride(model)
        train["imgsz"] = checked_imgsz(train.get("imgsz", DEFAULT_CFG_DICT["imgsz"]), stride)
        check_device(train.get("device"))
        check_run_directory(train)
        data = resolve_data(train.get("data"), train["task"])
        check_labels(train, data, str(train["data"]), stride)
        session = prepared_session(train["model"], data["nc"], train["imgsz"], settings, train.get("device"))
        trainer = trainer_for(train["task"])(overrides=train, _callbacks=callbacks, settings=settings,
                                             session=session)
    try:
        trainer.train()
    except KeyboardInterrupt:
        raise SearchInterrupted(trainer.save_dir, trainer.wdir / "last.pt") from None  # not a temporary name
    return trainer
