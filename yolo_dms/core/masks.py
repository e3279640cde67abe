"""Width and depth masks: one learnable keep ratio each, per-element Taylor importance, soft or hard masks.

A mask may serve several spaces that must keep the same count (the halves and bottleneck widths of one C2f);
each space has its own importance row, and rank normalization gives them equal counts at equal thresholds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from yolo_dms.core.topk import hard_topk, kept_count, kept_count_tensor, kept_indices, straight_through_topk


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
    scalars): value `min(size, max(floor, source // div))` as `parse_model` computes it, gradient of the
    continuous `source / div` (zero where the floor or the size holds it)."""
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
    """Importance scores of `spaces` x `size` elements and the masks they induce for a given count.

    Importance is a moving average of the Taylor score `(m * dL/dm)^2` of the soft mask `m`, updated by a
    gradient hook in the backward pass. It is a buffer, never trained. `grad_scale` is the factor the loss was
    multiplied by before backward (AMP's loss scale), divided out so importance does not depend on it.
    """

    grad_scale: float = 1.0

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

    def soft_masks(self, count: torch.Tensor, track: bool = True) -> torch.Tensor:
        """Training masks (spaces x size) for a straight-through element `count` (its value the hard count).

        Straight-through (`topk.straight_through_topk`): the value is the hard mask, exactly the elements
        pruning keeps (all ones when nothing is removed), the gradient that of the sigmoid relaxation. With
        `track`, in a grad-enabled pass, the task gradient reaching these masks updates importance; the
        resource model reads masks untracked so the FLOPs gradient never counts as importance.
        """
        masks, relaxation = straight_through_topk(self.importance, count, self.lam)
        if track and torch.is_grad_enabled():
            if not masks.requires_grad:
                masks.requires_grad_()
            masks.register_hook(self._accumulate_taylor(relaxation.detach()))
        return masks

    def hard_masks(self, count: int) -> torch.Tensor:
        """0/1 masks (spaces x size) keeping the `count` most important elements of every space."""
        return hard_topk(self.importance, count).to(self.importance.dtype)

    def kept(self, count: int) -> list[torch.Tensor]:
        """Per space, the sorted indices of the elements that pruning keeps."""
        return [kept_indices(row, count) for row in self.importance]

    def _accumulate_taylor(self, relaxation: torch.Tensor):
        """Gradient hook folding `(m * dL/dm)^2` into the moving average (`taylor_update`); a non-finite step (an
        AMP overflow) leaves importance as it was. Decided on the device, so the backward pass never waits."""

        def hook(grad: torch.Tensor) -> None:
            updated, finite = taylor_update(
                self.importance, relaxation, grad, self.grad_scale, self.decay, 1.0 - self.decay
            )
            self.importance.copy_(torch.where(finite.all(), updated, self.importance))

        return hook


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

    def clamp_(self) -> None:
        """Project the keep ratio back into its legal range after an optimizer step."""
        with torch.no_grad():
            self.keep_ratio.clamp_(self.min_ratio, 1.0)

    def hard_count(self, keep_ratio: float | None = None) -> int:
        """Elements kept at hard masks: ceil(k N), rounded to the nearest multiple of `divisor` (at least one).

        `keep_ratio` is this mask's ratio already read to the host (the supernet reads all of them at once).
        """
        count = kept_count(self.keep_ratio.item() if keep_ratio is None else keep_ratio, self.size)
        if self.divisor > 1:
            count = max(self.divisor, round(count / self.divisor) * self.divisor)
        return min(self.size, count)

    def count(self) -> torch.Tensor:
        """Straight-through count on the device: value exactly `hard_count()`, gradient that of `k N`.

        Soft masks take it as their threshold, so training sees the rounded width that pruning will keep.
        """
        return keep_ratio_counts(self.keep_ratio, self.size, self.divisor)

    def soft_count(self) -> torch.Tensor:
        """Continuous count `k N`, the quantity the resource loss differentiates."""
        return self.keep_ratio * self.size


class WidthMask(KeepRatioMask):
    """Channel mask of one or more channel spaces sharing a keep ratio."""


class DepthMask(KeepRatioMask):
    """Block mask over the bottlenecks of one C2f; a C2f may lose all its blocks, so the ratio floor is 0.

    A single-block stage gets twice the sharpness (8 for the default 4, as DESIGN.md and the DMS reference
    say), so its one gate is near 0 or 1 rather than hovering around 0.5.
    """

    def __init__(self, size: int, lam: float = 4.0, decay: float = 0.99) -> None:
        super().__init__(size, spaces=1, lam=2 * lam if size == 1 else lam, decay=decay, divisor=1, min_ratio=0.0)


class DerivedWidthMask(ImportanceMask):
    """Channels whose count stock Ultralytics derives from other widths: `max(floor, sum(sources) // div)`.

    SPPF's hidden width is `c1 // 2`; Detect's hidden widths are `max(16, c // 4, 4 reg_max)` and
    `max(c, min(nc, 100))` of its P3 input. The count follows the sources; which channels survive is
    still decided by this mask's own importance.
    """

    def __init__(self, size: int, sources: tuple[str, ...], div: int, floor: int, spaces: int = 1) -> None:
        super().__init__(size, spaces)
        self.sources, self.div, self.floor = tuple(sources), div, floor

    def derive_hard(self, source_count: int) -> int:
        """Hard count from the sources' summed hard count, exactly as `parse_model` and `Detect` compute it."""
        return min(self.size, max(self.floor, source_count // self.div))

    def derive_count(self, source_count: torch.Tensor) -> torch.Tensor:
        """Straight-through count from the sources' straight-through count: value `derive_hard`, soft gradient."""
        return derived_counts(source_count, self.div, self.floor, self.size)
