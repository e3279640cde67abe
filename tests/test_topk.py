"""The DMS operator: exact hard counts, a forward that is the hard mask, and a useful gradient."""

import math

import pytest
import torch

from yolo_dms import differentiable_topk
from yolo_dms.core.topk import hard_topk, kept_count, ranks, segment_ranks


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 64, 100, 257, 1024])
def test_hard_mask_keeps_ceil_k_n_highest(n):
    gen = torch.Generator().manual_seed(n)
    scores = torch.randn(n, generator=gen)
    for i in range(1, n + 1):
        assert int((differentiable_topk(scores, torch.tensor(i / n)) > 0.5).sum()) == i
    for k in torch.rand(50, generator=gen).clamp(min=1e-3).tolist():
        keep = torch.tensor(k, dtype=torch.float32)
        mask = differentiable_topk(scores, keep)
        expected = math.ceil(keep.item() * n - 1e-4)  # float32 ratios a hair above i/n still keep i
        kept = mask > 0.5
        assert int(kept.sum()) == expected, (n, k)
        # the kept elements are the highest-scoring ones
        if 0 < expected < n:
            assert scores[kept].min() > scores[~kept].max()
        assert torch.equal(mask, hard_topk(scores, kept_count(keep.item(), n)))  # the forward is the hard mask


def test_gradient_with_respect_to_keep_ratio_is_nonzero():
    scores = torch.randn(64)
    for k in (0.1, 0.37, 0.5, 0.93, 1.0):
        keep = torch.tensor(k, requires_grad=True)
        differentiable_topk(scores, keep).sum().backward()
        assert keep.grad is not None and keep.grad.item() > 0  # a larger keep ratio keeps more


@pytest.mark.parametrize("lam", [1.0, 4.0, 8.0])
def test_nothing_is_scaled_at_keep_ratio_one_yet_the_keep_ratio_learns(lam):
    """A trained model must start the search as it was: every element exactly 1 at keep ratio 1, while the
    gradient still tells the keep ratio which way to move, from the lowest-ranked elements outward."""
    scores = torch.randn(32)
    keep = torch.tensor(1.0, requires_grad=True)
    mask = differentiable_topk(scores, keep, lam)
    assert torch.equal(mask, torch.ones(32))
    weights = torch.linspace(-1.0, 1.0, 32)
    (mask * weights).sum().backward()
    expected = torch.autograd.functional.jacobian(
        lambda k: torch.sigmoid(lam * (ranks(scores).double() - 32 * (1 - k) - 0.5)), torch.tensor(1.0).double()
    )
    assert keep.grad.item() == pytest.approx((weights.double() * expected).sum().item(), rel=1e-5)
    assert keep.grad.item() != 0


def test_ranks_spread_scores_evenly_and_break_ties_by_position():
    r = ranks(torch.tensor([5.0, -1.0, 3.0, 3.0]))
    assert r.tolist() == [4, 1, 2, 3]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        differentiable_topk(torch.randn(2, 3), torch.tensor(0.5))
    with pytest.raises(ValueError, match="keep_ratio"):
        differentiable_topk(torch.randn(4), torch.tensor(1.5))
    with pytest.raises(ValueError, match="0-d"):
        differentiable_topk(torch.randn(4), torch.tensor([0.5]))


def test_soft_mask_has_no_denormal_values():
    """Far-below-threshold elements are exactly 0: denormal gates slow every CPU convolution they reach."""
    scores = torch.randn(512)
    mask = differentiable_topk(scores, torch.tensor(0.1), lam=4.0)
    assert not ((mask > 0) & (mask < torch.finfo(torch.float32).tiny)).any()
    assert (mask == 0).sum() > 0 and int((mask > 0.5).sum()) == math.ceil(0.1 * 512)


def test_segment_ranks_are_each_segments_ranks_ties_included():
    """The batched search ranks every mask's rows in one sort; it must agree with `ranks` row by row."""
    gen = torch.Generator().manual_seed(0)
    rows = [torch.rand(n, generator=gen) for n in (1, 7, 64, 3, 200)]
    rows[1][2:5] = 0.25  # ties, broken by position
    rows[2][:20] = 0.0  # importance starts at zero
    rows[3] = torch.tensor([-1.5, 2.0, -0.5])  # negative scores order too
    flat = torch.cat(rows)
    start = torch.cat([torch.full((len(r),), int(sum(map(len, rows[:i])))) for i, r in enumerate(rows)])
    segment = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rows)])
    assert torch.equal(segment_ranks(flat, start, segment), torch.cat([ranks(r) for r in rows]))
