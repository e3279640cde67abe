"""Reading models from YAML or checkpoints and writing stock Ultralytics YAMLs and checkpoints.

Everything written here must load where yolo_dms is not installed: YAML with stock module names only, and
checkpoints holding a plain `DetectionModel`. Files are written atomically (temporary file, then rename) so
an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import yaml
from ultralytics import __version__ as ultralytics_version
from ultralytics.nn.tasks import DetectionModel, guess_model_task, torch_safe_load, yaml_model_load

from yolo_dms.errors import ModelSourceError, UnsupportedModelError


def load_model_yaml(path: str | Path) -> dict:
    """Model dict from a YAML path or a stock Ultralytics name such as `yolov8s.yaml`."""
    try:
        cfg = yaml_model_load(path)
    except FileNotFoundError:
        raise ModelSourceError(f"model YAML '{path}' does not exist") from None
    except yaml.YAMLError as e:
        raise ModelSourceError(f"model YAML '{path}' is not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
        raise ModelSourceError(f"'{path}' is not an Ultralytics model YAML (it needs 'backbone' and 'head')")
    return cfg


def load_checkpoint_model(path: str | Path) -> DetectionModel:
    """The model (EMA first) stored in an Ultralytics checkpoint, in float32."""
    if not Path(path).is_file():
        raise ModelSourceError(f"model file '{path}' does not exist")
    try:
        ckpt, _ = torch_safe_load(str(path))
    except (TypeError, ModuleNotFoundError, RuntimeError, EOFError, OSError) as e:
        raise ModelSourceError(f"'{path}' is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module):
        raise ModelSourceError(f"'{path}' holds no Ultralytics model")
    return model.float()


def load_detection_model(source: str | Path, nc: int | None = None) -> DetectionModel:
    """A YOLO detection model built from a YAML or loaded from a `.pt`; clear errors for anything else."""
    suffix = Path(str(source)).suffix.lower()
    if suffix in {".yaml", ".yml"}:
        cfg = load_model_yaml(source)
        task = guess_model_task(cfg)
        if task not in {"detect", None}:  # None: an unknown head, named layer by layer by the supernet
            raise UnsupportedModelError(f"'{source}' is a {task} model; DMS searches YOLOv8 detection models")
        try:
            model = DetectionModel(cfg, nc=nc, verbose=False)
        except Exception as e:  # parse_model reports a bad row with whatever error the layer raises
            raise ModelSourceError(f"cannot build a model from '{source}': {e}") from None
    elif suffix == ".pt":
        model = load_checkpoint_model(source)
    else:
        raise ModelSourceError(f"model must be a .yaml or .pt file, got '{source}'")
    if not isinstance(model, DetectionModel) or guess_model_task(model) not in {"detect", None}:
        raise UnsupportedModelError(f"'{source}' is not a YOLO detection model ({type(model).__name__})")
    return model


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def format_model_yaml(cfg: dict, header: str = "") -> str:
    """A model dict as YAML in Ultralytics' own style: top-level keys, then one flow-style row per layer."""

    def flow(value) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()

    lines = [f"# {line}" for line in header.splitlines()]
    settings = {k: v for k, v in cfg.items() if k not in {"backbone", "head"}}
    lines.append(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip())
    layer_index = 0
    for key in ("backbone", "head"):
        lines.append(f"{key}:")
        for row in cfg[key]:
            lines.append(f"  - {flow(row)} # {layer_index}")
            layer_index += 1
    return "\n".join(lines) + "\n"


def write_model_yaml(cfg: dict, path: str | Path, header: str = "") -> Path:
    """Write a model dict as a standard Ultralytics model YAML (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(format_model_yaml(cfg, header))
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
        "train_args": {"task": "detect", **(train_args or {})},
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
