"""The procedural demo dataset: deterministic, valid YOLO labels, cached by settings, and accepted by Ultralytics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yolo_dms.tools.demo_data import CLASS_NAMES, make_dataset

SMALL = {"n_train": 12, "n_val": 4, "imgsz": 64}
TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_demo_data.py"


def files(root: Path, kind: str, split: str) -> list[Path]:
    return sorted((root / kind / split).glob("*.png" if kind == "images" else "*.txt"))


def label_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def snapshot(root: Path) -> tuple[list[bytes], list[np.ndarray]]:
    """Every label file's bytes and every image's pixels, in file order, for both splits."""
    labels = [p.read_bytes() for split in ("train", "val") for p in files(root, "labels", split)]
    images = [
        cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for split in ("train", "val") for p in files(root, "images", split)
    ]
    return labels, images


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = make_dataset(tmp_path / "a", seed=7, **SMALL).parent
    again = make_dataset(tmp_path / "b", seed=7, **SMALL).parent
    other = make_dataset(tmp_path / "c", seed=8, **SMALL).parent
    labels_a, images_a = snapshot(first)
    labels_b, images_b = snapshot(again)
    labels_c, images_c = snapshot(other)
    assert labels_a == labels_b
    assert len(images_a) == len(images_b) and all(np.array_equal(x, y) for x, y in zip(images_a, images_b))
    assert labels_a != labels_c
    assert not all(np.array_equal(x, y) for x, y in zip(images_a, images_c))


def test_file_counts_match_the_requested_splits(tmp_path):
    root = make_dataset(tmp_path, n_train=9, n_val=5, imgsz=64).parent
    for split, count in (("train", 9), ("val", 5)):
        images, labels = files(root, "images", split), files(root, "labels", split)
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]


def test_every_label_is_a_valid_normalized_box(tmp_path):
    root = make_dataset(tmp_path, n_train=40, n_val=8, imgsz=96, seed=3).parent
    seen_classes = set()
    for split in ("train", "val"):
        for image_path, label_path in zip(files(root, "images", split), files(root, "labels", split)):
            image = cv2.imread(str(image_path))
            assert image.shape == (96, 96, 3)
            rows = label_rows(label_path)
            assert 1 <= len(rows) <= 6, label_path
            for row in rows:
                assert len(row) == 5, row
                cls = int(row[0])
                cx, cy, w, h = map(float, row[1:])
                assert 0 <= cls < len(CLASS_NAMES)
                assert w > 0 and h > 0
                assert all(0 <= v <= 1 for v in (cx, cy, w, h)), row
                # Box edges inside the image, up to the 6-decimal rounding of the label text.
                assert -1e-5 <= cx - w / 2 and cx + w / 2 <= 1 + 1e-5, row
                assert -1e-5 <= cy - h / 2 and cy + h / 2 <= 1 + 1e-5, row
                seen_classes.add(cls)
    assert seen_classes == set(range(len(CLASS_NAMES)))


def test_data_yaml_describes_the_dataset(tmp_path):
    yaml_path = make_dataset(tmp_path / "demo", **SMALL)
    data = yaml.safe_load(yaml_path.read_text())
    assert Path(data["path"]) == (tmp_path / "demo").resolve() and Path(data["path"]).is_absolute()
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert data["nc"] == len(data["names"]) == len(CLASS_NAMES)
    assert [data["names"][i] for i in range(data["nc"])] == list(CLASS_NAMES)


def test_same_settings_reuse_the_dataset_and_new_settings_regenerate_it(tmp_path):
    yaml_path = make_dataset(tmp_path, **SMALL)
    label = files(tmp_path, "labels", "train")[0]
    before = (yaml_path.stat().st_mtime_ns, label.stat().st_mtime_ns, label.read_bytes())

    assert make_dataset(tmp_path, **SMALL) == yaml_path
    assert (yaml_path.stat().st_mtime_ns, label.stat().st_mtime_ns, label.read_bytes()) == before

    make_dataset(tmp_path, **{**SMALL, "n_train": 5})  # fewer images: the old ones must not linger
    assert len(files(tmp_path, "images", "train")) == len(files(tmp_path, "labels", "train")) == 5

    stray = tmp_path / "images" / "train" / "stray.png"
    stray.write_bytes(b"")
    make_dataset(tmp_path, **{**SMALL, "n_train": 5}, overwrite=True)
    assert not stray.exists()
    assert len(files(tmp_path, "images", "train")) == 5


def test_a_partly_deleted_dataset_is_regenerated(tmp_path):
    make_dataset(tmp_path, **SMALL)
    files(tmp_path, "images", "val")[0].unlink()
    make_dataset(tmp_path, **SMALL)
    assert len(files(tmp_path, "images", "val")) == SMALL["n_val"]


def test_images_not_made_here_are_not_deleted_without_overwrite(tmp_path):
    own = tmp_path / "images" / "train" / "mine.jpg"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_dataset(tmp_path, **SMALL)
    assert own.exists()
    make_dataset(tmp_path, **SMALL, overwrite=True)
    assert not own.exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n_train": 0}, "n_train must be at least 1"),
        ({"n_val": 0}, "n_val must be at least 1"),
        ({"imgsz": 16}, "imgsz must be at least 32"),
        ({"seed": -1}, "seed must be at least 0"),
    ],
)
def test_bad_arguments_are_named(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        make_dataset(tmp_path, **{**SMALL, **bad})
    assert not (tmp_path / "images").exists()


def test_non_integer_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="imgsz must be an integer"):
        make_dataset(tmp_path, **{**SMALL, "imgsz": 64.0})


def test_ultralytics_checks_and_loads_the_dataset(tmp_path):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    yaml_path = make_dataset(tmp_path, n_train=8, n_val=4, imgsz=64, seed=1)
    data = check_det_dataset(str(yaml_path))
    assert data["nc"] == len(CLASS_NAMES)
    assert Path(data["train"]) == tmp_path.resolve() / "images" / "train"

    cfg = get_cfg(overrides={"imgsz": 64, "task": "detect", "mode": "val"})
    dataset = build_yolo_dataset(cfg, data["val"], batch=2, data=data, mode="val")
    assert len(dataset) == 4
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        label_path = Path(item["im_file"].replace("/images/", "/labels/")).with_suffix(".txt")
        rows = label_rows(label_path)
        assert item["img"].shape == (3, 64, 64)
        assert item["bboxes"].shape == (len(rows), 4)
        assert item["cls"].flatten().tolist() == [float(row[0]) for row in rows]


def load_tool():
    spec = importlib.util.spec_from_file_location("make_demo_data_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_tool_makes_the_dataset_and_rejects_unknown_keys(tmp_path, capsys):
    tool = load_tool()
    assert tool.main([f"root={tmp_path / 'cli'}", "n_train=3", "n_val=2", "imgsz=64", "seed=4"]) == 0
    printed = capsys.readouterr().out.strip()
    assert Path(printed) == (tmp_path / "cli" / "data.yaml").resolve() and Path(printed).is_file()

    for argv in (["colour=red"], ["n_train=many"], ["imgsz=8"], ["overwrite=maybe"]):
        assert tool.main([f"root={tmp_path / 'bad'}", *argv]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error:") and "\n" not in error and "Traceback" not in error
