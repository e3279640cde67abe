"""Keeping the structure identical on every rank of a multi-GPU search.

DDP averages the keep ratios' gradients like any parameter's, but importance is a buffer updated from each
rank's own backward pass. Ranks must agree on it, or they rank channels differently and prune differently.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from yolo_dms.core.supernet import Supernet


def world_size() -> int:
    """Processes in the default group, 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_importance(supernet: Supernet) -> None:
    """All-reduce every importance buffer to its mean over ranks, in one flat message."""
    if world_size() == 1:
        return
    buffers = [mask.importance for mask in supernet.masks.values()]
    flat = torch.cat([b.flatten() for b in buffers])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()


def broadcast_keep_ratios(supernet: Supernet) -> None:
    """Give every rank rank 0's keep ratios, so rounding differences can never split the structure."""
    if world_size() == 1:
        return
    ratios = supernet.structure_parameters()
    flat = torch.stack([p.detach() for p in ratios])
    dist.broadcast(flat, src=0)
    with torch.no_grad():
        for p, value in zip(ratios, flat):
            p.copy_(value)
