"""Human-readable reports of a supernet's structure: per-layer widths, depths, GFLOPs and parameters."""

from __future__ import annotations

import torch

from yolo_dms.core.handlers import Space
from yolo_dms.core.imgsz import checked_imgsz, model_stride
from yolo_dms.core.latency import resource_model
from yolo_dms.core.latency_backends import LatencyBackend
from yolo_dms.core.masks import DepthMask, channels_per_element
from yolo_dms.core.resources import TRAINING_GRAPH
from yolo_dms.core.supernet import Supernet


def layer_table(
    supernet: Supernet, imgsz: int | list[int] = 640, latency: LatencyBackend | None = None, refresh: bool = False
) -> str:
    """A table of every layer at the current hard masks, with totals, like Ultralytics' model summary.

    GFLOPs and parameters are the pruned model's as deployed (the total line says which figure that is,
    `ResourceModel.counted_as`, and where it differs also gives pruned.pt's as saved, `training_graph()`).
    `imgsz` is a side or an [h, w] pair, rounded up to the model's stride as Ultralytics rounds it. With a
    `latency` backend, a column of each layer's share of the predicted milliseconds (they sum to the total),
    from its latency model (measured now, or read from its cache; `refresh` measures it again).
    """
    h, w = checked_imgsz(imgsz, model_stride(supernet), square=False)
    resources = resource_model(supernet, (h, w), "latency" if latency else "gflops", latency, refresh)
    per_layer = resources.per_layer()
    layer_ms: dict[int, float] = {}
    if latency:
        with torch.no_grad():
            for layer, ms in zip(resources.layer, resources.latency.per_site().tolist()):
                layer_ms[layer] = layer_ms.get(layer, 0.0) + ms
    counts = supernet.hard_channel_counts()
    masks = supernet.masks

    def channels(layout, count) -> int:  # a layout's channels at `count(mask name)` elements per searched space
        return sum(count(c.mask) * channels_per_element(masks[c.mask], c.row) if isinstance(c, Space) else c
                   for c in layout)

    lines = [f"{'layer':>5}  {'module':<12}{'width':>12}{'hidden':>12}{'blocks':>8}{'GFLOPs':>10}{'params':>12}"
             + (f"{'ms':>9}" if latency else "")]
    for i, layer in enumerate(supernet.model):
        name = type(layer).__name__.removeprefix("DepthGated").removeprefix("Gated")
        layout = supernet.layouts[i]
        searched = any(isinstance(c, Space) for c in layout)
        width = f"{channels(layout, counts.get)}/{channels(layout, lambda n: masks[n].size)}" if searched else ""
        hidden = f"{counts[f'l{i}_hidden']}/{masks[f'l{i}_hidden'].size}" if f"l{i}_hidden" in counts else ""
        depth = masks[f"l{i}_depth"] if f"l{i}_depth" in masks else None
        blocks = f"{depth.hard_count()}/{depth.size}" if isinstance(depth, DepthMask) else ""
        gflops, params = per_layer.get(i, (0.0, 0))
        ms = f"{layer_ms.get(i, 0.0):>9.3f}" if latency else ""
        lines.append(f"{i:>5}  {name:<12}{width:>12}{hidden:>12}{blocks:>8}{gflops:>10.4g}{params:>12,}{ms}")
    with torch.no_grad():
        total_gflops, total_params = float(resources.gflops()), round(float(resources.params()))
    size = h if h == w else f"[{h}, {w}]"
    total = f"total at imgsz={size}: {total_gflops:.4g} GFLOPs, {total_params:,} parameters, {resources.counted_as}"
    if resources.fused:  # what stock `get_flops` and `model.info()` give for pruned.pt before `fuse()`
        saved_gflops, saved_params = resources.training_graph()
        total += f" ({TRAINING_GRAPH}: {saved_gflops:.4g} GFLOPs, {saved_params:,} parameters)"
    if latency:
        with torch.no_grad():
            predicted = resources.latency.ms().item()
        backend = resources.latency.table.backend
        total += f"; {predicted:.3f} ms predicted ({backend}, batch 1; the ms column sums to it)"
    lines.append(total)
    return "\n".join(lines)
