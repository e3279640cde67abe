"""Pruning a supernet to its hard masks: a standard Ultralytics YAML and a stock `DetectionModel` with weights.

The YAML is built by stock `parse_model` with `depth_multiple = width_multiple = 1`, explicit widths, a
per-C2f `e` and repeats. Weights are sliced by the kept channel indices of each channel space. A removed
C2f bottleneck is the identity, so its concatenated output duplicates its input: `cv2`'s weight slices for
such duplicates are summed onto the slice of the source (a convolution is linear before its BatchNorm),
which keeps the pruned model's outputs equal to the supernet's at hard masks.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.modules import C2, C2f, SPPF
from ultralytics.nn.tasks import DetectionModel

from yolo_dms.supernet import Channels, ConvSite, GatedConv, Space, Supernet, csp_block_output_row, csp_chain_row


def csp_expansion(c2: int, hidden: int) -> float:
    """A short `e` with `int(c2 * e) == hidden`, which is how C2f derives its hidden width."""
    for digits in range(2, 10):
        e = round(hidden / c2, digits)
        if int(c2 * e) == hidden:
            return e
    return (hidden + 0.5) / c2


def searched_yaml(supernet: Supernet) -> dict:
    """The supernet's architecture at hard masks as a standard Ultralytics model dict (no `scales`)."""
    counts, blocks = supernet.hard_channel_counts(), supernet.kept_blocks()
    cfg = deepcopy(supernet.yaml)
    for key in ("scales", "scale", "yaml_file"):
        cfg.pop(key, None)
    cfg["depth_multiple"], cfg["width_multiple"] = 1.0, 1.0
    names = getattr(supernet, "names", None)
    if names and any(str(k) != str(v) for k, v in names.items()):
        cfg["names"] = {int(k): str(v) for k, v in names.items()}
    for i, (layer, row) in enumerate(zip(supernet.model, cfg["backbone"] + cfg["head"])):
        if isinstance(layer, GatedConv | SPPF):
            row[3][0] = counts[f"l{i}"]
        elif isinstance(layer, C2f | C2):
            shortcut = bool(row[3][1]) if len(row[3]) > 1 else False
            c2, hidden = counts[f"l{i}"], counts[f"l{i}_hidden"]
            row[1] = len(blocks.get(f"l{i}_depth", []))
            row[3] = [c2, shortcut, 1, csp_expansion(c2, hidden)]
    return cfg


@dataclass(frozen=True)
class Transfer:
    """Copy one supernet convolution into the pruned model.

    `segments` lists the supernet's input segments in order, each as (the channel space whose values flow
    there at hard masks, the pruned input slot it feeds); segments feeding the same slot are summed.
    """

    dst: str
    src: str
    outputs: tuple[Channels, ...]
    segments: tuple[tuple[Channels, int], ...]
    bn: bool


def prune(supernet: Supernet) -> DetectionModel:
    """A stock `DetectionModel` built from `searched_yaml`, holding the kept channels and blocks' weights."""
    cfg = searched_yaml(supernet)
    pruned = DetectionModel(deepcopy(cfg), ch=supernet.yaml.get("channels", 3), verbose=False)
    p = next(supernet.parameters())
    pruned.to(device=p.device, dtype=p.dtype)
    for attr in ("names", "args", "pt_path"):
        if hasattr(supernet, attr):
            setattr(pruned, attr, deepcopy(getattr(supernet, attr)))
    pruned.train(supernet.training)
    kept = supernet.kept_channels()
    written: set[str] = set()
    with torch.no_grad():
        for transfer in _transfers(supernet):
            written |= _apply(transfer, supernet, pruned, kept)
    missing = set(pruned.state_dict()) - written
    if missing:
        raise RuntimeError(f"pruning left {len(missing)} tensors unset, e.g. {sorted(missing)[:3]}")
    return pruned


def _transfers(supernet: Supernet) -> list[Transfer]:
    """One `Transfer` per convolution of the pruned model."""
    transfers = []
    blocks = supernet.kept_blocks()
    for i, layer in enumerate(supernet.model):
        sites = [s for s in supernet.sites if s.path.startswith(f"model.{i}.")]
        if isinstance(layer, C2f | C2):
            transfers += _csp_transfers(i, layer, sites, blocks.get(f"l{i}_depth", []))
        else:
            transfers += [_plain_transfer(site) for site in sites]
    return transfers


def _plain_transfer(site: ConvSite, dst: str | None = None) -> Transfer:
    segments = tuple((c, slot) for slot, (c, _) in enumerate(site.inputs))
    return Transfer(dst or site.path, site.path, site.outputs, segments, site.bn)


def _csp_transfers(i: int, layer: C2f | C2, sites: list[ConvSite], kept_blocks: list[int]) -> list[Transfer]:
    """C2f / C2: renumber kept bottlenecks, feed each from the last kept output, merge duplicated cv2 inputs."""
    by_path = {s.path: s for s in sites}
    n, shortcut = len(layer.m), bool(len(layer.m) and layer.m[0].add)
    hidden, chain = f"l{i}_hidden", csp_chain_row(layer)
    half_a, half_b = Space(hidden, 0), Space(hidden, 1)
    transfers = [_plain_transfer(by_path[f"model.{i}.cv1.conv"])]
    # what the next block reads: its chain's half at first, then the last kept block's output
    source, source_slot = Space(hidden, chain), chain
    cv2_segments: list[tuple[Channels, int]] = [(half_a, 0), (half_b, 1)]
    for j in range(n):
        if j in kept_blocks:
            t = kept_blocks.index(j)
            inner, out = Space(hidden, 2 + j), Space(hidden, csp_block_output_row(n, j, shortcut, chain))
            src, dst = f"model.{i}.m.{j}", f"model.{i}.m.{t}"
            transfers.append(Transfer(f"{dst}.cv1.conv", f"{src}.cv1.conv", (inner,), ((source, 0),), True))
            transfers.append(Transfer(f"{dst}.cv2.conv", f"{src}.cv2.conv", (out,), ((inner, 0),), True))
            source, source_slot = out, 2 + t
        cv2_segments.append((source, source_slot))  # a removed block passes its input through
    if isinstance(layer, C2):  # C2 concatenates only the chain's end with the b half
        cv2_segments = [(source, 0), (half_b, 1)]
    cv2 = by_path[f"model.{i}.cv2.conv"]
    transfers.append(Transfer(cv2.path, cv2.path, cv2.outputs, tuple(cv2_segments), True))
    return transfers


def _apply(t: Transfer, supernet: Supernet, pruned: DetectionModel, kept: dict[Space, torch.Tensor]) -> set[str]:
    """Copy one convolution (and its BatchNorm); returns the pruned state-dict keys written."""
    device = next(supernet.parameters()).device

    def size(c: Channels) -> int:
        return supernet.masks[c.mask].size if isinstance(c, Space) else c

    def chosen(c: Channels) -> torch.Tensor:
        return kept[c].to(device) if isinstance(c, Space) else torch.arange(c, device=device)

    out_idx = torch.cat([chosen(c) + offset for c, offset in zip(t.outputs, _offsets(map(size, t.outputs)))])
    slot_width: dict[int, int] = {}
    for c, slot in t.segments:
        slot_width.setdefault(slot, len(chosen(c)))
    slot_offset = dict(zip(slot_width, _offsets(slot_width.values())))
    src_in, dst_in = [], []
    for (c, slot), offset in zip(t.segments, _offsets(size(c) for c, _ in t.segments)):
        src_in.append(chosen(c) + offset)
        dst_in.append(torch.arange(len(chosen(c)), device=device) + slot_offset[slot])
    src_conv: nn.Conv2d = supernet.get_submodule(t.src)
    dst_conv: nn.Conv2d = pruned.get_submodule(t.dst)
    weight = torch.zeros_like(dst_conv.weight)
    weight.index_add_(1, torch.cat(dst_in), src_conv.weight[out_idx][:, torch.cat(src_in)].to(weight.dtype))
    dst_conv.weight.copy_(weight)
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
