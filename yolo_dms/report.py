"""Human-readable reports of a supernet's structure: per-layer widths, depths, GFLOPs and parameters."""

from __future__ import annotations

import torch

from yolo_dms.masks import DepthMask
from yolo_dms.resources import ResourceModel
from yolo_dms.supernet import Supernet


def layer_table(supernet: Supernet, imgsz: int = 640) -> str:
    """A table of every layer at the current hard masks, with totals, like Ultralytics' model summary."""
    resources = ResourceModel(supernet, imgsz)
    per_layer = resources.per_layer()
    counts = supernet.hard_channel_counts()
    masks = supernet.masks
    lines = [f"{'layer':>5}  {'module':<12}{'width':>12}{'hidden':>12}{'blocks':>8}{'GFLOPs':>10}{'params':>12}"]
    for i, layer in enumerate(supernet.model):
        name = type(layer).__name__.removeprefix("DepthGated").removeprefix("Gated")
        width = f"{counts[f'l{i}']}/{masks[f'l{i}'].size}" if f"l{i}" in counts else ""
        hidden = f"{counts[f'l{i}_hidden']}/{masks[f'l{i}_hidden'].size}" if f"l{i}_hidden" in counts else ""
        depth = masks[f"l{i}_depth"] if f"l{i}_depth" in masks else None
        blocks = f"{depth.hard_count()}/{depth.size}" if isinstance(depth, DepthMask) else ""
        gflops, params = per_layer.get(i, (0.0, 0))
        lines.append(f"{i:>5}  {name:<12}{width:>12}{hidden:>12}{blocks:>8}{gflops:>10.3f}{params:>12,}")
    with torch.no_grad():
        total_gflops, total_params = float(resources.gflops()), round(float(resources.params()))
    lines.append(f"total at imgsz={imgsz}: {total_gflops:.3f} GFLOPs, {total_params:,} parameters")
    return "\n".join(lines)
