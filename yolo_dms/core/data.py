"""Finding a dataset the way `yolo train` finds it for the model's task, with one-line errors instead of tracebacks.

`check_det_dataset` (every task but classification, whose `check_cls_dataset` takes a folder of class folders)
resolves a YAML path or a name Ultralytics ships (`coco8.yaml`, or just `coco8`), puts
relative dataset roots under `datasets_dir` (Ultralytics settings), and runs the YAML's `download:` when the
images are missing. Offline, no download is tried, so an unresolved name fails at once instead of retrying.
"""

from __future__ import annotations

from pathlib import Path

from ultralytics.data.utils import IMG_FORMATS, check_cls_dataset, check_det_dataset
from ultralytics.utils import SETTINGS, is_online

from yolo_dms.core.errors import DMSError, first_line


class DataError(DMSError):
    """The dataset cannot be found, is malformed, or points at no images."""


def resolve_data(data: str | Path | None, task: str = "detect") -> dict:
    """The dataset dictionary of `data` for a model of `task`, as its trainer reads it, with train and val images
    present."""
    if not data:
        raise DataError("give a dataset: data=<dataset.yaml>, e.g. data=coco8.yaml")
    online = is_online()
    try:
        if task == "classify":
            info = check_cls_dataset(str(data))
        else:
            info = check_det_dataset(str(data), autodownload=online)
    except FileNotFoundError as e:
        first = first_line(e)
        if "images not found" not in first:  # the YAML itself
            raise DataError(f"dataset YAML '{data}' does not exist (not a file, nor a YAML Ultralytics ships)") from None
        where = f"datasets directory {Path(SETTINGS['datasets_dir']).resolve()} ({SETTINGS.file})"
        offline = "; offline, so its download was not tried" if not online else ""
        raise DataError(f"{first.rstrip('. ')}; {where}{offline}") from None
    except Exception as e:  # Ultralytics raises several types for a bad dataset; all mean the same to the user
        raise DataError(f"dataset '{data}' cannot be used: {first_line(e)}") from None
    for split in ("train", "val"):
        paths = info.get(split)
        paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths]) if p]
        if not any(_has_images(p) for p in paths):
            raise DataError(f"dataset '{data}' has no {split} images at {', '.join(map(str, paths))}")
    return info


def _has_images(path: Path) -> bool:
    """An image directory with at least one image, or a non-empty list file."""
    if path.is_dir():
        return any(p.suffix[1:].lower() in IMG_FORMATS for p in path.rglob("*"))
    return path.is_file() and path.stat().st_size > 0

