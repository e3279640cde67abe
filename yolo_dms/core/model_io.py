"""Finding and reading models (YAML or checkpoints) and writing stock Ultralytics YAMLs and checkpoints.

Model names resolve as in `yolo train`: packaged YAMLs, the weights directory, release downloads.

Everything written here must load where yolo_dms is not installed: YAML with stock module names only, and
checkpoints holding a plain `DetectionModel`. Files are written atomically (temporary file, then rename) so
an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import yaml
from ultralytics import __version__ as ultralytics_version
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import BaseModel, DetectionModel, guess_model_task, torch_safe_load, yaml_model_load
from ultralytics.utils import LOGGER, SETTINGS, is_online
from ultralytics.utils.checks import check_model_file_from_stem
from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset
from ultralytics.utils.torch_utils import intersect_dicts

from yolo_dms.core.errors import DMSError, ModelSourceError, UnsupportedModelError, first_line
from yolo_dms.core.supernet import Supernet
from yolo_dms.core.tasks import TASKS, model_task


def resolve_model(source: str | Path) -> str:
    """The model YAML or checkpoint that `source` names, found the way `yolo train` finds it.

    A YAML passes through: Ultralytics resolves packaged names (`yolov8s.yaml`) when it reads it. A checkpoint
    is a file here, a file in the weights directory (`SETTINGS['weights_dir']`), or a release asset
    (`yolov8n.pt`, or the stem `yolov8n`) or URL that `attempt_download_asset` downloads when online. Other
    missing names are not looked up online, so a mistyped path fails at once.
    """
    name = str(check_model_file_from_stem(str(source)))
    if Path(name).is_dir():
        raise ModelSourceError(f"model '{source}' is a directory; give a .yaml or .pt file")
    suffix = Path(name).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return name
    if suffix != ".pt":
        raise ModelSourceError(f"model must be a .yaml or .pt file, got '{source}'")
    weights_dir = Path(SETTINGS["weights_dir"])
    release = name in GITHUB_ASSETS_NAMES or name.lower().startswith(("http://", "https://"))
    if Path(name).is_file() or (weights_dir / name).is_file() or (release and is_online()):
        try:
            found = Path(attempt_download_asset(name))
        except ConnectionError as e:
            raise ModelSourceError(f"model '{source}' could not be downloaded: {first_line(e)}") from None
        if found.is_file():
            return str(found)
    looked = f"looked in {Path.cwd()} and in the weights directory {weights_dir.resolve()} ({SETTINGS.file})"
    offline = "; offline, so it was not downloaded" if release else ""
    raise ModelSourceError(f"model file '{source}' does not exist: {looked}{offline}")


def check_model_source(source: str | Path) -> str:
    """`source` resolved (`resolve_model`), and its file read far enough to refuse what is no model: a YAML's
    rows are read, a checkpoint is unpickled."""
    path = resolve_model(source)
    if is_checkpoint(path):
        read_checkpoint(path)
    else:
        load_model_yaml(path)
    return path


def is_checkpoint(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".pt"


def load_model_yaml(path: str | Path) -> dict:
    """Model dict from a YAML path or a stock Ultralytics name such as `yolov8s.yaml`."""
    try:
        cfg = yaml_model_load(path)
    except FileNotFoundError:
        raise ModelSourceError(f"model YAML '{path}' does not exist (not a file, nor a YAML Ultralytics ships)") from None
    except yaml.YAMLError as e:
        raise ModelSourceError(f"model YAML '{path}' is not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
        raise ModelSourceError(f"'{path}' is not an Ultralytics model YAML (it needs 'backbone' and 'head')")
    return cfg


def read_checkpoint(source: str | Path) -> dict:
    """The checkpoint dictionary `source` names (resolved like `yolo train` resolves it)."""
    path = resolve_model(source)
    if not is_checkpoint(path):
        raise ModelSourceError(f"'{source}' is not a checkpoint (.pt)")
    try:
        ckpt, _ = torch_safe_load(path)
    except AttributeError:  # a readable file of something else (a list, a tensor) that has no `.get`
        raise ModelSourceError(f"'{source}' holds no Ultralytics model") from None
    except Exception as e:  # unpickling random bytes can raise almost any error, in any Ultralytics version
        raise ModelSourceError(f"'{source}' is not a readable checkpoint (empty, truncated or corrupted): "
                               f"{unreadable_cause(e)}") from None
    if not isinstance(ckpt, dict):
        raise ModelSourceError(f"'{source}' holds no Ultralytics model")
    return ckpt


def unreadable_cause(error: BaseException) -> str:
    """What made a checkpoint unreadable, without the path and advice Ultralytics wraps around it (since 8.4.x
    `torch_safe_load` re-raises the unpickler's error inside a message of its own)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {first_line(error)}"


def stored_model(ckpt: dict) -> torch.nn.Module | None:
    """The model a checkpoint holds, EMA first, as Ultralytics reads it."""
    model = ckpt.get("ema") or ckpt.get("model")
    return model if isinstance(model, torch.nn.Module) else None


def trained_on(source: str | Path, names: dict | list) -> bool:
    """Whether a checkpoint's class names are `names` (in order): a model trained on other classes never saw the
    data, so it is no teacher for distillation on it."""
    stored = getattr(stored_model(read_checkpoint(source)), "names", None) or {}
    return [*(stored.values() if isinstance(stored, dict) else stored)] == [
        *(names.values() if isinstance(names, dict) else names)]


def load_checkpoint_model(source: str | Path, nc: int | None = None) -> DetectionModel:
    """The model (EMA first) of a checkpoint of any task DMS searches, in float32.

    A stock model is rebuilt by its own class (`DetectionModel`, `SegmentationModel`, ...) from the checkpoint's
    own YAML and given its weights and class names: pickled modules carry the attributes of the Ultralytics version that saved them (SPPF before 8.4
    has no `n`) and lack what only `parse_model` sets (`Detect.legacy`). A yolo-dms search checkpoint keeps
    its pickled supernet, whose masks and settings are the search's state. `nc` other than the checkpoint's
    builds a new head and transfers every weight that fits, as `yolo train` does.
    """
    model = stored_model(read_checkpoint(source))
    if model is None:
        raise ModelSourceError(f"'{source}' holds no Ultralytics model")
    if isinstance(model, Supernet):
        return model.float()
    if type(model) not in {kind.model for kind in TASKS.values()}:
        raise UnsupportedModelError(
            f"'{source}' is not a YOLO model of a task DMS searches ({type(model).__name__}); DMS searches "
            f"{', '.join(TASKS)} models"
        )
    return rebuild(model.float(), source, nc)


def load_search_checkpoint(source: str | Path, hint: str) -> tuple[Supernet, dict]:
    """The supernet of a yolo-dms search checkpoint and the checkpoint itself; anything else is refused with
    `hint` saying what the mode needs."""
    ckpt = read_checkpoint(source)
    model = stored_model(ckpt)
    if not isinstance(model, Supernet) or not hasattr(model, "dms_settings"):
        held = f"a plain {type(model).__name__}" if model is not None else "no model"
        held = "a supernet no search saved, without search settings" if isinstance(model, Supernet) else held
        raise ModelSourceError(f"'{source}' is not a yolo-dms search checkpoint (it holds {held}); {hint}")
    return model.float(), ckpt


def rebuild(model: BaseModel, source: str | Path, nc: int | None = None) -> BaseModel:
    """A stock model of `model`'s class built from `model.yaml`, holding `model`'s weights and class names."""
    if not isinstance(getattr(model, "yaml", None), dict):
        raise ModelSourceError(f"the model in '{source}' carries no model YAML to rebuild it from")
    same_classes = nc is None or nc == model.yaml.get("nc")
    try:
        fresh = type(model)(deepcopy(model.yaml), nc=None if same_classes else nc, verbose=False)
    except Exception as e:  # parse_model reports a bad row with whatever error the layer raises
        raise ModelSourceError(f"cannot rebuild the model in '{source}' from its YAML: {first_line(e)}") from None
    if same_classes:
        try:
            fresh.load_state_dict(model.state_dict())
        except RuntimeError as e:
            raise ModelSourceError(
                f"the weights in '{source}' do not fit the model its YAML builds: {first_line(e)}"
            ) from None
        fresh.names = model.names
        return fresh.train(model.training)
    loaded = deepcopy(fresh)
    loaded.load(model, verbose=False)
    return with_stock_class_branch(loaded, fresh).train(model.training)


def class_branch_width(model: DetectionModel) -> int | None:
    """Hidden width of the Detect head's class branch (`cv3`), None for other heads."""
    head = model.model[-1]
    if not isinstance(head, Detect):
        return None
    first = head.cv3[0][0]
    return (first[-1] if isinstance(first, torch.nn.Sequential) else first).conv.out_channels


def with_stock_class_branch(loaded: DetectionModel, fresh: DetectionModel) -> DetectionModel:
    """`loaded` (weights from a checkpoint of another class count), unless its class branch is narrower than
    the one `fresh` (the same YAML built for the data's `nc`) has; then `fresh` with every weight that fits.

    Stock `load` (8.4) rebuilds Detect's class branch at the checkpoint's width when the class count differs.
    Exported YAMLs rebuild it as `Detect` derives it, `max(P3, min(nc, 100))`: a wider branch is pruned to
    that by importance, but a narrower one (a 4-class model on 80-class data) could never reach it.
    """
    width, stock = class_branch_width(loaded), class_branch_width(fresh)
    if width is None or width >= stock:
        return loaded
    fresh.load_state_dict(intersect_dicts(loaded.state_dict(), fresh.state_dict()), strict=False)
    LOGGER.info(
        f"The checkpoint's class branch ({width} channels) is narrower than Detect builds for "
        f"{fresh.yaml['nc']} classes ({stock}): it starts from fresh weights"
    )
    return fresh


def build_task_model(cfg: str | Path | dict, nc: int | None = None) -> BaseModel:
    """The stock model a model YAML (path, packaged name or dict) builds for its task, as `yolo train` builds it.

    An unknown head builds a `DetectionModel`, whose supernet then names the layers it cannot search."""
    name = cfg.get("yaml_file", "the model") if isinstance(cfg, dict) else cfg
    cfg = cfg if isinstance(cfg, dict) else load_model_yaml(cfg)
    task = guess_model_task(cfg)
    if task is not None and task not in TASKS:
        raise UnsupportedModelError(f"'{name}' is a {task} model; DMS searches the tasks {', '.join(TASKS)}")
    model_class = TASKS[task].model if task is not None else DetectionModel
    return model_class(deepcopy(cfg), nc=nc, verbose=False)


def load_model(source: str | Path, nc: int | None = None) -> BaseModel:
    """A YOLO model of any task DMS searches, built from a YAML or loaded from a checkpoint; clear errors for
    anything else."""
    source = resolve_model(source)
    if is_checkpoint(source):
        return load_checkpoint_model(source, nc)
    try:
        return build_task_model(source, nc)
    except DMSError:  # its line names the model already
        raise
    except Exception as e:  # parse_model reports a bad row with whatever error the layer raises
        raise ModelSourceError(f"cannot build a model from '{source}': {e}") from None


def load_supernet(source: str | Path | BaseModel, nc: int | None = None, **mask_args) -> Supernet:
    """The supernet of a model YAML, a `.pt` checkpoint (a search checkpoint as it was saved) or a model object;
    `mask_args` are `Supernet`'s (`divisor=`, `lam=`, ...)."""
    if isinstance(source, BaseModel):
        return source if isinstance(source, Supernet) else Supernet(source, **mask_args)
    model = load_model(source, nc=nc)
    return model if isinstance(model, Supernet) else Supernet(model, copy=False, **mask_args)


def check_writable(directory: str | Path) -> None:
    """Refuse, before anything is written, a directory that cannot be created or written to: its nearest existing
    ancestor must be a directory in which a file can be made (the test file is removed again; nothing is created)."""
    directory = Path(directory).absolute()
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise DMSError(f"cannot write to '{directory}': '{existing}' is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".yolo_dms_write_test_", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise DMSError(f"cannot write to '{directory}': {e.strerror or type(e).__name__} ('{existing}')") from None


@contextmanager
def atomic_path(path: str | Path):
    """Yield a new temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file is created the way `open()` creates files, mode 0666 less the umask (as Ultralytics'
    outputs are), not owner-only as `mkstemp` makes it. A place that cannot be written raises `DMSError`.
    """
    path = Path(path)
    check_writable(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # never an existing file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def format_model_yaml(cfg: dict, header: str = "") -> str:
    """A model dict as YAML in Ultralytics' own style: top-level keys, then one flow-style row per layer."""

    def flow(value) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()

    lines = [f"# {line}" for line in header.splitlines()]
    settings = {k: v for k, v in cfg.items() if k not in {"backbone", "head", "scales"}}
    lines.append(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip())
    scales = cfg.get("scales")
    if scales:
        lines.append("scales: # depth, width, max_channels")
        lines += [f"  {yaml.safe_dump({name: row}, default_flow_style=None).strip()}" for name, row in scales.items()]
    layer_index = 0
    for key in ("backbone", "head"):
        lines.append(f"{key}:")
        for row in cfg[key]:
            lines.append(f"  - {flow(row)} # {layer_index}")
            layer_index += 1
    return "\n".join(lines) + "\n"


def with_scales_table(cfg: dict) -> dict:
    """`cfg` with its multipliers in a one-row `scales` table named by its scale, as a YAML file must carry them.

    Ultralytics takes a YAML file's scale from the file name, `''` for `searched.yaml`, and before 8.4.131 then
    forces `c3k=True` into every C3k2 layer (`'' in 'mlx'`); given a `scales` table it takes the table's scale.
    """
    if cfg.get("scales"):
        return cfg
    scale = cfg.get("scale") or "n"
    multipliers = [cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0), float("inf")]  # no channel cap
    settings = {k: v for k, v in cfg.items() if k not in {"scale", "depth_multiple", "width_multiple"}}
    return {**settings, "scales": {scale: multipliers}}


def write_model_yaml(cfg: dict, path: str | Path, header: str = "") -> Path:
    """Write a model dict as a standard Ultralytics model YAML (atomically) that builds the same model in every
    supported Ultralytics version, whatever the file is named."""
    with atomic_path(path) as tmp:
        tmp.write_text(format_model_yaml(with_scales_table(cfg), header))
    return Path(path)


def write_checkpoint(model: DetectionModel, path: str | Path, train_args: dict | None = None) -> Path:
    """Write `model` as a standard Ultralytics checkpoint (half precision, like the trainer's `save_model`)."""
    model = deepcopy(model).float()
    model.criterion = None  # training-only state, rebuilt on demand
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics_version,
        "model": model.half(),
        "ema": None,
        "train_args": {"task": model_task(model), **(train_args or {})},  # how stock YOLO() loads it
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
