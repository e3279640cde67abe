"""A procedural detection dataset in Ultralytics YOLO format, so demos and tests need no download.

Objects are told apart by shape only (every object gets a random colour), come in sizes from 8% to 50% of the
image side at random angles, and sit on a textured, noisy background with unlabelled lines, arcs and blobs.
A tiny YOLOv8n learns it in a few epochs at 128 px, yet it is not trivial. The same seed gives the same files.
"""

from __future__ import annotations

import json
import numbers
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")

# Bump when the drawing changes, so a dataset cached by an older version is regenerated rather than reused.
GENERATOR_VERSION = 2

STAMP_NAME = ".demo_data.json"
SPLITS = ("train", "val")

MIN_SIZE, MAX_SIZE = 0.08, 0.5  # object extent (circumscribed circle diameter) as a fraction of the image side
MAX_OBJECTS = 6
MAX_OVERLAP = 0.15  # intersection over the smaller box: objects may touch but never hide each other
MIN_CONTRAST = 90.0  # Euclidean RGB distance between an object and the background under it
SUBPIXEL_BITS = 4  # cv2 fixed-point shift, so small shapes keep their geometry
SUBPIXEL = 1 << SUBPIXEL_BITS


def make_dataset(
    root: str | Path,
    n_train: int = 256,
    n_val: int = 64,
    imgsz: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the dataset under `root` and return its `data.yaml`.

    A dataset already made here with the same settings is reused (nothing is written), so callers can simply
    call this every time. Different settings, or `overwrite=True`, replace `root/images` and `root/labels`.
    A directory that holds images or labels not made by this function is never deleted unless `overwrite=True`.
    """
    _check_int("n_train", n_train, minimum=1)
    _check_int("n_val", n_val, minimum=1)
    _check_int("imgsz", imgsz, minimum=32)
    _check_int("seed", seed, minimum=0)
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"root must be a directory, but {root} is a file")
    yaml_path, stamp_path = root / "data.yaml", root / STAMP_NAME
    counts = {"train": int(n_train), "val": int(n_val)}
    settings = {
        "generator": "yolo_dms.tools.demo_data",
        "version": GENERATOR_VERSION,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "imgsz": int(imgsz),
        "seed": int(seed),
        "names": list(CLASS_NAMES),
    }

    stamp = _read_stamp(stamp_path)
    if not overwrite and stamp == {**settings, "complete": True} and _is_intact(root, counts):
        if _recorded_path(yaml_path) != str(root):  # the directory was moved: only the absolute path is stale
            _write_yaml(yaml_path, root)
        return yaml_path
    if stamp is None and not overwrite and any((root / d).exists() for d in ("images", "labels")):
        raise FileExistsError(
            f"{root} already holds images/ or labels/ not made by make_dataset; "
            "pass overwrite=True to replace them, or choose an empty directory"
        )

    # Mark the directory as ours and incomplete first, so an interrupted run is regenerated, not reused.
    root.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps({**settings, "complete": False}, indent=1))
    yaml_path.unlink(missing_ok=True)
    for sub in ("images", "labels"):
        shutil.rmtree(root / sub, ignore_errors=True)

    for split_id, split in enumerate(SPLITS):
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        image_dir.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        for index in range(counts[split]):
            # One generator per image: a split's files do not depend on the other split's size.
            rng = np.random.default_rng([int(seed), split_id, index])
            image, labels = render_sample(rng, int(imgsz))
            if not cv2.imwrite(str(image_dir / f"{index:06d}.png"), image):
                raise OSError(f"could not write {image_dir / f'{index:06d}.png'}")
            (label_dir / f"{index:06d}.txt").write_text("".join(f"{line}\n" for line in labels))

    _write_yaml(yaml_path, root)
    stamp_path.write_text(json.dumps({**settings, "complete": True}, indent=1))
    return yaml_path


def render_sample(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, list[str]]:
    """One BGR image and its YOLO label lines (`cls cx cy w h`, normalized, tight around the visible pixels)."""
    image = _background(rng, imgsz)
    _draw_clutter(rng, image)
    owner = np.full((imgsz, imgsz), -1, np.int16)  # which object each pixel shows, for exact tight boxes
    classes: list[int] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        spot = _find_free_spot(rng, imgsz, placed)
        if spot is None:
            continue
        cx, cy, radius = spot
        cls = int(rng.integers(len(CLASS_NAMES)))
        mask = np.zeros((imgsz, imgsz), np.uint8)
        _draw_shape(mask, cls, cx, cy, radius, angle=float(rng.uniform(0, 2 * np.pi)))
        filled = mask > 0
        if not filled.any():
            continue
        image[filled] = _contrasting_colour(rng, image[filled])
        owner[filled] = len(classes)
        classes.append(cls)
        placed.append((cx - radius, cy - radius, cx + radius, cy + radius))

    # Soft edges and sensor noise, applied to objects and background alike so neither gives the other away.
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (3, 3), 0.7)
    noisy = image.astype(np.float32) + rng.normal(0.0, rng.uniform(3.0, 9.0), image.shape).astype(np.float32)
    image = np.clip(noisy, 0, 255).astype(np.uint8)

    labels = []
    for index, cls in enumerate(classes):
        ys, xs = np.nonzero(owner == index)
        if len(xs) == 0:
            continue
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1  # pixel edges, inside the image
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        box = ((x1 + x2) / 2 / imgsz, (y1 + y2) / 2 / imgsz, (x2 - x1) / imgsz, (y2 - y1) / imgsz)
        labels.append(f"{cls} " + " ".join(f"{v:.6f}" for v in box))
    return image, labels


def _check_int(name: str, value: object, minimum: int) -> None:
    """Reject wrong types and out-of-range values up front, with the argument's name in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _read_stamp(stamp_path: Path) -> dict | None:
    """The settings a previous call recorded here, or None when there is no readable stamp."""
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("generator") == "yolo_dms.tools.demo_data" else None


def _is_intact(root: Path, counts: dict[str, int]) -> bool:
    """Whether every image and label file is still there, so a partly deleted dataset is not reused."""
    if not (root / "data.yaml").is_file():
        return False
    for split, count in counts.items():
        if sum(1 for _ in (root / "images" / split).glob("*.png")) != count:
            return False
        if sum(1 for _ in (root / "labels" / split).glob("*.txt")) != count:
            return False
    return True


def _recorded_path(yaml_path: Path) -> str | None:
    try:
        return yaml.safe_load(yaml_path.read_text()).get("path")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _write_yaml(yaml_path: Path, root: Path) -> None:
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": dict(enumerate(CLASS_NAMES)),
    }
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A random base colour with smooth low-frequency texture, so there is no flat colour to key on."""
    base = rng.uniform(30, 225, 3)
    grid = int(rng.integers(2, 9))
    coarse = rng.normal(0.0, 1.0, (grid, grid, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    image = base + texture * rng.uniform(8.0, 35.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Unlabelled distractors: straight lines, open arcs and irregular blobs, drawn under the objects."""
    imgsz = image.shape[0]

    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))

    for _ in range(int(rng.integers(1, 6))):
        p1, p2 = rng.integers(-imgsz // 4, imgsz + imgsz // 4, (2, 2))
        cv2.line(image, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), colour(), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 3))):
        centre = tuple(int(v) for v in rng.integers(0, imgsz, 2))
        axes = tuple(int(v) for v in rng.integers(imgsz // 12, imgsz // 3, 2))
        start = float(rng.uniform(0, 360))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), start, start + float(rng.uniform(40, 160)),
                    colour(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        # Many vertices with independently jittered radii: a ragged splat, unlike any clean labelled shape.
        n_vertices = int(rng.integers(12, 20))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
        radii = rng.uniform(0.35, 1.0, n_vertices) * rng.uniform(0.03, 0.1) * imgsz
        centre = rng.uniform(0, imgsz, 2)
        points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        cv2.fillPoly(image, [np.round(points * SUBPIXEL).astype(np.int32)], colour(), cv2.LINE_AA, SUBPIXEL_BITS)


def _find_free_spot(
    rng: np.random.Generator, imgsz: int, placed: list[tuple[float, float, float, float]], tries: int = 20
) -> tuple[float, float, float] | None:
    """A centre and radius whose box overlaps every placed box only a little; None when the image is full."""
    for _ in range(tries):
        radius = rng.uniform(MIN_SIZE, MAX_SIZE) * imgsz / 2
        # Up to 15% of an object's extent may fall outside the image: truncated objects, boxes clipped to it.
        low, high = 0.7 * radius, imgsz - 0.7 * radius
        cx, cy = rng.uniform(low, high, 2)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if all(_overlap(box, other) <= MAX_OVERLAP for other in placed):
            return float(cx), float(cy), float(radius)
    return None


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box, so a small object inside a large one counts as fully overlapping."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _polygon(cx: float, cy: float, radius: float, angle: float, unit_points: np.ndarray) -> np.ndarray:
    """Unit-circle vertices rotated by `angle`, scaled by `radius`, moved to (cx, cy), in cv2 fixed point."""
    c, s = np.cos(angle), np.sin(angle)
    rotated = unit_points @ np.array([[c, s], [-s, c]])
    points = rotated * radius + (cx, cy)
    return np.round(points * SUBPIXEL).astype(np.int32)


def _regular_polygon(n: int) -> np.ndarray:
    angles = np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(angles), np.sin(angles)], 1)


ARM, HALF_WIDTH = 0.95, 0.3  # the cross: arm length and half arm width, both relative to the radius
UNIT_SHAPES = {
    "square": _regular_polygon(4),  # corners on the circle
    "triangle": _regular_polygon(3),  # equilateral
    "cross": np.array([  # plus sign, its outer corners just inside the circle
        [HALF_WIDTH, HALF_WIDTH], [ARM, HALF_WIDTH], [ARM, -HALF_WIDTH], [HALF_WIDTH, -HALF_WIDTH],
        [HALF_WIDTH, -ARM], [-HALF_WIDTH, -ARM], [-HALF_WIDTH, -HALF_WIDTH], [-ARM, -HALF_WIDTH],
        [-ARM, HALF_WIDTH], [-HALF_WIDTH, HALF_WIDTH], [-HALF_WIDTH, ARM], [HALF_WIDTH, ARM],
    ]),
}


def _draw_shape(mask: np.ndarray, cls: int, cx: float, cy: float, radius: float, angle: float) -> None:
    """Fill the pixels of one object of class `cls` in `mask`; it fits in a circle of `radius` around (cx, cy).

    Binary (not anti-aliased) drawing, so the mask gives the object's exact pixels and its tight box.
    """
    centre = (int(round(cx * SUBPIXEL)), int(round(cy * SUBPIXEL)))
    name = CLASS_NAMES[cls]
    if name == "circle":
        cv2.circle(mask, centre, int(round(radius * SUBPIXEL)), 255, -1, cv2.LINE_8, SUBPIXEL_BITS)
    elif name == "ring":
        thickness = max(2, int(round(radius * 0.35)))
        middle = radius - thickness / 2  # the stroke is centred on this radius; its outer edge is at `radius`
        cv2.circle(mask, centre, int(round(middle * SUBPIXEL)), 255, thickness, cv2.LINE_8, SUBPIXEL_BITS)
    else:
        points = _polygon(cx, cy, radius, angle, UNIT_SHAPES[name])
        cv2.fillPoly(mask, [points], 255, cv2.LINE_8, SUBPIXEL_BITS)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from the pixels it covers, so shape is always visible."""
    mean = under.reshape(-1, 3).mean(0)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - mean) >= MIN_CONTRAST:
            return tuple(int(v) for v in colour)
    return (0, 0, 0) if mean.mean() > 127 else (255, 255, 255)


def random_batch(batch: int, imgsz: int, device: torch.device | str = "cpu", nc: int = 80, seed: int = 0) -> dict:
    """A random training batch in the layout Ultralytics' detection loss expects (four boxes per image).

    For timing and distributed tests, where no data loader is wanted.
    """
    gen = torch.Generator().manual_seed(seed)
    n = batch * 4
    xy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=gen) * 0.2 + 0.05
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=gen).to(device),
        "batch_idx": torch.arange(batch).repeat_interleave(4).float().to(device),
        "cls": torch.randint(0, nc, (n, 1), generator=gen).float().to(device),
        "bboxes": torch.cat([xy, wh], 1).to(device),
    }
