"""Width, depth and head masks: one learnable keep ratio each (or a count derived from others), and per-element
Taylor importance that decides which elements a count keeps.

A mask may serve several spaces that must keep the same count (the halves and bottleneck widths of one C2f);
each space has its own importance row, and rank normalization gives them equal counts at equal thresholds.
The masks hold the state; `MaskBank` (`core/mask_bank.py`) computes every mask's training values and
importance update in one batched pass, from the count and update functions defined here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yolo_dms.core.topk import kept_count, kept_count_tensor, kept_indices


def straight_through(hard: float | torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """A value that reads `hard` in the forward pass and carries the gradient of `soft` in the backward pass."""
    return soft - soft.detach() + hard


def keep_ratio_counts(keep_ratio: torch.Tensor, size, divisor) -> torch.Tensor:
    """Straight-through counts of keep-ratio masks (one or a vector of them), float64 on the keep ratios' device.

    Value: `ceil(k N)` rounded half to even to a multiple of `divisor` (at least one multiple where `divisor` >
    1), at most N, exactly `KeepRatioMask.hard_count`; gradient: that of the continuous count `k N`.
    """
    size = torch.as_tensor(size, dtype=torch.float64, device=keep_ratio.device)
    divisor = torch.as_tensor(divisor, dtype=torch.float64, device=keep_ratio.device)
    exact = kept_count_tensor(keep_ratio, size)
    rounded = torch.maximum(torch.round(exact / divisor) * divisor, divisor)  # torch.round and round: half to even
    exact = torch.minimum(torch.where(divisor > 1, rounded, exact), size)
    return straight_through(exact, (keep_ratio * size.to(keep_ratio.dtype)).double())


def derived_counts(source_count: torch.Tensor, div, floor, size) -> torch.Tensor:
    """Straight-through counts of derived masks from their sources' summed straight-through count (vectors or
    scalars): value `min(size, max(floor, source // div))` as `parse_model` computes it, exactly
    `DerivedWidthMask.derive_hard`; gradient of the continuous `source / div` (zero where the floor or the size
    holds it)."""
    low, high = (torch.as_tensor(v, dtype=torch.float64, device=source_count.device) for v in (floor, size))
    exact = torch.div(source_count.detach(), div, rounding_mode="floor").clamp(low, high)
    return straight_through(exact, torch.clamp(source_count / div, low, high).double())


def taylor_update(
    importance: torch.Tensor, relaxation: torch.Tensor, grad: torch.Tensor, grad_scale, decay, keep
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Moving average `decay * importance + keep * (m dL/dm)^2`, whether each element's score is finite).

    `m` is the mask's relaxation (the sigmoid), so the elements just removed keep a score and can return;
    `keep` is `1 - decay` computed in float64 as the caller's float32 would not. `grad_scale` (AMP's loss scale,
    a float or a tensor read without a host sync) is divided out so importance does not depend on it.
    """
    score = (relaxation * grad / grad_scale).float().pow(2).to(importance.dtype)
    return importance * decay + score * keep, torch.isfinite(score)


class ImportanceMask(nn.Module):
    """Importance scores of `spaces` x `size` elements, and which elements they keep for a given count.

    Importance is a moving average of the Taylor score `(m * dL/dm)^2` of the training mask `m` (`taylor_update`),
    folded in by the mask bank's gradient hook in the backward pass. It is a buffer, never trained. `lam` is the
    sharpness of the mask's sigmoid relaxation, `decay` the moving average's.
    """

    def __init__(self, size: int, spaces: int = 1, lam: float = 1.0, decay: float = 0.99) -> None:
        super().__init__()
        if size < 1 or spaces < 1:
            raise ValueError(f"a mask needs at least one element and one space, got size={size}, spaces={spaces}")
        self.size, self.spaces, self.lam, self.decay = size, spaces, lam, decay
        self.register_buffer("importance", torch.zeros(spaces, size))

    def _apply(self, fn, recurse=True):
        """Move like any module but keep float32 values: half precision would shift keep counts and ranks."""
        own = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        exact = [t.data.clone() for t in own]
        super()._apply(fn, recurse)
        for tensor, value in zip([*self.parameters(recurse=False), *self.buffers(recurse=False)], exact):
            tensor.data = value.to(tensor.device)
        return self

    def kept(self, count: int) -> list[torch.Tensor]:
        """Per space, the sorted indices of the `count` most important elements, the ones pruning keeps."""
        return [kept_indices(row, count) for row in self.importance]


class KeepRatioMask(ImportanceMask):
    """A mask whose count is set by its own learnable keep ratio, the DMS structural parameter.

    `divisor` rounds the hard count to a multiple (output widths must be multiples of 8 for `parse_model`);
    `min_ratio` is the clamp floor (1/(2N) for widths, so a layer never loses all channels; 0 for depths).
    """

    def __init__(
        self, size: int, spaces: int = 1, lam: float = 1.0, decay: float = 0.99, divisor: int = 1, min_ratio=None
    ) -> None:
        super().__init__(size, spaces, lam, decay)
        self.divisor = divisor
        self.min_ratio = 1.0 / (2 * size) if min_ratio is None else min_ratio
        self.keep_ratio = nn.Parameter(torch.tensor(1.0))

    def set_keep_ratio(self, value: float) -> None:
        """Set the keep ratio, refusing values the search could never reach."""
        if math.isnan(value) or not self.min_ratio <= value <= 1.0:
            low = "[0" if self.min_ratio == 0 else "(0"
            raise ValueError(f"keep ratio must lie in {low}, 1], got {value}")
        with torch.no_grad():
            self.keep_ratio.fill_(value)

    def hard_count(self, keep_ratio: float | None = None) -> int:
        """Elements kept at hard masks: ceil(k N), rounded to the nearest multiple of `divisor` (at least one).

        `keep_ratio` is this mask's ratio already read to the host (the supernet reads all of them at once).
        """
        count = kept_count(self.keep_ratio.item() if keep_ratio is None else keep_ratio, self.size)
        if self.divisor > 1:
            count = max(self.divisor, round(count / self.divisor) * self.divisor)
        return min(self.size, count)


class WidthMask(KeepRatioMask):
    """Channel mask of one or more channel spaces sharing a keep ratio."""


class DepthMask(KeepRatioMask):
    """Block mask over the bottlenecks of one C2f; a C2f may lose all its blocks, so the ratio floor is 0.

    A single-block stage gets twice the sharpness (8 for the default 4, as in the DMS reference), so its one
    gate is near 0 or 1 rather than hovering around 0.5.
    """

    def __init__(self, size: int, lam: float = 4.0, decay: float = 0.99) -> None:
        super().__init__(size, spaces=1, lam=2 * lam if size == 1 else lam, decay=decay, divisor=1, min_ratio=0.0)


class DerivedWidthMask(ImportanceMask):
    """Channels whose count stock Ultralytics derives from other widths: `max(floor, sum(sources) // div)`.

    SPPF's hidden width is `c1 // 2`; Detect's hidden widths are `max(16, c // 4, 4 reg_max)` and
    `max(c, min(nc, 100))` of its P3 input. The count follows the sources; which channels survive is
    still decided by this mask's own importance.
    """

    def __init__(
        self,
        size: int,
        sources: tuple[str, ...],
        div: int,
        floor: int,
        spaces: int = 1,
        lam: float = 1.0,
        decay: float = 0.99,
    ) -> None:
        super().__init__(size, spaces, lam, decay)
        self.sources, self.div, self.floor = tuple(sources), div, floor

    def derive_hard(self, source_count: int) -> int:
        """Hard count from the sources' summed hard count, exactly as `parse_model` and `Detect` compute it."""
        return min(self.size, max(self.floor, source_count // self.div))


class HeadMask(DerivedWidthMask):
    """The heads of one `Attention`, counted as `width // head_dim` of its block's width, ranked by importance.

    Heads are kept or dropped whole, the only exact way to narrow an Ultralytics `Attention`: it recomputes
    `num_heads = max(c // 64, 1)` from its width when the YAML is rebuilt, splits `qkv` per head into `key_dim`,
    `key_dim`, `head_dim` channels and scales by `key_dim ** -0.5`, so a block of `nh >= 2` heads narrowed to
    `k * head_dim` channels rebuilds with exactly `k` heads of the same split and scale.

    One importance row ranks the heads; the mask's channel spaces are views of them, `units[row]` consecutive
    channels per head: `qkv`'s output (`2 key_dim + head_dim` per head) and the values that `pe` and `proj` read
    (`head_dim` per head).
    """

    def __init__(
        self,
        heads: int,
        sources: tuple[str, ...],
        head_dim: int,
        units: tuple[int, ...],
        lam: float = 1.0,
        decay: float = 0.99,
    ) -> None:
        super().__init__(heads, sources, div=head_dim, floor=1, spaces=1, lam=lam, decay=decay)
        self.units = tuple(units)

    def kept(self, count: int) -> list[torch.Tensor]:
        """Per channel space, the sorted channel indices of the `count` most important heads."""
        heads = super().kept(count)[0]
        return [(heads[:, None] * unit + torch.arange(unit, device=heads.device)).flatten() for unit in self.units]


def channels_per_element(mask: ImportanceMask, row: int) -> int:
    """Channels one counted element of `mask` stands for in space `row` (a head's width, or one channel)."""
    return mask.units[row] if isinstance(mask, HeadMask) else 1
