"""The embedded end-to-end demo: generated data, a trained yolov8n, a DMS search to half its GFLOPs,
stock fine-tuning of the pruned model, ONNX export checked against PyTorch, and a before/after table."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import get_flops

from yolo_dms.demo_data import make_dataset
from yolo_dms.errors import DMSError
from yolo_dms.search import run_search

COMMON = {"batch": 16, "nbs": 16, "workers": 0, "device": "cpu", "plots": False, "exist_ok": True, "seed": 0}


def onnx_check(weights: Path, imgsz: int) -> tuple[Path, float, float]:
    """Export to ONNX with stock Ultralytics; returns (file, max |ONNX - PyTorch|, median ONNX Runtime ms)."""
    import onnxruntime as ort

    model = YOLO(str(weights))
    onnx_path = Path(model.export(format="onnx", imgsz=imgsz, simplify=True, verbose=False))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    torch_model = YOLO(str(weights)).model.float().eval()
    with torch.no_grad():
        torch_out = torch_model(torch.from_numpy(x))[0].numpy()
    difference = float(np.abs(onnx_out - torch_out).max())
    times = []
    for _ in range(60):
        start = time.perf_counter()
        session.run(None, {session.get_inputs()[0].name: x})
        times.append((time.perf_counter() - start) * 1000)
    return onnx_path, difference, statistics.median(times[10:])


def describe(weights: Path, data: Path, imgsz: int) -> dict:
    """GFLOPs, parameters and validation mAP of a checkpoint, all from stock Ultralytics."""
    model = YOLO(str(weights))
    metrics = model.val(data=str(data), imgsz=imgsz, batch=16, workers=0, device="cpu", plots=False, verbose=False)
    return {
        "GFLOPs": get_flops(model.model, imgsz),
        "params": sum(p.numel() for p in model.model.parameters()),
        "mAP50-95": float(metrics.box.map),
        "mAP50": float(metrics.box.map50),
    }


def run_demo(
    out: str = "runs/dms/demo", epochs: int = 30, search_epochs: int = 15, finetune_epochs: int = 15, imgsz: int = 128
) -> str:
    """Run the whole pipeline and return the before/after table (also written to `out/summary.md`)."""
    out = Path(out).resolve()
    started = time.time()
    data = make_dataset(out / "data", n_train=512, n_val=128, imgsz=imgsz, seed=0)
    LOGGER.info(f"Demo data: {data}")

    YOLO("yolov8n.yaml").train(data=str(data), epochs=epochs, imgsz=imgsz, project=str(out), name="baseline", **COMMON)
    baseline = out / "baseline" / "weights" / "best.pt"

    trainer = run_search({
        "model": str(baseline), "data": str(data), "target": 0.5, "epochs": search_epochs, "imgsz": imgsz,
        "project": str(out), "name": "search", "warmup_epochs": 0, "close_mosaic": 0, **COMMON,
    })
    pruned = trainer.export_result.weights_path

    YOLO(str(pruned)).train(
        data=str(data), epochs=finetune_epochs, imgsz=imgsz, project=str(out), name="finetune",
        warmup_epochs=0, **COMMON,
    )
    finetuned = out / "finetune" / "weights" / "best.pt"

    rows = {"yolov8n (trained)": baseline, "DMS pruned (after search)": pruned, "DMS fine-tuned": finetuned}
    table = {name: describe(weights, data, imgsz) for name, weights in rows.items()}
    for name in ("yolov8n (trained)", "DMS fine-tuned"):
        onnx_path, difference, latency = onnx_check(rows[name], imgsz)
        if difference > 1e-3:
            raise DMSError(f"ONNX export of {rows[name]} differs from PyTorch by {difference:.2e} (limit 1e-3)")
        table[name].update({"ONNX ms": latency, "ONNX vs PyTorch": difference})
    lines = [
        f"| model | GFLOPs@{imgsz} | params | mAP50-95 | mAP50 | ONNX Runtime CPU ms (batch 1) "
        "| max abs ONNX-PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        latency = f"{r['ONNX ms']:.2f}" if "ONNX ms" in r else "-"
        diff = f"{r['ONNX vs PyTorch']:.1e}" if "ONNX vs PyTorch" in r else "-"
        lines.append(
            f"| {name} | {r['GFLOPs']:.4f} | {r['params']:,} | {r['mAP50-95']:.4f} | {r['mAP50']:.4f} "
            f"| {latency} | {diff} |"
        )
    minutes = (time.time() - started) / 60
    lines.append(f"\nDemo finished in {minutes:.1f} min; outputs in {out}")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print("\n" + summary)
    return summary
