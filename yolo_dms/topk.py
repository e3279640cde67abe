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


def rank_fraction(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each score divided by N, in (0, 1]: importance normalized to an even spread."""
    return ranks(scores).double() / scores.shape[-1]


# A ratio within this fraction of an element above a whole count rounds down, so that a float32 ratio like
# 1/3 (stored as 0.33333334) keeps N/3 elements, not N/3 + 1. Soft and hard masks apply the same slack.
BOUNDARY_SLACK = 1e-4


def kept_count(keep_ratio: float, n: int) -> int:
    """Number of elements the hard mask keeps: ceil(keep_ratio * n) (up to `BOUNDARY_SLACK`)."""
    return min(n, max(0, math.ceil(float(keep_ratio) * n - BOUNDARY_SLACK)))


def soft_topk(scores: torch.Tensor, keep_ratio: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """`differentiable_topk` over the last dimension of `scores`, rows sharing one keep ratio, unchecked.

    This is the training hot path: no host synchronization, one batched sort for all rows.
    """
    n = scores.shape[-1]
    logits = lam * (n * (rank_fraction(scores) - (1.0 - keep_ratio.double())) - BOUNDARY_SLACK)
    return torch.sigmoid(logits).to(scores.dtype if scores.is_floating_point() else torch.float32)


def differentiable_topk(scores: torch.Tensor, keep_ratio: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Soft top-k mask `sigmoid(lam * N * (rank_fraction - (1 - keep_ratio)))`, differentiable in `keep_ratio`.

    The logit is taken in float64, where `N * keep_ratio` is exact for a float32 ratio, so the hard mask
    (`mask > 0.5`) keeps exactly `kept_count(keep_ratio, N)` of the highest-scoring elements.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    keep_ratio = torch.as_tensor(keep_ratio, device=scores.device)
    if keep_ratio.ndim != 0:
        raise ValueError(f"keep_ratio must be a 0-d tensor, got shape {tuple(keep_ratio.shape)}")
    value = keep_ratio.detach().item()
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"keep_ratio must lie in [0, 1], got {value}")
    return soft_topk(scores, keep_ratio, lam)


def hard_topk(scores: torch.Tensor, count: int) -> torch.Tensor:
    """0/1 masks keeping the `count` highest-scoring elements of each row (ties broken as in `ranks`)."""
    n = scores.shape[-1]
    if not 0 <= count <= n:
        raise ValueError(f"count must lie in [0, {n}], got {count}")
    return (ranks(scores) > n - count).to(torch.float32)


def kept_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the `count` highest-scoring elements of a 1-D score vector, the ones pruning keeps."""
    return torch.nonzero(hard_topk(scores, count)).flatten()
