"""Scoring a trained checkpoint with stock tools: Ultralytics' validator, `get_flops`, and its ONNX export
under ONNX Runtime. Shared by the demo and the benchmark, so both measure the same way."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops


def validate(weights: Path, data: Path, imgsz: int, **val_args) -> tuple[dict, Path]:
    """(GFLOPs, params, mAP50-95, mAP50 of a checkpoint; the validator's output folder)."""
    model = YOLO(str(weights))
    metrics = model.val(data=str(data), imgsz=imgsz, batch=16, workers=0, device="cpu", plots=False, verbose=False,
                        **val_args)
    scores = {
        "gflops": get_flops(model.model, imgsz),
        "params": sum(p.numel() for p in model.model.parameters()),
        "map50_95": float(metrics.box.map),
        "map50": float(metrics.box.map50),
    }
    return scores, Path(metrics.save_dir)


@dataclass(frozen=True)
class OnnxReport:
    """A checkpoint's stock ONNX export: where it is, how far it is from PyTorch, how fast it runs."""

    path: Path
    max_abs_difference: float
    latency_ms: float


def onnx_report(weights: Path, imgsz: int, runs: int = 50) -> OnnxReport:
    """Export with stock Ultralytics, compare ONNX Runtime with PyTorch on one random image, and time ONNX
    Runtime on the CPU (batch 1, 2 threads, median of `runs` after 10 warm-up runs)."""
    import onnxruntime as ort

    onnx_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, simplify=True, verbose=False))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    with torch.no_grad():
        torch_out = YOLO(str(weights)).model.float().eval()(torch.from_numpy(x))[0].numpy()
    difference = float(np.abs(session.run(None, feed)[0] - torch_out).max())
    times = []
    for _ in range(runs + 10):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return OnnxReport(onnx_path, difference, statistics.median(times[10:]))
