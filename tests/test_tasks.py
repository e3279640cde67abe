"""The exactness contract for every task head (Segment, Pose, OBB, Classify; YOLOv8, YOLO11 and YOLO26 variants).

For one random searched structure per model: (a) the exported YAML rebuilds the task's stock model with the
pruned model's exact parameter names and shapes; (b) the supernet at hard masks and the pruned model agree on
every output branch (boxes, class scores, mask coefficients and prototypes, keypoints, angles, class logits;
both branches of an end-to-end head); (c) the resource model equals `get_flops` of the deployed pruned model
and its parameter count. And the supernet is its task's model: it trains with the task's loss.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers import TASK_CASES, randomize_structure
from ultralytics.nn import tasks as stock_tasks
from ultralytics.nn.tasks import ClassificationModel, DetectionModel
from ultralytics.utils import ROOT as ULTRALYTICS_ROOT

from yolo_dms import ResourceModel, Supernet, prune, searched_yaml
from yolo_dms.core.errors import UnsupportedModelError
from yolo_dms.core.latency import attach_latency, conv_geometries
from yolo_dms.core.latency_backends import LatencyBackend
from yolo_dms.core.model_io import build_task_model, write_model_yaml
from yolo_dms.core.resources import deployed_gflops, deployed_params

IMGSZ = 64


def tensors(output, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) model output by its path, without the feature maps a Detect head passes on
    (their width is the supernet's, not the pruned model's)."""
    if isinstance(output, torch.Tensor):
        return {prefix: output}
    items = output.items() if isinstance(output, dict) else enumerate(output)
    found = {}
    for key, value in items:
        if key != "feats":
            found |= tensors(value, f"{prefix}/{key}")
    return found


def state_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cfg", TASK_CASES)
def test_task_model_prunes_exactly(cfg, tmp_path):
    seed = TASK_CASES.index(cfg)
    stock = build_task_model(cfg, nc=3)
    supernet = Supernet(stock)
    assert isinstance(supernet, type(stock))
    assert type(supernet).init_criterion is type(stock).init_criterion  # the task's loss
    randomize_structure(supernet, seed, empty_c2f=seed)
    supernet.eval()
    pruned = prune(supernet).eval()
    assert type(pruned) is type(stock)
    assert all(type(m).__module__.startswith(("ultralytics", "torch")) for m in pruned.modules())

    path = write_model_yaml(searched_yaml(supernet), tmp_path / "searched.yaml")
    assert state_shapes(type(stock)(str(path), verbose=False)) == state_shapes(pruned)

    resources = ResourceModel(supernet, IMGSZ)
    expected = deployed_gflops(pruned, IMGSZ)
    assert expected > 0
    assert resources.gflops().item() == pytest.approx(expected, rel=1e-6)
    assert round(resources.params().item()) == deployed_params(pruned)

    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # float32: raw outputs of every branch within 1e-4
        searched, exported = tensors(supernet(x)[1]), tensors(pruned(x)[1])
    assert searched.keys() == exported.keys() and len(searched) >= (1 if isinstance(stock, ClassificationModel) else 3)
    for key in searched:
        assert (searched[key] - exported[key]).abs().max().item() < 1e-4, key
    supernet.double(), pruned.double()
    with torch.no_grad():  # float64: decoded predictions (and mask prototypes) agree to rounding
        searched, exported = tensors(supernet(x.double())[0]), tensors(pruned(x.double())[0])
    for key in searched:
        scale = searched[key].abs().max().item()
        assert (searched[key] - exported[key]).abs().max().item() <= 1e-9 * max(scale, 1.0), key


@pytest.mark.parametrize("cfg", ["yolo11m-seg.yaml", "yolov8m-pose.yaml", "yolo26m-obb.yaml", "yolo26m-cls.yaml"])
def test_medium_scales_rebuild_and_count_exactly(cfg, tmp_path):
    """Wider heads (a prototype module of 192, C3k blocks in C3k2) rebuild and count exactly too."""
    supernet = Supernet(build_task_model(cfg, nc=80))
    randomize_structure(supernet, seed=3, empty_c2f=1)
    pruned = prune(supernet)
    path = write_model_yaml(searched_yaml(supernet), tmp_path / "searched.yaml")
    assert state_shapes(type(pruned)(str(path), verbose=False)) == state_shapes(pruned)
    resources = ResourceModel(supernet, IMGSZ)
    assert resources.gflops().item() == pytest.approx(deployed_gflops(pruned, IMGSZ), rel=1e-6)
    assert round(resources.params().item()) == deployed_params(pruned)


@pytest.mark.parametrize("cfg", ["yolov8n-seg.yaml", "yolo26n-seg.yaml", "yolo26n-pose.yaml", "yolo11n-cls.yaml"])
def test_every_mask_learns_importance_in_a_training_pass(cfg):
    """Soft masks gate every searched space in train mode, training-only branches included (the prototype
    module's upsampling and semantic branch, Pose26's keypoint spreads): one backward pass scores them all."""
    supernet = Supernet(build_task_model(cfg, nc=3)).train()
    output = supernet(torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0)))
    sum(t.float().square().mean() for t in tensors(output).values()).backward()
    unscored = [f"{n}[{r}]" for n, m in supernet.masks.items() for r, row in enumerate(m.importance) if not row.any()]
    assert not unscored


def test_segment_prototype_width_is_searched_and_exported():
    """`npr` (Segment's `args[2]`) is the prototype module's searched hidden width, a multiple of 8."""
    supernet = Supernet(build_task_model("yolov8n-seg.yaml", nc=3))
    head = len(supernet.model) - 1
    supernet.masks[f"l{head}_proto"].set_keep_ratio(0.4)  # 64 channels: ceil(25.6) = 26, rounded to 24
    assert searched_yaml(supernet)["head"][-1][3][2] == 24
    assert prune(supernet).model[-1].proto.cv1.conv.out_channels == 24


def shipped(model_class: str, cfg: str) -> type:
    """The installed Ultralytics' `model_class`, skipping where that version has no such model or no `cfg` for it
    (8.4.0 has neither depth nor semantic segmentation)."""
    scaleless = re.sub(r"(\d+)[nsmlx](?=[-.])", r"\1", cfg)  # yolo26n-depth.yaml is yolo26-depth.yaml at scale n
    if not hasattr(stock_tasks, model_class) or not any((ULTRALYTICS_ROOT / "cfg" / "models").rglob(scaleless)):
        pytest.skip(f"this Ultralytics has no {model_class} or no {cfg}")
    return getattr(stock_tasks, model_class)


@pytest.mark.parametrize(
    ("model_class", "cfg", "named"),
    [
        ("WorldModel", "yolov8s-world.yaml", "WorldDetect"),
        ("RTDETRDetectionModel", "rtdetr-l.yaml", "RTDETRDecoder"),
        ("DepthModel", "yolo26n-depth.yaml", "Depth"),
        ("YOLOEModel", "yoloe-11s.yaml", "YOLOEDetect"),
        ("YOLOESegModel", "yoloe-26s-seg.yaml", "YOLOESegment26"),
    ],
    ids=["world", "rtdetr", "depth", "yoloe", "yoloe-seg"],
)
def test_unsupported_heads_are_named_in_one_line(model_class, cfg, named):
    model = shipped(model_class, cfg)(cfg, verbose=False)
    with pytest.raises(UnsupportedModelError, match=rf"^DMS cannot search layer [^\n]*\({named}\)[^\n]*$"):
        Supernet(model)


@pytest.mark.parametrize(
    ("model_class", "cfg", "task"),
    [("DepthModel", "yolo26n-depth.yaml", "depth"), ("SemanticSegmentationModel", "yolo26n-sem.yaml", "semantic")],
)
def test_unsupported_tasks_are_named_in_one_line(model_class, cfg, task):
    shipped(model_class, cfg)
    with pytest.raises(UnsupportedModelError, match=rf"^'{cfg}' is a {task} model; DMS searches the tasks [^\n]*$"):
        build_task_model(cfg)


def test_detection_models_keep_the_detection_supernet():
    assert type(Supernet(DetectionModel("yolov8n.yaml", nc=3, verbose=False))) is Supernet


@pytest.mark.parametrize(
    ("cfg", "task"),
    [("yolov8n-seg.yaml", "segment"), ("yolo11n-pose.yaml", "pose"), ("yolo26n-obb.yaml", "obb"),
     ("yolov8n-cls.yaml", "classify"), ("yolov8n.yaml", "detect")],
)
def test_pruned_checkpoint_loads_in_stock_yolo_as_its_task(cfg, task, tmp_path):
    from ultralytics import YOLO

    from yolo_dms.core.model_io import write_checkpoint

    supernet = Supernet(build_task_model(cfg, nc=3))
    randomize_structure(supernet, seed=1)
    path = write_checkpoint(prune(supernet), tmp_path / "pruned.pt", {"imgsz": IMGSZ})
    assert YOLO(str(path)).task == task


class CountingBackend(LatencyBackend):
    """Timings that are counts: a convolution its MACs, a whole model its deployed GFLOPs (no clock involved)."""

    name = "counting"

    def identity(self) -> list[str]:
        return [self.name]

    def time_conv(self, geometry, runs: int = 0) -> float:
        return geometry.features()[1] * 1e-7

    def time_model(self, model, imgsz, runs: int = 0) -> float:
        return 1.0 + 10 * deployed_gflops(model, imgsz)


@pytest.mark.parametrize("cfg", ["yolo26n-seg.yaml", "yolo26n-pose.yaml"])
def test_latency_geometries_leave_out_training_only_branches(cfg):
    """Segment26's semantic branch and Pose26's keypoint spreads never run in an eval pass (nor deployed): a
    latency table has no geometry for them, and only for them."""
    supernet = Supernet(build_task_model(cfg, nc=3))
    geometries = conv_geometries(supernet, (IMGSZ, IMGSZ))
    untraced = [site for site, geometry in zip(supernet.sites, geometries) if geometry is None]
    assert untraced and not any(site.counted for site in untraced)


def test_latency_table_of_a_task_model_predicts_the_full_model(tmp_path):
    supernet = Supernet(build_task_model("yolo26n-pose.yaml", nc=3))
    model = attach_latency(ResourceModel(supernet, IMGSZ), CountingBackend(), cache_dir=tmp_path)
    assert abs(model.calibration_error()) < 0.05
