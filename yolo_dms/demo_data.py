"""A procedural detection dataset in Ultralytics YOLO format, so demos and tests need no download.

Objects are told apart by shape only (colours are random), come in many sizes, and sit on a noisy,
cluttered background with unlabelled lines and blobs. The same seed gives the same files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "ring")


def _draw(image: np.ndarray, cls: int, cx: float, cy: float, size: float, color: tuple[int, ...]) -> None:
    """Draw one object of class `cls` centred at (cx, cy) fitting a `size` x `size` box."""
    r = size / 2
    thick = max(2, int(size / 6))
    if cls == 0:
        cv2.circle(image, (int(cx), int(cy)), int(r), color, -1, cv2.LINE_AA)
    elif cls == 1:
        cv2.rectangle(image, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), color, -1)
    elif cls == 2:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(image, [pts], color, cv2.LINE_AA)
    elif cls == 3:
        cv2.rectangle(image, (int(cx - r), int(cy - thick / 2)), (int(cx + r), int(cy + thick / 2)), color, -1)
        cv2.rectangle(image, (int(cx - thick / 2), int(cy - r)), (int(cx + thick / 2), int(cy + r)), color, -1)
    else:
        cv2.circle(image, (int(cx), int(cy)), int(r - thick / 2), color, thick, cv2.LINE_AA)


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A smooth random gradient with noise and unlabelled clutter (lines and small blobs)."""
    base = rng.integers(40, 200, size=3)
    ramp = np.linspace(-30, 30, imgsz)[None, :, None] * rng.uniform(-1, 1, size=3)
    image = np.clip(base + ramp + rng.normal(0, 12, (imgsz, imgsz, 3)), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 7)):
        p1, p2 = rng.integers(0, imgsz, 2), rng.integers(0, imgsz, 2)
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)), tuple(map(int, rng.integers(0, 256, 3))), 1)
    for _ in range(rng.integers(0, 4)):
        c = tuple(map(int, rng.integers(0, imgsz, 2)))
        cv2.ellipse(image, c, (int(rng.integers(1, 4)), int(rng.integers(1, 4))), 0, 0, 360,
                    tuple(map(int, rng.integers(0, 256, 3))), -1)
    return image


def _sample(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, list[str]]:
    """One image and its label lines (`cls cx cy w h`, normalized), objects overlapping little."""
    image = _background(rng, imgsz)
    boxes: list[tuple[float, float, float, float]] = []
    labels = []
    for _ in range(rng.integers(1, 7)):
        for _attempt in range(10):
            size = rng.uniform(0.08, 0.5) * imgsz
            cx, cy = rng.uniform(size / 2, imgsz - size / 2, 2)
            box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
            if all(_iou(box, other) < 0.1 for other in boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        _draw(image, cls, cx, cy, size, color)
        boxes.append(box)
        x1, y1, x2, y2 = (min(max(v, 0.0), imgsz) for v in box)
        labels.append(f"{cls} {(x1 + x2) / 2 / imgsz:.6f} {(y1 + y2) / 2 / imgsz:.6f} "
                      f"{(x2 - x1) / imgsz:.6f} {(y2 - y1) / imgsz:.6f}")
    return image, labels


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_dataset(
    root: str | Path, n_train: int = 256, n_val: int = 64, imgsz: int = 128, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write the dataset under `root` and return its `data.yaml`; reuse it when already made with these settings."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be at least 1, got {n_train} and {n_val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be at least 32, got {imgsz}")
    root = Path(root).resolve()
    stamp_path, yaml_path = root / ".demo_data.json", root / "data.yaml"
    stamp = {"n_train": n_train, "n_val": n_val, "imgsz": imgsz, "seed": seed, "classes": list(CLASSES)}
    if not overwrite and yaml_path.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return yaml_path
    for sub in ("images", "labels"):
        shutil.rmtree(root / sub, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(count):
            image, labels = _sample(rng, imgsz)
            cv2.imwrite(str(root / "images" / split / f"{k:05d}.png"), image)
            (root / "labels" / split / f"{k:05d}.txt").write_text("\n".join(labels) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: {len(CLASSES)}\nnames:\n{names}\n")
    stamp_path.write_text(json.dumps(stamp))
    return yaml_path
