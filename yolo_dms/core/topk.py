"""The DMS operator: a differentiable top-k over importance scores.

The keep ratio `k` of a dimension is one learnable scalar. Scores are replaced by their rank fraction so
that moving `k` by 1/N adds or removes exactly one element, which is what makes the soft mask smooth in `k`.

The mask is straight-through: its forward value is the hard top-k mask (exactly 0 or 1, what pruning keeps),
its gradient that of the DMS sigmoid relaxation. The count that sets the threshold is itself straight-through
(its value the whole number of kept elements), so the relaxation serves the backward pass only. As a forward
value it would scale the last kept element by sigmoid(1/2) = 0.62 and the next ones by 0.82 and 0.92 (at keep
ratio 1 too, where nothing is removed) and let 0.38, 0.18, 0.08 of the first removed ones through, moving a
trained model's outputs by a fifth before the search has cut anything.
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


def kept_count_tensor(keep_ratio: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """`kept_count` computed on the tensor's device (float64, no host synchronization), bit for bit the same.

    `keep_ratio` and `n` may be vectors (one entry per mask)."""
    n = torch.as_tensor(n, dtype=torch.float64, device=keep_ratio.device)
    return torch.minimum(torch.ceil(keep_ratio.detach().double() * n - BOUNDARY_SLACK).clamp(min=0), n)


def segment_ranks(scores: torch.Tensor, start: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """`ranks` within each segment of a flat float32 score vector, all segments in one sort of unique keys.

    Segments are contiguous: element `i` belongs to segment `segment[i]`, which starts at flat index
    `start[i]` (at most 2^15 segments of at most 2^16 elements). Ties are broken by position, as in `ranks`: the
    key is (segment, score as an order-preserving integer, position).
    """
    bits = scores.detach().contiguous().view(torch.int32).long()
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31  # negative floats ordered too
    position = torch.arange(scores.numel(), device=scores.device)
    order = torch.argsort((segment << 48) | (bits << 16) | (position - start))
    return torch.empty_like(order).scatter_(0, order, position) - start + 1


def straight_through_mask(rank: torch.Tensor, removed: torch.Tensor, lam) -> tuple[torch.Tensor, torch.Tensor]:
    """(Mask, relaxation) of elements of 1-based `rank` when the `removed` lowest are removed (float64 tensors).

    The mask's value is the hard mask `rank > removed` (`removed` is a whole number), its gradient that of the
    relaxation `sigmoid(lam * (rank - removed - 1/2))`, whose threshold falls halfway between the last removed
    and the first kept element: the gradient in the count is `lam` times the sigmoid slope, largest for those two.
    """
    relaxation = torch.sigmoid(lam * (rank - removed - 0.5)).to(torch.float32)
    hard = (rank > removed.detach()).to(torch.float32)
    return relaxation - relaxation.detach() + hard, relaxation


def straight_through_topk(
    scores: torch.Tensor, count: torch.Tensor, lam: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k masks over the last dimension of `scores` for a straight-through element `count`, unchecked.

    Returns `straight_through_mask`'s (mask, relaxation): the hard top-k mask of the count's value (an integer)
    with the relaxation's gradient. Rows of a 2-D input are independent and share `count` and `lam`. No host
    synchronization, one batched sort.
    """
    removed = scores.shape[-1] - count.double()
    return straight_through_mask(ranks(scores).double(), removed, lam)


def differentiable_topk(scores: torch.Tensor, keep_ratio: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Top-k mask of the `ceil(k N)` highest scores, differentiable in `keep_ratio`.

    Straight-through twice: the count reads `kept_count(keep_ratio, N)` with the gradient of `k N`, and the mask
    reads the hard mask of that count with the gradient of the sigmoid relaxation. Its forward value is exactly
    what pruning keeps (all ones at `keep_ratio` 1) while the keep ratio still learns.
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
    return straight_through_topk(scores, soft - soft.detach() + kept_count_tensor(keep_ratio, n), lam)[0]


def hard_topk(scores: torch.Tensor, count: int) -> torch.Tensor:
    """0/1 masks keeping the `count` highest-scoring elements of each row (ties broken as in `ranks`)."""
    n = scores.shape[-1]
    if not 0 <= count <= n:
        raise ValueError(f"count must lie in [0, {n}], got {count}")
    return (ranks(scores) > n - count).to(torch.float32)


def kept_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the `count` highest-scoring elements of a 1-D score vector, the ones pruning keeps."""
    return torch.nonzero(hard_topk(scores, count)).flatten()
