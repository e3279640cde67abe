"""Latency backends: which one a search gets, that each keys its own table, and the PyTorch backend end to end on
the CPU (the code path a GPU takes, without the GPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import yolo_dms

from yolo_dms.core.budget import structure_as
from yolo_dms.core.errors import DMSError
from yolo_dms.core.latency import attach_latency, conv_geometries, table_key, time_structure
from yolo_dms.core.latency_backends import OnnxRuntimeCPU, TorchDevice, latency_backend, torch_device
from yolo_dms.core.resources import ResourceModel
from yolo_dms.search.settings import SearchSettings, SettingsError
from yolo_dms.core.model_io import load_supernet


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", "cpu"), ("0", "cuda:0"), ("1,0", "cuda:1"), ("cuda:2", "cuda:2"), (" CUDA:3 ", "cuda:3"), ("mps", "mps")],
)
def test_device_arguments_name_the_device_ultralytics_would_use(device, expected):
    assert torch_device(device) == torch.device(expected)


def test_a_device_that_is_not_one_is_refused_in_a_line():
    with pytest.raises(DMSError, match="device=gpu is not a device"):
        torch_device("gpu")


def test_auto_measures_on_the_device_that_trains():
    assert isinstance(latency_backend("auto", "cpu"), OnnxRuntimeCPU)
    gpu = latency_backend("auto", "0")  # built without touching CUDA: a GPU is only used when timing
    assert isinstance(gpu, TorchDevice) and gpu.name == "torch-cuda-fp16"
    assert latency_backend("torch", "cpu").name == "torch-cpu-fp32"
    assert isinstance(latency_backend("onnxruntime", "0"), OnnxRuntimeCPU)  # asked for: the CPU, whatever trains
    with pytest.raises(DMSError, match="latency_backend must be one of auto, onnxruntime, torch"):
        latency_backend("tensorrt", "cpu")


def test_settings_refuse_an_unknown_backend_and_align_hidden_widths_under_latency():
    with pytest.raises(SettingsError, match="latency_backend must be one of"):
        SearchSettings.from_arguments({"latency_backend": "openvino"})
    assert SearchSettings.from_arguments({"resource": "latency", "target": 0.6}).hidden_divisor == 8
    assert SearchSettings.from_arguments({"resource": "latency", "target": 0.6, "divisor": 16}).hidden_divisor == 16
    assert SearchSettings.from_arguments({"target": 0.6}).hidden_divisor == 1
    assert SearchSettings.from_arguments({"target": 0.6, "divisor": 32}).hidden_divisor == 32


def test_aligned_hidden_widths_are_multiples_of_8_at_any_keep_ratio():
    supernet = load_supernet("yolov8n.yaml", nc=3, hidden_divisor=8)
    hidden = [n for n in supernet.keep_ratio_masks() if n.endswith("_hidden")]
    assert hidden
    with structure_as(supernet, dict.fromkeys(supernet.keep_ratio_masks(), 0.37)):
        counts = supernet.hard_counts()
    assert all(counts[n] % 8 == 0 for n in hidden), {n: counts[n] for n in hidden}


def test_each_backend_keys_its_own_table():
    supernet = load_supernet("yolov8n.yaml", nc=3)
    geometries = conv_geometries(supernet, (64, 64))
    keys = {table_key(supernet, geometries, (64, 64), b) for b in (OnnxRuntimeCPU(), latency_backend("torch", "cpu"))}
    keys.add(table_key(supernet, geometries, (96, 96), OnnxRuntimeCPU()))
    aligned = load_supernet("yolov8n.yaml", nc=3, hidden_divisor=8)
    keys.add(table_key(aligned, geometries, (64, 64), OnnxRuntimeCPU()))
    assert len(keys) == 4


def test_torch_backend_predicts_and_measures_a_pruned_model(tmp_path: Path):
    """The PyTorch backend's table is calibrated on whole fused models (the full width predicted near what it
    measured), predicts less for a narrower structure, and times the pruned structure it predicts."""
    supernet = load_supernet("yolov8n.yaml", nc=3, hidden_divisor=8)
    resources = ResourceModel(supernet, 64)
    backend = latency_backend("torch", "cpu")
    model = attach_latency(resources, backend, cache_dir=tmp_path)
    assert model.table.backend == "torch-cpu-fp32" and len(list(tmp_path.glob("*.json"))) == 1
    with torch.no_grad():
        full = model.ms().item()
        assert full == pytest.approx(model.table.measured_full_ms, rel=0.25)
        with structure_as(supernet, dict.fromkeys(supernet.keep_ratio_masks(), 0.5)):
            half = model.ms().item()
            measured_half = time_structure(supernet, (64, 64), backend)
        with structure_as(supernet, dict.fromkeys(supernet.keep_ratio_masks(), 0.0)):  # every ratio at its least
            smallest = model.ms().item()
    assert 0 < smallest < half < full and measured_half > 0  # an accepted table predicts no structure below zero
    assert len(model.table.calibration) == 6  # every timing of every calibration structure, checked and cached
    assert attach_latency(ResourceModel(supernet, 64), backend, cache_dir=tmp_path).table == model.table  # cached


def test_info_reports_predicted_milliseconds_on_the_backend_asked_for(tmp_path: Path):
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "config")}
    proc = yolo_dms("info", "model=yolov8n.yaml", "imgsz=64", "latency=True", "latency_backend=torch",
                    "device=cpu", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ms predicted (torch-cpu-fp32, batch 1" in proc.stdout
    bad = yolo_dms("info", "model=yolov8n.yaml", "latency=True", "latency_backend=tensorrt", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "latency_backend must be one of" in bad.stderr + bad.stdout


def test_search_under_a_latency_budget_on_the_torch_backend(tmp_path: Path):
    """The trainer measures on the backend it was given (here PyTorch on the CPU, the path a GPU search takes)
    and reports it; the pruned model, timed the same way, is well under the supernet's measured latency."""
    import json

    from yolo_dms.tools.demo_data import make_dataset

    data = make_dataset(tmp_path / "data", n_train=16, n_val=8, imgsz=64, seed=5)
    proc = yolo_dms(
        "search", "model=yolov8n.yaml", f"data={data}", "resource=latency", "latency_backend=torch", "target=0.6",
        "epochs=1", "imgsz=64", "batch=8", "workers=0", "device=cpu", "plots=False", f"project={tmp_path / 'runs'}",
        "name=torch", cwd=tmp_path, env={**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "config")},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "runs" / "torch" / "search.json").read_text())
    latency = summary["latency"]
    assert latency["backend"] == "torch-cpu-fp32" and summary["budget"]["resource"] == "latency"
    assert 0 < latency["measured_ms"] < 0.85 * latency["supernet_measured_ms"], latency
    assert "measured on torch-cpu-fp32" in proc.stdout + proc.stderr


def test_only_a_latency_budget_needs_onnx_runtime(monkeypatch):
    """Without the tools extra a GFLOPs search still builds its backend and resource model; a latency budget on
    ONNX Runtime says in one line what to install."""
    import sys

    from yolo_dms.core.latency import resource_model

    for name in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    backend = latency_backend("auto", "cpu")
    supernet = load_supernet("yolov8n.yaml", nc=3)
    assert resource_model(supernet, 64, "gflops", backend).gflops().item() > 0
    with pytest.raises(DMSError, match=r"needs 'onnx.*pip install 'yolo-dms\[tools\]'"):
        resource_model(supernet, 64, "latency", backend)
