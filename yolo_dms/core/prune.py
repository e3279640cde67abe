"""Pruning a supernet to its hard masks: a standard Ultralytics YAML and a stock model of its task with weights.

The YAML is built by stock `parse_model` with `depth_multiple = width_multiple = 1`: each layer's handler
writes its explicit widths, expansion and repeats into its row. Weights are sliced by the kept channel indices
of each channel space, convolution by convolution, as each handler's `Transfer`s say (a removed CSP block's
duplicated `cv2` input is summed onto its source's slice, which keeps the pruned model exact).
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn
from ultralytics.nn.tasks import BaseModel

from yolo_dms.core.handlers import Channels, Space, Transfer
from yolo_dms.core.masks import channels_per_element
from yolo_dms.core.supernet import Supernet
from yolo_dms.core.tasks import stock_model_class


def searched_yaml(supernet: Supernet) -> dict:
    """The supernet's architecture at hard masks as a standard Ultralytics model dict (no `scales`)."""
    counts, blocks = supernet.hard_channel_counts(), supernet.kept_blocks()
    cfg = deepcopy(supernet.yaml)
    for key in ("scales", "yaml_file"):  # `scale` stays: parse_model before 8.4.131 fails on C3k2 without one
        cfg.pop(key, None)
    cfg["depth_multiple"], cfg["width_multiple"] = 1.0, 1.0
    names = getattr(supernet, "names", None)
    if names and any(str(k) != str(v) for k, v in names.items()):
        cfg["names"] = {int(k): str(v) for k, v in names.items()}
    for handler, row in zip(supernet.handlers, cfg["backbone"] + cfg["head"]):
        handler.yaml_row(row, counts, blocks)
    return cfg


def prune(supernet: Supernet) -> BaseModel:
    """A stock model of the supernet's task (`DetectionModel`, `SegmentationModel`, ...) built from
    `searched_yaml`, holding the kept channels and blocks' weights (and the modules kept whole)."""
    cfg = searched_yaml(supernet)
    pruned = stock_model_class(supernet)(deepcopy(cfg), ch=supernet.yaml.get("channels", 3), verbose=False)
    p = next(supernet.parameters())
    pruned.to(device=p.device, dtype=p.dtype)
    for attr in ("names", "args", "pt_path"):
        if hasattr(supernet, attr):
            setattr(pruned, attr, deepcopy(getattr(supernet, attr)))
    pruned.train(supernet.training)
    kept, blocks = supernet.kept_channels(), supernet.kept_blocks()
    written: set[str] = set()
    with torch.no_grad():
        for handler in supernet.handlers:
            for transfer in handler.transfers(supernet.layer_sites(handler.index), blocks):
                written |= _apply(transfer, supernet, pruned, kept)
            for path in handler.kept_whole:
                pruned.get_submodule(path).load_state_dict(supernet.get_submodule(path).state_dict())
                written |= {f"{path}.{k}" for k in pruned.get_submodule(path).state_dict()}
    missing = set(pruned.state_dict()) - written
    if missing:
        raise RuntimeError(f"pruning left {len(missing)} tensors unset, e.g. {sorted(missing)[:3]}")
    return pruned


def _apply(t: Transfer, supernet: Supernet, pruned: BaseModel, kept: dict[Space, torch.Tensor]) -> set[str]:
    """Copy one convolution (and its BatchNorm); returns the pruned state-dict keys written."""
    device = next(supernet.parameters()).device

    def size(c: Channels) -> int:
        if not isinstance(c, Space):
            return c
        mask = supernet.masks[c.mask]
        return mask.size * channels_per_element(mask, c.row)

    def chosen(c: Channels) -> torch.Tensor:
        return kept[c].to(device) if isinstance(c, Space) else torch.arange(c, device=device)

    out_idx = torch.cat([chosen(c) + offset for c, offset in zip(t.outputs, _offsets(map(size, t.outputs)))])
    src_conv: nn.Conv2d = supernet.get_submodule(t.src)
    dst_conv: nn.Conv2d = pruned.get_submodule(t.dst)
    src_weight, dst_weight = src_conv.weight, dst_conv.weight
    if isinstance(src_conv, nn.ConvTranspose2d):  # its weight is laid out (in, out, kh, kw)
        src_weight, dst_weight = src_weight.transpose(0, 1), dst_weight.transpose(0, 1)
    if t.depthwise:  # one filter per channel: only the output channels are chosen
        dst_weight.copy_(src_weight[out_idx])
    else:
        slot_width: dict[int, int] = {}
        for c, slot in t.segments:
            slot_width.setdefault(slot, len(chosen(c)))
        slot_offset = dict(zip(slot_width, _offsets(slot_width.values())))
        src_in, dst_in = [], []
        for (c, slot), offset in zip(t.segments, _offsets(size(c) for c, _ in t.segments)):
            src_in.append(chosen(c) + offset)
            dst_in.append(torch.arange(len(chosen(c)), device=device) + slot_offset[slot])
        weight = torch.zeros_like(dst_weight)
        weight.index_add_(1, torch.cat(dst_in), src_weight[out_idx][:, torch.cat(src_in)].to(weight.dtype))
        dst_weight.copy_(weight)
    written = {f"{t.dst}.weight"}
    if dst_conv.bias is not None:
        dst_conv.bias.copy_(src_conv.bias[out_idx])
        written.add(f"{t.dst}.bias")
    if t.bn:
        src_bn = supernet.get_submodule(t.src.removesuffix("conv") + "bn")
        dst_bn = pruned.get_submodule(t.dst.removesuffix("conv") + "bn")
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst_bn, name).copy_(getattr(src_bn, name)[out_idx])
        dst_bn.num_batches_tracked.copy_(src_bn.num_batches_tracked)
        bn_path = t.dst.removesuffix("conv") + "bn"
        written |= {f"{bn_path}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return written


def _offsets(sizes) -> list[int]:
    """Start offset of each segment in a concatenation of segments of the given sizes."""
    offsets, total = [], 0
    for s in sizes:
        offsets.append(total)
        total += s
    return offsets
