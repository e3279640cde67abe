"""The procedural dataset for every task: labels drawn from the objects' exact pixels, read by Ultralytics itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yolo_dms.tools.demo_data import CLASS_NAMES, FLIP_IDX, KPT_SHAPE, _render_objects, make_dataset, render_sample

SMALL = {"n_train": 6, "n_val": 4, "imgsz": 64}


def rows(label_text: str) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in label_text.splitlines()]


@pytest.mark.parametrize("index", range(12))
def test_segment_polygons_fill_the_visible_pixels(index):
    """Ultralytics' own rasterisation of each polygon gives exactly the object's pixels, a ring's hole open."""
    from ultralytics.data.utils import polygon2mask

    imgsz = 128
    objects = _render_objects(np.random.default_rng([0, 0, index]), imgsz)[1]
    labels = rows("\n".join(render_sample(np.random.default_rng([0, 0, index]), imgsz, "segment")[1]))
    kept = [(cls, visible) for cls, visible in objects if min(np.ptp(np.nonzero(visible), axis=1)) >= 1]  # 2+ px
    assert len(kept) == len(labels)
    for (cls, visible), row in zip(kept, labels):
        assert row[0] == cls
        polygon = np.array(row[1:]).reshape(-1, 2) * imgsz
        filled = polygon2mask((imgsz, imgsz), [polygon.flatten()]).astype(bool)
        assert np.array_equal(filled, visible), (CLASS_NAMES[cls], (filled != visible).sum())


def test_pose_keypoints_are_the_extreme_visible_pixels_inside_the_box():
    for index in range(8):
        for row in rows("\n".join(render_sample(np.random.default_rng([1, 0, index]), 96, "pose")[1])):
            cx, cy, w, h = row[1:5]
            points = np.array(row[5:]).reshape(KPT_SHAPE)
            assert (points[:, 2] == 2).all()
            inside_x = (cx - w / 2 - 1e-5 <= points[:, 0]) & (points[:, 0] <= cx + w / 2 + 1e-5)
            inside_y = (cy - h / 2 - 1e-5 <= points[:, 1]) & (points[:, 1] <= cy + h / 2 + 1e-5)
            assert inside_x.all() and inside_y.all()
            top, right, bottom, left = points[:, :2]
            assert top[1] <= min(right[1], bottom[1], left[1]) and bottom[1] >= max(right[1], left[1])
            assert left[0] <= min(top[0], bottom[0]) and right[0] >= max(top[0], bottom[0])


def test_oriented_boxes_are_rectangles_around_the_object():
    for index in range(8):
        sample = render_sample(np.random.default_rng([2, 0, index]), 96, "obb")[1]
        detect = rows("\n".join(render_sample(np.random.default_rng([2, 0, index]), 96)[1]))
        for row, box in zip(rows("\n".join(sample)), detect):
            corners = np.array(row[1:]).reshape(4, 2)
            if 0 < corners.min() and corners.max() < 1:  # a rectangle, unless clipped to the image
                sides = np.linalg.norm(np.roll(corners, -1, 0) - corners, axis=1)
                assert sides[0] == pytest.approx(sides[2], abs=2e-5)
                assert sides[1] == pytest.approx(sides[3], abs=2e-5)
            centre = corners.mean(0)  # the rotated box and the tight box share roughly one centre
            assert np.abs(centre - box[1:3]).max() < 0.5 * max(box[3], box[4])


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_ultralytics_reads_every_task_dataset(task, tmp_path):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(make_dataset(tmp_path, task=task, **SMALL)))
    if task == "pose":
        assert data["kpt_shape"] == list(KPT_SHAPE) and data["flip_idx"] == list(FLIP_IDX)
    cfg = get_cfg(overrides={"imgsz": 64, "task": task, "mode": "val"})
    dataset = build_yolo_dataset(cfg, data["val"], batch=2, data=data, mode="val")
    assert len(dataset) == SMALL["n_val"]
    item = dataset[0]
    n = len(item["cls"])
    assert n > 0
    extra = {"segment": ("masks", lambda t: t.shape[0] == 1), "pose": ("keypoints", lambda t: t.shape == (n, 4, 3)),
             "obb": ("bboxes", lambda t: t.shape == (n, 5))}[task]
    assert extra[1](item[extra[0]]), (extra[0], item[extra[0]].shape)


def test_classification_folders_hold_crops_of_every_class(tmp_path):
    from ultralytics.data.utils import check_cls_dataset

    root = make_dataset(tmp_path, task="classify", n_train=10, n_val=5, imgsz=64)
    assert root == tmp_path.resolve()
    data = check_cls_dataset(str(root))
    assert data["nc"] == len(CLASS_NAMES) and sorted(data["names"].values()) == sorted(CLASS_NAMES)
    for split, count in (("train", 10), ("val", 5)):
        assert sorted(len(list(d.glob("*.png"))) for d in (root / split).iterdir()) == [count // 5] * 5
    assert make_dataset(tmp_path, task="classify", n_train=10, n_val=5, imgsz=64) == root  # reused as is


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(ValueError, match="task must be one of detect, segment, pose, obb, classify"):
        make_dataset(tmp_path, task="depth", **SMALL)
    assert not Path(tmp_path / "images").exists()
