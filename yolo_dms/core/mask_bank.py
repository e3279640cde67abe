"""Every mask of a supernet in one batched pass: counts, top-k masks, the gates they feed and importance.

Mask by mask, a training step cost hundreds of small tensor operations (a sort, a sigmoid, a count, a hook per
mask; a concatenation per gated layer), which a GPU runs faster than the host can issue them. Here the
wiring is compiled once into index tensors, so a step costs a fixed handful of operations whatever the model:
one vector computation for every count, one sort over every importance row (rows of different lengths padded
in front with -inf, which ranks below any score), one gather for every gate and one hook updating every
importance buffer. It computes exactly what the masks' own methods compute (`ImportanceMask.soft_masks`,
`KeepRatioMask.count`, `DerivedWidthMask.derive_count`, `ImportanceMask._accumulate_taylor`) and reads nothing
back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from yolo_dms.core.handlers.base import Layout
from yolo_dms.core.handlers.heads import HeadMask, channels_per_element
from yolo_dms.core.masks import DerivedWidthMask, KeepRatioMask, derived_counts, keep_ratio_counts, taylor_update
from yolo_dms.core.topk import straight_through_topk


def _unbuilt() -> None:
    return None


@dataclass
class _Rows:
    """The importance rows of some masks, padded to one width, and which of their elements a pass reads."""

    names: list[str]  # masks, in the order their importance buffers are concatenated
    numel: list[int]  # elements of each mask's importance buffer
    count: torch.Tensor  # per row: its mask's position in the count vector
    size: torch.Tensor  # per row: its number of elements (float64)
    lam: torch.Tensor  # per row: sharpness (float64)
    decay: torch.Tensor  # per row: importance decay (float32, column)
    keep: torch.Tensor  # per row: 1 - decay computed in float64 (float32, column)
    owner: torch.Tensor  # per row: its mask's position in `names`
    width: int  # padded row length
    elements: torch.Tensor  # flat padded position of every importance element, in concatenation order
    read: torch.Tensor  # flat padded positions the pass reads, in order

    def to(self, device: torch.device) -> _Rows:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return _Rows(**moved)


class MaskBank:
    """The compiled wiring of a supernet's masks (built once from `Supernet.masks`, `gated_convs`, `gated_csps`).

    The count vector holds every keep-ratio mask, then every derived mask in an order where its sources come
    first. The bank holds no reference to the masks (it is handed them), is never pickled (checkpoints carry
    the masks alone; a copied supernet rebuilds its own) and keeps one copy of its index tensors per device.
    """

    def __init__(self, masks: nn.ModuleDict, gated_convs: dict[str, Layout], gated_csps: dict[str, str]) -> None:
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
        self.forward_rows = self._rows(masks, self.order, list(gated_convs.values()), list(gated_csps.values()))
        self.conv_sizes = [len(self._channels(masks, spaces)) for spaces in gated_convs.values()]
        self.block_sizes = [masks[name].size for name in gated_csps.values()]
        self._rows_of: dict[tuple[str, ...], _Rows] = {}  # rows of some masks alone (the resource model's blocks)
        self._on: dict[tuple, object] = {}  # (what, device) -> its tensors there

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

    def _rows(self, masks: nn.ModuleDict, names: list[str], layouts: list[Layout], depths: list[str]) -> _Rows:
        """Rows of `names`, reading the channels of `layouts` then every block of the depth masks `depths`
        (without either: every element, in concatenation order)."""
        rows = [(n, r) for n in names for r in range(masks[n].spaces)]
        start = {n: next(i for i, (m, _) in enumerate(rows) if m == n) for n in names}
        width = max(masks[n].size for n in names)

        def flat(name: str, row: int, element: int) -> int:
            return (start[name] + row) * width + width - masks[name].size + element

        elements = [flat(n, r, e) for n, r in rows for e in range(masks[n].size)]
        read = [flat(*c) for spaces in layouts for c in self._channels(masks, spaces)]
        read += [flat(n, 0, e) for n in depths for e in range(masks[n].size)]
        decay = [masks[n].decay for n, _ in rows]
        return _Rows(
            names=list(names),
            numel=[masks[n].importance.numel() for n in names],
            count=torch.tensor([self.position[n] for n, _ in rows]),
            size=torch.tensor([masks[n].size for n, _ in rows], dtype=torch.float64),
            lam=torch.tensor([masks[n].lam for n, _ in rows], dtype=torch.float64),
            decay=torch.tensor(decay, dtype=torch.float32)[:, None],
            keep=torch.tensor([1.0 - d for d in decay], dtype=torch.float64).float()[:, None],
            owner=torch.tensor([names.index(n) for n, _ in rows]),
            width=width,
            elements=torch.tensor(elements),
            read=torch.tensor(read) if read else torch.tensor(elements),
        )

    def _on_device(self, what, device: torch.device, move):
        """`move(device)`, computed once per device."""
        if (what, device) not in self._on:
            self._on[what, device] = move(device)
        return self._on[what, device]

    # ------------------------------------------------------------------------------------------- one pass
    def counts(self, masks: nn.ModuleDict) -> torch.Tensor:
        """Straight-through count of every mask in `order` (float64): value the hard count, gradient that of the
        continuous counts, as `KeepRatioMask.count` and `DerivedWidthMask.derive_count` give them."""
        ratios = torch.stack([masks[n].keep_ratio for n in self.order[: len(self.owner_size)]])
        size, divisor = self._on_device("owners", ratios.device, lambda d: (self.owner_size.to(d), self.owner_divisor.to(d)))
        counts = keep_ratio_counts(ratios, size, divisor)
        levels = self._on_device("levels", ratios.device, lambda d: [{k: v.to(d) for k, v in lv.items()} for lv in self.levels])
        for level in levels:
            sources = torch.zeros_like(level["div"]).index_add(0, level["target"], counts[level["source"]])
            counts = torch.cat([counts, derived_counts(sources, level["div"], level["floor"], level["size"])])
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
        rows = self._on_device("forward", counts.device, self.forward_rows.to)
        values = self._masks(masks, rows, counts, track=not hard, grad_scale=grad_scale)
        values = values.detach() if hard else values
        channels, *blocks = values.split([sum(self.conv_sizes), *self.block_sizes])
        return channels, tuple(blocks)

    def rows(self, masks: nn.ModuleDict, names: tuple[str, ...], counts: torch.Tensor) -> torch.Tensor:
        """Every element of the masks `names`, concatenated, straight-through and untracked (the resource model
        reads block gates so, so the resource gradient never counts as importance)."""
        if names not in self._rows_of:
            self._rows_of[names] = self._rows(masks, list(names), [], [])
        rows = self._on_device(names, counts.device, self._rows_of[names].to)
        return self._masks(masks, rows, counts, track=False)

    def _masks(
        self, masks: nn.ModuleDict, rows: _Rows, counts: torch.Tensor, track: bool, grad_scale=1.0
    ) -> torch.Tensor:
        """The elements `rows.read` of the straight-through masks of `rows` (flat), with the importance hook."""
        importance = self._importance(masks, rows)
        st, relaxation = straight_through_topk(importance, counts[rows.count], rows.lam, rows.size)
        if track and torch.is_grad_enabled():
            if not st.requires_grad:
                st.requires_grad_()
            st.register_hook(self._accumulate_taylor(masks, rows, relaxation.detach(), grad_scale))
        return st.view(-1)[rows.read]

    @staticmethod
    def _importance(masks: nn.ModuleDict, rows: _Rows) -> torch.Tensor:
        """The rows' importance, padded in front with -inf to one width."""
        flat = torch.cat([masks[n].importance.view(-1) for n in rows.names])
        padded = flat.new_full((len(rows.size), rows.width), float("-inf"))
        return padded.view(-1).index_put_((rows.elements,), flat).view(padded.shape)

    def _accumulate_taylor(self, masks: nn.ModuleDict, rows: _Rows, relaxation: torch.Tensor, grad_scale):
        """Hook folding `(m dL/dm)^2` into every importance buffer at once; a mask with a non-finite score (an AMP
        overflow) keeps its importance, as `ImportanceMask._accumulate_taylor` decides mask by mask."""

        def hook(grad: torch.Tensor) -> None:
            importance = self._importance(masks, rows)
            updated, finite = taylor_update(importance, relaxation, grad, grad_scale, rows.decay, rows.keep)
            failed = torch.zeros(len(rows.names), device=grad.device).index_add(0, rows.owner, (~finite).float())
            updated = torch.where((failed == 0)[rows.owner][:, None], updated, importance)
            buffers = [masks[n].importance.view(-1) for n in rows.names]
            torch._foreach_copy_(buffers, list(updated.view(-1)[rows.elements].split(rows.numel)))

        return hook
