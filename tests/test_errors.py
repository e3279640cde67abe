"""Bad input gets a clear error that names the problem."""

import pytest
from ultralytics.nn import tasks as stock_tasks
import torch
from ultralytics.nn.tasks import DetectionModel

from yolo_dms import ModelSourceError, UnsupportedModelError
from yolo_dms.core.model_io import load_supernet


def test_rtdetr_layers_are_named_as_unsupported():
    with pytest.raises(UnsupportedModelError, match="RTDETRDecoder"):
        load_supernet("yolov8-rtdetr.yaml")


def test_a_task_dms_does_not_search_is_refused_by_name():
    if not hasattr(stock_tasks, "DepthModel"):
        pytest.skip("this Ultralytics has no depth models")
    with pytest.raises(UnsupportedModelError, match="is a depth model; DMS searches the tasks detect, segment"):
        load_supernet("yolo26n-depth.yaml")


def test_other_architectures_name_the_layer():
    with pytest.raises(UnsupportedModelError, match="GhostConv|C3Ghost"):
        load_supernet("yolov8-ghost.yaml")


def test_missing_yaml_and_weights_are_reported(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_supernet(str(tmp_path / "nope.yaml"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_supernet(str(tmp_path / "nope.pt"))
    with pytest.raises(ModelSourceError, match=r"\.yaml or \.pt"):
        load_supernet(str(tmp_path / "model.onnx"))


def test_corrupt_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelSourceError, match="not a readable checkpoint"):
        load_supernet(str(bad))
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ModelSourceError, match="holds no Ultralytics model"):
        load_supernet(str(empty))


def test_keep_ratio_outside_unit_interval_is_refused():
    supernet = load_supernet("yolov8n.yaml")
    with pytest.raises(ValueError, match=r"keep ratio must lie in \(0, 1\], got 1.5"):
        supernet.masks["l0"].set_keep_ratio(1.5)
    with pytest.raises(ValueError, match=r"keep ratio must lie in \(0, 1\], got 0.0"):
        supernet.masks["l4_hidden"].set_keep_ratio(0.0)


def test_checkpoint_is_rebuilt_from_its_yaml_and_refused_when_its_weights_do_not_fit(tmp_path):
    stock = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    stock.yaml = {**stock.yaml, "scale": "s"}  # the YAML now builds yolov8s, twice as wide
    path = tmp_path / "mismatch.pt"
    torch.save({"model": stock}, path)
    with pytest.raises(ModelSourceError, match="do not fit the model its YAML builds") as refused:
        load_supernet(str(path))
    assert "\n" not in str(refused.value)


def test_a_missing_checkpoint_that_is_not_a_release_name_is_not_looked_up_online(monkeypatch):
    import ultralytics.utils.downloads as downloads

    monkeypatch.setattr(downloads, "get_github_assets", lambda *a, **k: pytest.fail("looked up online"))
    with pytest.raises(ModelSourceError, match="does not exist: looked in"):
        load_supernet("my-typo.pt")
