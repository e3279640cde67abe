"""Attention heads kept or dropped whole: the only exact way to narrow an Ultralytics `Attention`.

`Attention` recomputes `num_heads = max(c // 64, 1)` from its width when the YAML is rebuilt, splits `qkv`
per head into `key_dim`, `key_dim`, `head_dim` channels and scales by `key_dim ** -0.5`. A block of `nh >= 2`
heads narrowed to `k * head_dim` channels rebuilds with exactly `k` heads of the same split and scale, so
dropping whole heads (and nothing inside a head) keeps the pruned model exact.
"""

from __future__ import annotations

import torch

from yolo_dms.core.masks import DerivedWidthMask


class HeadMask(DerivedWidthMask):
    """The heads of one `Attention`, counted as `width // head_dim` of its block's width, ranked by importance.

    Its spaces are views of the same heads in channels, `units[row]` consecutive channels per head: `qkv`'s
    output (`2 key_dim + head_dim` per head) and the values that `pe` and `proj` read (`head_dim` per head).
    """

    def __init__(self, heads: int, sources: tuple[str, ...], head_dim: int, units: tuple[int, ...]) -> None:
        super().__init__(heads, sources, div=head_dim, floor=1, spaces=1)
        self.units = tuple(units)

    def _views(self, heads: torch.Tensor) -> list[torch.Tensor]:
        return [heads[0].repeat_interleave(unit) for unit in self.units]

    def soft_masks(self, count: torch.Tensor, track: bool = True) -> list[torch.Tensor]:
        return self._views(super().soft_masks(count, track))

    def hard_masks(self, count: int) -> list[torch.Tensor]:
        return self._views(super().hard_masks(count))

    def kept(self, count: int) -> list[torch.Tensor]:
        heads = super().kept(count)[0]
        return [(heads[:, None] * unit + torch.arange(unit, device=heads.device)).flatten() for unit in self.units]


def channels_per_element(mask, row: int) -> int:
    """Channels one counted element of `mask` stands for in space `row` (a head's width, or one channel)."""
    return mask.units[row] if isinstance(mask, HeadMask) else 1
