"""The DMS operator: a differentiable top-k over importance scores (DESIGN.md section 2).

The keep ratio `k` of a dimension is one learnable scalar. Scores are replaced by their rank fraction so
that moving `k` by 1/N adds or removes exactly one element, which is what makes the soft mask smooth in `k`.
"""

from __future__ import annotations

import math

import torch


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Integer rank of each score along the last dimension, 1 for the lowest to N for the highest.

    Ties are broken by position. Rows of a 2-D input are ranked independently, in one batched sort.
    """
    n = scores.shape[-1]
    order = torch.argsort(scores.detach(), dim=-1, stable=True)
    positions = torch.arange(1, n + 1, device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


# A ratio within this fraction of an element above a whole count rounds down, so that a float32 ratio like
# 1/3 (stored as 0.33333334) keeps N/3 elements, not N/3 + 1. Soft and hard masks apply the same slack.
BOUNDARY_SLACK = 1e-4


def kept_count(keep_ratio: float, n: int) -> int:
    """Number of elements the hard mask keeps: ceil(keep_ratio * n) (up to `BOUNDARY_SLACK`)."""
    return min(n, max(0, math.ceil(float(keep_ratio) * n - BOUNDARY_SLACK)))


def kept_count_tensor(keep_ratio: torch.Tensor, n: int) -> torch.Tensor:
    """`kept_count` computed on the tensor's device (float64, no host synchronization), bit for bit the same."""
    return torch.ceil(keep_ratio.detach().double() * n - BOUNDARY_SLACK).clamp(0, n)


# A mask this far below the threshold is exactly 0 (sigmoid(-30) is 1e-13, nothing to any gradient that matters).
# Left to the sigmoid it would be a denormal float in float32, and denormal gates make every convolution they
# reach, forward and backward, many times slower on CPUs: a search slowed from 15 s to 46 s per epoch as
# channels closed.
FAR_BELOW = 30.0


def soft_topk(scores: torch.Tensor, count: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Soft top-k over the last dimension of `scores` for a (straight-through) element `count`, unchecked.

    `logit = lam * (rank - (N - count) - 1/2)`: with an integer-valued count the threshold falls halfway between
    the last kept and the first removed element, so `(mask > 0.5).sum()` is exactly `count` for every row, and
    the gradient in `count` is `lam` times the sigmoid slope. This is the training hot path: no host
    synchronization, one batched sort for all rows.
    """
    n = scores.shape[-1]
    logits = lam * (ranks(scores).double() - (n - count.double()) - 0.5)
    masks = torch.sigmoid(logits).masked_fill(logits < -FAR_BELOW, 0.0)
    return masks.to(scores.dtype if scores.is_floating_point() else torch.float32)


def differentiable_topk(scores: torch.Tensor, keep_ratio: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Soft top-k mask of the `ceil(k N)` highest scores, differentiable in `keep_ratio` (DESIGN.md section 2).

    The count is straight-through: its value is `kept_count(keep_ratio, N)`, its gradient that of `k N`, so the
    hard mask (`mask > 0.5`) keeps exactly the elements pruning keeps while the keep ratio still learns.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    keep_ratio = torch.as_tensor(keep_ratio, device=scores.device)
    if keep_ratio.ndim != 0:
        raise ValueError(f"keep_ratio must be a 0-d tensor, got shape {tuple(keep_ratio.shape)}")
    value = keep_ratio.detach().item()
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"keep_ratio must lie in [0, 1], got {value}")
    n = scores.shape[-1]
    soft = keep_ratio.double() * n
    return soft_topk(scores, soft - soft.detach() + kept_count_tensor(keep_ratio, n), lam)


def hard_topk(scores: torch.Tensor, count: int) -> torch.Tensor:
    """0/1 masks keeping the `count` highest-scoring elements of each row (ties broken as in `ranks`)."""
    n = scores.shape[-1]
    if not 0 <= count <= n:
        raise ValueError(f"count must lie in [0, {n}], got {count}")
    return (ranks(scores) > n - count).to(torch.float32)


def kept_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the `count` highest-scoring elements of a 1-D score vector, the ones pruning keeps."""
    return torch.nonzero(hard_topk(scores, count)).flatten()
