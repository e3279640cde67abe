"""What a search checks before it writes anything: the image size, the device, the run directory, the labels and
the budget. Each check turns a mistake that would otherwise surface as a traceback from inside training (and leave
a half-made run directory behind) into one `DMSError` line."""

from __future__ import annotations

import re
from pathlib import Path

from ultralytics.cfg import get_cfg, get_save_dir
from ultralytics.data import build_yolo_dataset
from ultralytics.data.utils import load_dataset_cache_file
from ultralytics.utils import DEFAULT_CFG_DICT, files, remove_colorstr
from ultralytics.utils.torch_utils import select_device

from yolo_dms.core.data import DataError
from yolo_dms.core.errors import DMSError, first_line
from yolo_dms.core.model_io import check_writable, load_model
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.session import SearchSession, wrap_supernet
from yolo_dms.search.settings import SearchSettings

def check_device(device) -> None:
    """The device as Ultralytics selects it (`device=0` on a machine without that GPU is refused here)."""
    if device in {None, ""}:
        return
    try:
        select_device(device, verbose=False)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise DMSError(first_line(e)) from None


def planned_save_dir(train: dict) -> Path:
    """The run directory the trainer will make for `train`, as Ultralytics resolves it, without making it (8.4.0's
    `get_save_dir` creates the directory it names, and the trainer would then take the next name)."""
    make = files.increment_path
    try:
        files.increment_path = lambda path, *args, **kwargs: make(path, *args, **{**kwargs, "mkdir": False})
        return get_save_dir(get_cfg(DEFAULT_CFG_DICT, train))
    finally:
        files.increment_path = make


def check_run_directory(train: dict) -> None:
    """The run directory Ultralytics will make (`project`/`name`) must be writable."""
    check_writable(planned_save_dir(train))


def check_labels(train: dict, data: dict, name: str, stride: int) -> None:
    """The train and val labels must load for the model's task as its trainer loads them (every label invalid,
    or a segmentation model given box labels, fails inside Ultralytics' data loader)."""
    task = train["task"]
    if task == "classify":  # class folders, checked when the dataset resolved
        return
    kpt_shape = data.get("kpt_shape")
    if task == "pose" and not (isinstance(kpt_shape, list | tuple) and len(kpt_shape) == 2 and kpt_shape[1] in (2, 3)):
        raise DataError(f"dataset '{name}' has no usable train labels for the pose task: 'kpt_shape' in its YAML is "
                        f"missing or not [keypoints, 2 or 3] (e.g. 'kpt_shape: [17, 3]'), got {kpt_shape}")
    cfg = get_cfg(DEFAULT_CFG_DICT, {**train, "cache": False})  # a label scan, never an image cache
    for split in ("train", "val"):
        try:
            dataset = build_yolo_dataset(cfg, data[split], cfg.batch if cfg.batch > 0 else 16, data, split,
                                         stride=stride)
        except Exception as e:  # Ultralytics reports unusable labels with several error types across versions
            raise DataError(f"dataset '{name}' has no usable {split} labels for the {task} task: "
                            f"{label_problem(e)}") from None
        boxes, polygons = (sum(len(label[key]) for label in dataset.labels) for key in ("bboxes", "segments"))
        if task in ("segment", "obb") and polygons != boxes:  # 8.4.0 loads box labels and fails in augmentation
            raise DataError(f"dataset '{name}' has no usable {split} labels for the {task} task: {boxes} boxes but "
                            f"{polygons} polygons: the {task} task needs polygon labels (class x1 y1 x2 y2 ...)")
        if not any(len(label["cls"]) for label in dataset.labels):
            raise DataError(f"dataset '{name}' has no labelled objects in its {split} split ({data[split]})")


def label_problem(error: BaseException) -> str:
    """Ultralytics' reason in one line: its first line, and the first of the per-file problems it lists."""
    lines = [remove_colorstr(line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("See https://")]
    if not lines:
        return type(error).__name__
    reasons = lines[1:] or cached_label_messages(lines[0])
    reasons = [line.split("ignoring corrupt image/label: ")[-1] for line in reasons]
    return lines[0] + (f" (e.g. {reasons[0]})" if reasons else "")


def cached_label_messages(error_line: str) -> list[str]:
    """The per-file problems in the label cache an error names (8.4.0 logs them and raises only 'No valid images
    found in <cache>'; later versions put them in the error)."""
    found = re.search(r"found in (\S+\.cache)", error_line)
    if not found or not Path(found.group(1)).is_file():
        return []
    try:
        return [remove_colorstr(m).strip() for m in load_dataset_cache_file(Path(found.group(1))).get("msgs", [])]
    except Exception:  # an unreadable cache only costs the example
        return []


def prepared_session(model: str, nc: int, imgsz: int, settings: SearchSettings, device) -> SearchSession:
    """The search session of `model`, its resource model built and its budget checked (`BudgetError` when the
    supernet cannot reach it), ready for the trainer to start on the model it trains."""
    source = load_model(model, nc=nc)
    if isinstance(source, Supernet):
        raise DMSError(
            f"'{model}' is a search checkpoint; continue it with resume=True or export it with 'yolo-dms export'"
        )
    session = SearchSession()
    session.prepare(wrap_supernet(source, settings), imgsz, device, refresh=settings.latency_refresh)
    return session
