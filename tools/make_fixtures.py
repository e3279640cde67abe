"""Write the checkpoints in tests/fixtures/: tiny YOLOv8 detection models saved by older Ultralytics versions.

A checkpoint pickles the modules of the Ultralytics version that saved it (8.1 to 8.3 SPPF has no `n`, no
version sets `Detect.legacy` on the instance), so each fixture must be written by the version it stands for.
Run this script once per version, in a virtual environment holding that version and the project's torch pin:

    for v in 8.1.47 8.2.103 8.3.40; do
        python3 -m venv /tmp/u$v
        /tmp/u$v/bin/pip install -q ultralytics==$v torch==2.14.1 torchvision==0.29.1
        /tmp/u$v/bin/python tools/make_fixtures.py
    done

Widths are 1/16 of yolov8n's, at most 8 channels, so each file stays well under 1 MB (Detect's box branch,
64 channels wide in every YOLOv8, is most of it). Each version
writes the kind of checkpoint listed in FIXTURES, so that together they cover a checkpoint trained by
Ultralytics' own trainer (EMA model, half precision, dataset class names), a float32 model saved by a
user script, and an untrained half-precision checkpoint in the trainer's layout, with 2, 5 and 7 classes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import yaml

# Ultralytics before 8.3 calls torch.load without weights_only, which torch >= 2.6 defaults to True
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from ultralytics import YOLO, __version__  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures"
SCALE = [0.33, 0.0625, 128]  # depth, width, max channels (yolov8n: 0.33, 0.25, 1024): 8 channels a layer

# Ultralytics minor version -> (how the checkpoint is made, classes, precision)
FIXTURES = {
    "8.1": ("trained", 5, "fp16"),
    "8.2": ("untrained", 7, "fp32"),
    "8.3": ("untrained", 2, "fp16"),
}


def tiny_yolov8_cfg(nc: int) -> dict:
    """This version's own yolov8n YAML with its `n` scale at 1/16 of the width and at most 8 channels."""
    cfg = yaml_model_load("yolov8n.yaml")
    cfg.pop("yaml_file", None)
    return {**cfg, "nc": nc, "scales": {"n": SCALE}, "scale": "n"}


def trained_checkpoint(nc: int, work: Path) -> Path:
    """best.pt of one epoch with this version's trainer, on the project's procedural data (imported by file
    path: the yolo_dms package itself needs Ultralytics 8.4)."""
    spec = importlib.util.spec_from_file_location("demo_data", ROOT / "yolo_dms" / "demo_data.py")
    demo_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_data)
    assert len(demo_data.CLASS_NAMES) == nc, "the trained fixture takes its classes from the demo data"
    data = demo_data.make_dataset(work / "data", n_train=16, n_val=8, imgsz=64, seed=0)
    model_yaml = work / "yolov8n-tiny.yaml"  # Ultralytics reads the scale from the name
    model_yaml.write_text(yaml.safe_dump(tiny_yolov8_cfg(nc), sort_keys=False))
    YOLO(str(model_yaml)).train(
        data=str(data), epochs=1, imgsz=64, batch=8, workers=0, device="cpu", amp=False, plots=False,
        project=str(work), name="train", exist_ok=True,
    )
    return work / "train" / "weights" / "best.pt"


def untrained_checkpoint(nc: int, precision: str, path: Path) -> Path:
    """A freshly built model saved as the trainer lays out its checkpoints (fp16), or as a user script would
    save a model (fp32, a bare {'model': ...})."""
    model = DetectionModel(tiny_yolov8_cfg(nc), verbose=False)
    model.names = {i: f"class{i}" for i in range(nc)}
    if precision == "fp16":
        ckpt = {
            "date": datetime.now().isoformat(),
            "version": __version__,
            "epoch": -1,
            "model": deepcopy(model).half(),
            "ema": None,
            "optimizer": None,
            "train_args": {"task": "detect", "imgsz": 64},
        }
    else:
        ckpt = {"model": model}
    torch.save(ckpt, path)
    return path


def main() -> None:
    minor = ".".join(__version__.split(".")[:2])
    if minor not in FIXTURES:
        raise SystemExit(f"Ultralytics {__version__} writes no fixture; versions: {', '.join(FIXTURES)}")
    kind, nc, precision = FIXTURES[minor]
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"yolov8-ultralytics{__version__}-{kind}-nc{nc}-{precision}.pt"
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "trained":
            shutil.copy(trained_checkpoint(nc, Path(tmp)), target)
        else:
            untrained_checkpoint(nc, precision, target)
    print(f"{target} ({target.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
