"""Expanding a model into a larger supernet YAML, the paper's way to search beyond a base model."""

from __future__ import annotations

from yolo_dms.core.errors import DMSError
from yolo_dms.core.prune import searched_yaml
from yolo_dms.core.model_io import load_supernet


def expanded_yaml(source: str, width: float = 1.0, depth: float = 1.0, nc: int | None = None) -> dict:
    """Explicit-width YAML of `source` with every width times `width` (multiple of 8) and every CSP depth times
    `depth` (rounded, at least one block where there was one); each layer's handler scales its own row."""
    if not width >= 1 or not depth >= 1:
        raise DMSError(f"width and depth must be at least 1 to expand a model, got width={width}, depth={depth}")
    supernet = load_supernet(source, nc=nc)
    cfg = searched_yaml(supernet)  # the full model, written with explicit widths
    for handler, row in zip(supernet.handlers, cfg["backbone"] + cfg["head"]):
        handler.expand_row(row, width, depth, supernet.divisor)
    return cfg
