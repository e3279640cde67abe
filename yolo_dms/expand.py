"""Expanding a model into a larger supernet YAML, the paper's way to search beyond a base model."""

from __future__ import annotations

from ultralytics.utils.ops import make_divisible

from yolo_dms.errors import DMSError
from yolo_dms.prune import searched_yaml
from yolo_dms.supernet import Supernet

WIDTH_LAYERS = {"Conv", "C2f", "C2", "SPPF"}


def expanded_yaml(source: str, width: float = 1.0, depth: float = 1.0, nc: int | None = None) -> dict:
    """Explicit-width YAML of `source` with every width times `width` (multiple of 8) and every C2f depth times
    `depth` (rounded, at least one block where there was one)."""
    if not width >= 1 or not depth >= 1:
        raise DMSError(f"width and depth must be at least 1 to expand a model, got width={width}, depth={depth}")
    cfg = searched_yaml(Supernet.from_source(source, nc=nc))  # the full model, written with explicit widths
    for row in cfg["backbone"] + cfg["head"]:
        if row[2] in WIDTH_LAYERS:
            row[3][0] = make_divisible(row[3][0] * width, 8)
        if row[2] in {"C2f", "C2"} and row[1] > 0:
            row[1] = max(1, round(row[1] * depth))
    return cfg
