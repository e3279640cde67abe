"""Width and depth masks: Taylor importance from the backward pass, hard counts, clamping, derived counts.

Training values and importance updates are the mask bank's (`core.mask_bank`), here over stand-alone masks
(tests/mask_reference.py).
"""

import pytest
import torch
from mask_reference import stand_alone_bank, training_masks

from yolo_dms import DepthMask, DerivedWidthMask, WidthMask
from yolo_dms.core.topk import straight_through_topk
from yolo_dms.core.model_io import load_supernet


def test_importance_is_moving_average_of_taylor_score():
    mask = WidthMask(size=8, spaces=2, decay=0.9)
    x = torch.arange(1.0, 9.0)
    count = torch.tensor(8.0, dtype=torch.float64)  # keep ratio 1
    relaxation = straight_through_topk(mask.importance.clone(), count)[1]  # the sigmoid, m in the score
    soft = torch.stack(training_masks(w=mask)["w"])  # registers the importance hook
    assert torch.equal(soft, torch.ones(2, 8))  # keep ratio 1: the forward is untouched
    loss = (soft[0] * x).sum() + (soft[1] * x.flip(0)).sum()
    loss.backward()
    expected = 0.1 * torch.stack([(relaxation[0] * x) ** 2, (relaxation[1] * x.flip(0)) ** 2])
    assert torch.allclose(mask.importance, expected)
    assert mask.keep_ratio.grad is not None


def test_non_finite_gradients_do_not_reach_importance():
    mask = WidthMask(size=4)
    (soft,) = training_masks(w=mask)["w"]
    (soft * torch.tensor([1.0, float("inf"), 1.0, 1.0])).sum().backward()
    assert torch.isfinite(mask.importance).all() and mask.importance.sum() == 0


def test_shared_keep_ratio_gives_equal_counts_by_each_space_importance():
    mask = WidthMask(size=10, spaces=3)
    mask.importance.copy_(torch.rand(3, 10))
    mask.set_keep_ratio(0.35)
    kept = mask.kept(mask.hard_count())
    assert [len(k) for k in kept] == [4, 4, 4]
    for k, imp in zip(kept, mask.importance):
        removed = torch.ones(10, dtype=torch.bool).index_fill_(0, k, False)
        assert imp[k].min() > imp[removed].max()


def test_output_width_rounds_to_multiple_of_eight_and_never_vanishes():
    mask = WidthMask(size=64, divisor=8)
    for k, expected in [(1.0, 64), (0.5, 32), (0.3, 16), (0.33, 24), (0.01, 8)]:
        mask.set_keep_ratio(k)
        assert mask.hard_count() == expected


def test_clamping_keeps_every_keep_ratio_in_its_range():
    supernet = load_supernet("yolov8n.yaml", nc=3)
    width, depth, full = supernet.masks["l3"], supernet.masks["l2_depth"], supernet.masks["l4"]
    assert (width.size, width.divisor) == (64, 8)
    with torch.no_grad():
        width.keep_ratio.fill_(-3.0)
        depth.keep_ratio.fill_(-0.5)
        full.keep_ratio.fill_(1.7)
    supernet.clamp_keep_ratios()
    assert width.keep_ratio.item() == pytest.approx(1 / 128) and width.hard_count() == 8  # never vanishes
    assert depth.keep_ratio.item() == 0.0 and full.keep_ratio.item() == 1.0


def test_straight_through_count_is_hard_forward_and_soft_backward():
    mask = WidthMask(size=64, divisor=8)
    mask.set_keep_ratio(0.33)
    bank, masks = stand_alone_bank(w=mask)
    (count,) = bank.counts(masks)
    assert count.item() == 24
    count.backward()
    assert mask.keep_ratio.grad.item() == pytest.approx(64)


def test_depth_mask_may_remove_every_block():
    depth = DepthMask(3)
    depth.set_keep_ratio(0.0)
    assert depth.hard_count() == 0 and depth.kept(depth.hard_count())[0].numel() == 0
    depth.set_keep_ratio(0.5)
    assert depth.hard_count() == 2


def test_keep_ratio_outside_range_is_refused():
    with pytest.raises(ValueError, match=r"keep ratio must lie in \(0, 1\]"):
        WidthMask(16).set_keep_ratio(1.2)
    with pytest.raises(ValueError, match=r"keep ratio must lie in \(0, 1\]"):
        WidthMask(16).set_keep_ratio(0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DepthMask(2).set_keep_ratio(-0.1)


def test_derived_count_follows_its_sources_like_ultralytics():
    sppf_hidden = DerivedWidthMask(128, ("l8",), div=2, floor=0)
    assert sppf_hidden.derive_hard(96) == 48
    detect_box = DerivedWidthMask(64, ("l15",), div=4, floor=64)
    assert detect_box.derive_hard(128) == 64  # max(16, 128 // 4, 4 * 16)
    detect_cls = DerivedWidthMask(256, ("l15",), div=1, floor=80)
    assert detect_cls.derive_hard(40) == 80 and detect_cls.derive_hard(200) == 200  # max(c, min(nc, 100))


def test_structure_stays_float32_when_the_model_goes_half():
    """Checkpoints are saved in half precision; keep counts must not move with them."""
    mask = WidthMask(size=1000)
    mask.set_keep_ratio(0.33371)
    mask.importance.copy_(torch.rand(1, 1000))
    before = mask.state_dict()
    mask.half()
    assert mask.keep_ratio.dtype == torch.float32 and mask.importance.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in mask.state_dict().items())
