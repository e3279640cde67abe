"""A procedural dataset for every Ultralytics task in its YOLO format, so demos and tests need no download.

Objects are told apart by shape only (every object gets a random colour), come in sizes from 8% to 50% of the
image side at random angles, and sit on a textured, noisy background with unlabelled lines, arcs and blobs.
A tiny YOLOv8n learns it in a few epochs at 128 px, yet it is not trivial. The same seed gives the same files.

Every task labels the same rendered objects from their exact visible pixels (`task=`):

- `detect`: tight boxes, `cls cx cy w h`.
- `segment`: the outline polygon, `cls x1 y1 ...` (a ring's hole joined to its outline by a zero-width cut,
  as Ultralytics merges multi-part outlines, so the rasterised polygon keeps the hole).
- `obb`: the minimum-area rotated rectangle, `cls x1 y1 ... x4 y4`.
- `pose`: the tight box and four keypoints, the topmost, rightmost, bottommost and leftmost visible pixels
  (`kpt_shape: [4, 3]`, `flip_idx: [0, 3, 2, 1]` in the data YAML: a horizontal flip swaps right and left).
- `classify`: class folders (`train/<class>/`, `val/<class>/`) of square crops, each around the first object of
  one rendered image, whose class goes round the classes (every split holds every class once it has 5 images).
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

from yolo_dms.core.tasks import TASKS

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
KPT_SHAPE, FLIP_IDX = (4, 3), (0, 3, 2, 1)  # pose: topmost, rightmost, bottommost, leftmost; flip swaps 1 and 3
CROP_MARGIN = 0.25  # classify: context around the object's box, as a fraction of its longer side on each side

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
    task: str = "detect",
) -> Path:
    """Write the dataset for `task` under `root` and return what `data=` takes: its `data.yaml`, or for
    `classify` the directory of class folders.

    A dataset already made here with the same settings is reused (nothing is written), so callers can simply
    call this every time. Different settings, or `overwrite=True`, replace what an earlier call wrote.
    A directory that holds images or labels not made by this function is never deleted unless `overwrite=True`.
    """
    _check_int("n_train", n_train, minimum=1)
    _check_int("n_val", n_val, minimum=1)
    _check_int("imgsz", imgsz, minimum=32)
    _check_int("seed", seed, minimum=0)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"root must be a directory, but {root} is a file")
    yaml_path, stamp_path = root / "data.yaml", root / STAMP_NAME
    result = root if task == "classify" else yaml_path
    counts = {"train": int(n_train), "val": int(n_val)}
    settings = {
        "generator": "yolo_dms.tools.demo_data",
        "version": GENERATOR_VERSION,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "imgsz": int(imgsz),
        "seed": int(seed),
        "names": list(CLASS_NAMES),
        **({"task": task} if task != "detect" else {}),  # detection datasets made before tasks stay valid
    }

    stamp = _read_stamp(stamp_path)
    if not overwrite and stamp == {**settings, "complete": True} and _is_intact(root, counts, task):
        if task != "classify" and _recorded_path(yaml_path) != str(root):  # moved: only the path is stale
            _write_yaml(yaml_path, root, task)
        return result
    written = ("images", "labels", *SPLITS)
    if stamp is None and not overwrite and any((root / d).exists() for d in written):
        raise FileExistsError(
            f"{root} already holds {'/, '.join(written)}/ not made by make_dataset; "
            "pass overwrite=True to replace them, or choose an empty directory"
        )

    # Mark the directory as ours and incomplete first, so an interrupted run is regenerated, not reused.
    root.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps({**settings, "complete": False}, indent=1))
    yaml_path.unlink(missing_ok=True)
    for sub in written:
        shutil.rmtree(root / sub, ignore_errors=True)

    for split_id, split in enumerate(SPLITS):
        for index in range(counts[split]):
            # One generator per image: a split's files do not depend on the other split's size.
            rng = np.random.default_rng([int(seed), split_id, index])
            if task == "classify":
                cls = index % len(CLASS_NAMES)
                _write_image(root / split / CLASS_NAMES[cls] / f"{index:06d}.png", render_crop(rng, int(imgsz), cls))
                continue
            image, labels = render_sample(rng, int(imgsz), task)
            _write_image(root / "images" / split / f"{index:06d}.png", image)
            label_path = root / "labels" / split / f"{index:06d}.txt"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text("".join(f"{line}\n" for line in labels))

    if task != "classify":
        _write_yaml(yaml_path, root, task)
    stamp_path.write_text(json.dumps({**settings, "complete": True}, indent=1))
    return result


def render_sample(rng: np.random.Generator, imgsz: int, task: str = "detect") -> tuple[np.ndarray, list[str]]:
    """One BGR image and its label lines in `task`'s YOLO format (normalized, from the visible pixels)."""
    image, objects = _render_objects(rng, imgsz)
    labels = []
    for cls, visible in objects:
        ys, xs = np.nonzero(visible)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1  # pixel edges, inside the image
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        box = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
        values = {
            "detect": box,
            "segment": _outline(visible),
            "obb": cv2.boxPoints(cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32) + 0.5)).flatten(),
            "pose": box,
        }[task]
        line = f"{cls} " + " ".join(f"{v / imgsz:.6f}" for v in np.clip(values, 0, imgsz))
        if task == "pose":
            line += "".join(f" {x / imgsz:.6f} {y / imgsz:.6f} 2" for x, y in _extreme_points(xs, ys))
        labels.append(line)
    return image, labels


def render_crop(rng: np.random.Generator, imgsz: int, cls: int) -> np.ndarray:
    """A square BGR crop of `imgsz` pixels around the first object of a rendered image, an object of class `cls`."""
    image, objects = _render_objects(rng, imgsz, first_class=cls)
    ys, xs = np.nonzero(objects[0][1])
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    half = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) * (0.5 + CROP_MARGIN)
    x1, y1 = int(max(0, round(cx - half))), int(max(0, round(cy - half)))
    x2, y2 = int(min(imgsz, round(cx + half))), int(min(imgsz, round(cy + half)))
    return cv2.resize(image[y1:y2, x1:x2], (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)


def _render_objects(
    rng: np.random.Generator, imgsz: int, first_class: int | None = None
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One BGR image and its objects as (class, mask of the pixels it shows), at least one pixel each.

    `first_class` sets the first object's class (it is always placed, and later objects overlap it little).
    """
    image = _background(rng, imgsz)
    _draw_clutter(rng, image)
    owner = np.full((imgsz, imgsz), -1, np.int16)  # which object each pixel shows, for exact tight labels
    classes: list[int] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        spot = _find_free_spot(rng, imgsz, placed)
        if spot is None:
            continue
        cx, cy, radius = spot
        cls = int(rng.integers(len(CLASS_NAMES)))
        if first_class is not None and not classes:
            cls = first_class
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
    objects = [(cls, owner == index) for index, cls in enumerate(classes)]
    return image, [(cls, visible) for cls, visible in objects if visible.any()]


def _outline(visible: np.ndarray) -> np.ndarray:
    """The largest visible part's outline as one polygon (x1, y1, x2, y2, ...) in pixel-edge coordinates.

    Each hole is joined to the outline through its nearest point (out along the cut, round the hole, back), so
    filling the polygon leaves the hole open, as Ultralytics joins the parts of a multi-part outline.
    """
    contours, hierarchy = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = max((i for i, h in enumerate(hierarchy[0]) if h[3] < 0), key=lambda i: cv2.contourArea(contours[i]))
    polygon = contours[outer][:, 0].astype(np.float64)
    for i, h in enumerate(hierarchy[0]):
        if h[3] == outer:
            hole = contours[i][:, 0].astype(np.float64)
            gaps = np.linalg.norm(polygon[:, None] - hole[None], axis=2)
            a, b = np.unravel_index(gaps.argmin(), gaps.shape)
            polygon = np.concatenate([polygon[: a + 1], np.roll(hole, -b, 0), hole[b : b + 1], polygon[a:]])
    return (polygon + 0.5).flatten()


def _extreme_points(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
    """Pixel centres of the topmost, rightmost, bottommost and leftmost visible pixels (ties: their middle)."""
    points = []
    for along, across, pick in ((ys, xs, np.min), (xs, ys, np.max), (ys, xs, np.max), (xs, ys, np.min)):
        edge = along == pick(along)
        middle = (across[edge].min() + across[edge].max()) / 2
        points.append((middle, along[edge][0]) if along is ys else (along[edge][0], middle))
    return [(x + 0.5, y + 0.5) for x, y in points]


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


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


def _is_intact(root: Path, counts: dict[str, int], task: str) -> bool:
    """Whether every image and label file is still there, so a partly deleted dataset is not reused."""
    if task == "classify":
        return all(sum(1 for _ in (root / split).glob("*/*.png")) == count for split, count in counts.items())
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


def _write_yaml(yaml_path: Path, root: Path, task: str) -> None:
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": dict(enumerate(CLASS_NAMES)),
        **({"kpt_shape": list(KPT_SHAPE), "flip_idx": list(FLIP_IDX)} if task == "pose" else {}),
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
