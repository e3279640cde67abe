"""Every mask of a supernet in one batched pass: counts, top-k masks, the gates they feed and importance.

A training step touches every mask: its count, a sort of its importance, its straight-through mask, the
gates of the layers it feeds, and an importance update in the backward pass. Issued mask by mask these are
hundreds of small tensor operations, which a GPU runs faster than the host can issue them. Here the wiring is
compiled once into index tensors, so a step costs a fixed handful of operations whatever the model: one vector
computation for every count (`masks.keep_ratio_counts`, `masks.derived_counts`), one sort ranking every
importance row (`topk.segment_ranks`), one straight-through mask computation over every element
(`topk.straight_through_mask`), one gather for every gate and one hook updating every importance buffer
(`masks.taylor_update`). Nothing is read back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from yolo_dms.core.handlers.base import Layout
from yolo_dms.core.masks import (
    DerivedWidthMask,
    HeadMask,
    KeepRatioMask,
    channels_per_element,
    derived_counts,
    keep_ratio_counts,
    taylor_update,
)
from yolo_dms.core.topk import segment_ranks, straight_through_mask


def _unbuilt() -> None:
    return None


@dataclass
class _Elements:
    """Every importance element of some masks, flat (mask by mask, row by row), and which of them a pass reads."""

    names: list[str]  # masks, in the order their importance buffers are concatenated
    numel: list[int]  # elements of each mask's importance buffer
    mask: torch.Tensor  # per element: its mask's position in `names`
    count: torch.Tensor  # per element: its mask's position in the count vector
    size: torch.Tensor  # per element: its row's length (float64)
    lam: torch.Tensor  # per element: sharpness (float64)
    decay: torch.Tensor  # per element: importance decay (float32)
    keep: torch.Tensor  # per element: 1 - decay computed in float64 (float32)
    start: torch.Tensor  # per element: the flat index where its row starts
    row: torch.Tensor  # per element: its row's number
    read: torch.Tensor  # flat indices the pass reads, in order

    def to(self, device: torch.device) -> _Elements:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return _Elements(**moved)


class MaskBank:
    """The compiled wiring of a supernet's masks (built once from `Supernet.masks`, `gated_convs`, `gated_csps`).

    The count vector holds every keep-ratio mask, then every derived mask in an order where its sources come
    first. The bank holds the gated layers (`conv_modules`, `csp_modules`, looked up once: per pass, finding
    them by path cost more than computing their gates) but no tensor of the masks, which move between devices;
    it is never pickled or copied (checkpoints carry the masks alone; a copied supernet rebuilds its own) and
    keeps one copy of its index tensors per device.
    """

    def __init__(
        self, masks: nn.ModuleDict, gated_convs: dict[str, Layout], gated_csps: dict[str, str], modules
    ) -> None:
        """`modules` maps a layer path to the supernet's module (`Supernet.get_submodule`)."""
        owners = [n for n, m in masks.items() if isinstance(m, KeepRatioMask)]
        derived = [n for n, m in masks.items() if isinstance(m, DerivedWidthMask)]
        self.order, self.levels = list(owners), []
        while derived:  # each level's sources are all counted before it
            level = [n for n in derived if all(s in self.order for s in masks[n].sources)]
            if not level:
                raise ValueError(f"derived masks with sources that are not masks: {derived}")
            derived = [n for n in derived if n not in level]
            self.levels.append(self._level(masks, level))
            self.order += level
        self.position = {n: i for i, n in enumerate(self.order)}
        self.owner_size = torch.tensor([masks[n].size for n in owners], dtype=torch.float64)
        self.owner_divisor = torch.tensor([masks[n].divisor for n in owners], dtype=torch.float64)
        self.forward_elements = self._elements(masks, self.order, list(gated_convs.values()), list(gated_csps.values()))
        self.conv_sizes = [len(self._channels(masks, spaces)) for spaces in gated_convs.values()]
        self.conv_modules = [modules(path) for path in gated_convs]
        self.csp_modules = [modules(path) for path in gated_csps]
        self.block_sizes = [masks[name].size for name in gated_csps.values()]
        self._elements_of: dict[tuple[str, ...], _Elements] = {}  # some masks alone (the resource model's blocks)
        self._on: dict[tuple, object] = {}  # (what, device) -> its tensors there
        self._rank_of: dict[int, tuple] = {}  # id of `_on`'s elements -> (importance buffers, their versions, ranks)

    def __reduce__(self):
        """Never saved nor copied: a supernet rebuilds its bank from its own masks where it needs one."""
        return _unbuilt, ()

    # ------------------------------------------------------------------------------------------- compiling
    def _level(self, masks: nn.ModuleDict, names: list[str]) -> dict[str, torch.Tensor]:
        """One level of derived masks: which counts each sums, and its division, floor and size."""
        pairs = [(i, self.order.index(s)) for i, n in enumerate(names) for s in masks[n].sources]
        return {
            "target": torch.tensor([i for i, _ in pairs]),
            "source": torch.tensor([s for _, s in pairs]),
            "div": torch.tensor([masks[n].div for n in names], dtype=torch.float64),
            "floor": torch.tensor([masks[n].floor for n in names], dtype=torch.float64),
            "size": torch.tensor([masks[n].size for n in names], dtype=torch.float64),
        }

    @staticmethod
    def _channels(masks: nn.ModuleDict, spaces: Layout) -> list[tuple[str, int, int]]:
        """(mask, importance row, element) of every channel of a gated layer's output, in order."""
        channels = []
        for space in spaces:
            mask = masks[space.mask]
            per = channels_per_element(mask, space.row)  # an attention head stands for `per` channels
            row = 0 if isinstance(mask, HeadMask) else space.row
            channels += [(space.mask, row, c // per) for c in range(mask.size * per)]
        return channels

    def _elements(self, masks: nn.ModuleDict, names: list[str], layouts: list[Layout], depths: list[str]) -> _Elements:
        """The elements of `names`, reading the channels of `layouts` then every block of the depth masks `depths`
        (without either: every element, in order)."""
        rows = [(n, r) for n in names for r in range(masks[n].spaces)]
        first, offset = {}, 0
        for name, row in rows:
            first[name, row] = offset
            offset += masks[name].size
        elements = [(i, n, r) for i, (n, r) in enumerate(rows) for _ in range(masks[n].size)]
        channels = [c for spaces in layouts for c in self._channels(masks, spaces)]
        read = [first[name, row] + element for name, row, element in channels]
        read += [first[n, 0] + e for n in depths for e in range(masks[n].size)]

        def per_element(value, dtype=None) -> torch.Tensor:
            return torch.tensor([value(i, n, r) for i, n, r in elements], dtype=dtype)

        return _Elements(
            names=list(names),
            numel=[masks[n].importance.numel() for n in names],
            mask=per_element(lambda i, n, r: names.index(n)),
            count=per_element(lambda i, n, r: self.position[n]),
            size=per_element(lambda i, n, r: masks[n].size, torch.float64),
            lam=per_element(lambda i, n, r: masks[n].lam, torch.float64),
            decay=per_element(lambda i, n, r: masks[n].decay, torch.float32),
            keep=per_element(lambda i, n, r: 1.0 - masks[n].decay, torch.float64).float(),
            start=per_element(lambda i, n, r: first[n, r]),
            row=per_element(lambda i, n, r: i),
            read=torch.tensor(read) if read else torch.arange(len(elements)),
        )

    def _on_device(self, what, device: torch.device, move):
        """`move(device)`, computed once per device."""
        if (what, device) not in self._on:
            self._on[what, device] = move(device)
        return self._on[what, device]

    # ------------------------------------------------------------------------------------------- one pass
    def owner_parameters(self, masks: nn.ModuleDict) -> list[nn.Parameter]:
        """The keep ratio parameter of every keep-ratio mask, in `order` (the first entries of the count vector)."""
        return [masks[n].keep_ratio for n in self.order[: len(self.owner_size)]]

    def owner_ratios(self, masks: nn.ModuleDict) -> torch.Tensor:
        """The keep ratios of `owner_parameters`, stacked."""
        return torch.stack(self.owner_parameters(masks))

    def counts(self, masks: nn.ModuleDict, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Straight-through count of every mask in `order` (float64): value the hard count
        (`KeepRatioMask.hard_count`, `DerivedWidthMask.derive_hard`), gradient that of the continuous counts.

        `ratios` (default: the masks' own, `owner_ratios`) may be a `[candidates, owners]` batch of keep ratios
        (in the keep ratios' dtype): the counts are then `[candidates, masks]`, row by row what the masks would
        count at those ratios, in one pass (the batched projection evaluates many structures so)."""
        ratios = self.owner_ratios(masks) if ratios is None else ratios
        device = ratios.device
        size, divisor = self._on_device("owners", device, lambda d: (self.owner_size.to(d), self.owner_divisor.to(d)))
        counts = keep_ratio_counts(ratios, size, divisor)
        levels = self._on_device("levels", device, lambda d: [{k: v.to(d) for k, v in x.items()} for x in self.levels])
        for level in levels:
            summed = counts.index_select(-1, level["source"])
            zeros = level["div"].new_zeros(counts.shape[:-1] + level["div"].shape)
            sources = zeros.index_add(-1, level["target"], summed)
            counts = torch.cat([counts, derived_counts(sources, level["div"], level["floor"], level["size"])], -1)
        return counts

    def gates(
        self, masks: nn.ModuleDict, hard: bool, grad_scale: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """This pass's gates: the output channels of every gated Conv concatenated (in `gated_convs` order), and
        the block gates of each CSP layer (in `gated_csps` order).

        Training (`hard` False): straight-through masks (hard values, the relaxation's gradient), and in a
        grad-enabled pass the task gradient reaching them updates importance (divided by `grad_scale`).
        Evaluation: the same hard values, detached.
        """
        counts = self.counts(masks)
        elements = self._on_device("forward", counts.device, self.forward_elements.to)
        values = self._masks(masks, elements, counts, track=not hard, grad_scale=grad_scale)
        values = values.detach() if hard else values
        channels, *blocks = values.split([sum(self.conv_sizes), *self.block_sizes])
        return channels, tuple(blocks)

    def masks_of(self, masks: nn.ModuleDict, names: tuple[str, ...], counts: torch.Tensor) -> torch.Tensor:
        """Every element of the masks `names`, concatenated, straight-through and untracked (the resource model
        reads block gates so, so the resource gradient never counts as importance); `[candidates, elements]` for a
        batch of count vectors (`counts` of a batch of keep ratios)."""
        if names not in self._elements_of:
            self._elements_of[names] = self._elements(masks, list(names), [], [])
        elements = self._on_device(names, counts.device, self._elements_of[names].to)
        return self._masks(masks, elements, counts, track=False)

    def _masks(
        self, masks: nn.ModuleDict, elements: _Elements, counts: torch.Tensor, track: bool, grad_scale=1.0
    ) -> torch.Tensor:
        """The elements `elements.read` of the straight-through masks (flat), with the importance hook."""
        rank = self._ranks(masks, elements)
        removed = elements.size - counts.index_select(-1, elements.count)  # [..., elements] for batched counts
        st, relaxation = straight_through_mask(rank, removed, elements.lam)
        if track and torch.is_grad_enabled():
            if not st.requires_grad:
                st.requires_grad_()
            st.register_hook(self._accumulate_taylor(masks, elements, relaxation.detach(), grad_scale))
        return st.index_select(-1, elements.read)

    def _ranks(self, masks: nn.ModuleDict, elements: _Elements) -> torch.Tensor:
        """Every element's rank by importance within its mask (float64), recomputed only when an importance buffer
        changed since (a structure step evaluates the resource figure three times on the same importance)."""
        buffers = [masks[n].importance for n in elements.names]
        versions = [b._version for b in buffers]  # bumped by every in-place update; a host-side counter, no sync
        cached = self._rank_of.get(id(elements))
        if cached is not None and cached[1] == versions and all(a is b for a, b in zip(cached[0], buffers)):
            return cached[2]
        importance = torch.cat([b.view(-1) for b in buffers])
        rank = segment_ranks(importance, elements.start, elements.row).double()
        self._rank_of[id(elements)] = (buffers, versions, rank)  # holds the buffers: their ids stay theirs
        return rank

    @staticmethod
    def _accumulate_taylor(masks: nn.ModuleDict, elements: _Elements, relaxation: torch.Tensor, grad_scale):
        """Hook folding `(m dL/dm)^2` into every importance buffer at once (`taylor_update`); a mask with a
        non-finite score anywhere (an AMP overflow) keeps its whole importance as it was. Decided on the device, so
        the backward pass never waits for the host."""

        def hook(grad: torch.Tensor) -> None:
            buffers = [masks[n].importance.view(-1) for n in elements.names]
            importance = torch.cat(buffers)
            updated, finite = taylor_update(importance, relaxation, grad, grad_scale, elements.decay, elements.keep)
            failed = torch.zeros(len(buffers), device=grad.device).index_add_(0, elements.mask, (~finite).float())
            updated = torch.where(failed.index_select(0, elements.mask) == 0, updated, importance)
            torch._foreach_copy_(buffers, list(updated.split(elements.numel)))

        return hook
