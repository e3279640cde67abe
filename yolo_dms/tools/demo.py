"""The embedded end-to-end demo for any task: generated data, a trained n-scale model of the task (yolov8n,
yolov8n-seg, -pose, -obb, -cls), a DMS search to half its GFLOPs, stock fine-tuning of the pruned model, ONNX
export checked against PyTorch, and a before/after table scored by the task's own metric."""

from __future__ import annotations

import time
from pathlib import Path

from ultralytics import YOLO
from ultralytics.utils import LOGGER

from yolo_dms.core.errors import DMSError
from yolo_dms.core.tasks import TASKS
from yolo_dms.search.run import run_search
from yolo_dms.tools.demo_data import make_dataset
from yolo_dms.tools.evaluation import onnx_report, validate

COMMON = {"batch": 16, "nbs": 16, "workers": 0, "device": "cpu", "plots": False, "exist_ok": True, "seed": 0}


def run_demo(
    task: str = "detect",
    out: str = "runs/dms/demo",
    epochs: int = 30,
    search_epochs: int = 15,
    finetune_epochs: int = 15,
    imgsz: int = 128,
    n_train: int = 512,
    n_val: int = 128,
) -> str:
    """Run the whole pipeline for `task` and return the before/after table (also written to `out/summary.md`)."""
    if task not in TASKS:
        raise DMSError(f"demo task must be one of {', '.join(TASKS)}, got '{task}'")
    out = Path(out).resolve()
    started = time.time()
    data = make_dataset(out / "data", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=0, task=task)
    LOGGER.info(f"Demo data: {data}")

    model_name = Path(TASKS[task].demo_model).stem
    YOLO(TASKS[task].demo_model).train(data=str(data), epochs=epochs, imgsz=imgsz, project=str(out), name="baseline",
                                  **COMMON)
    baseline = out / "baseline" / "weights" / "best.pt"

    trainer = run_search({
        "model": str(baseline), "data": str(data), "target": 0.5, "epochs": search_epochs, "imgsz": imgsz,
        "project": str(out), "name": "search", "warmup_epochs": 0, "close_mosaic": 0, **COMMON,
    })
    pruned = trainer.session.export_result.weights_path

    YOLO(str(pruned)).train(
        data=str(data), epochs=finetune_epochs, imgsz=imgsz, project=str(out), name="finetune",
        warmup_epochs=0, **COMMON,
    )
    finetuned = out / "finetune" / "weights" / "best.pt"

    rows = {f"{model_name} (trained)": baseline, "DMS pruned (after search)": pruned, "DMS fine-tuned": finetuned}
    table = {name: validate(weights, data, imgsz)[0] for name, weights in rows.items()}
    for name in (f"{model_name} (trained)", "DMS fine-tuned"):
        onnx = onnx_report(rows[name], imgsz)
        if onnx.max_abs_difference > 1e-3:
            raise DMSError(f"ONNX export of {rows[name]} differs from PyTorch by {onnx.max_abs_difference:.2e}")
        table[name].update({"ONNX ms": onnx.latency_ms, "ONNX vs PyTorch": onnx.max_abs_difference})
    first, second = TASKS[task].metrics
    lines = [
        f"| model | GFLOPs@{imgsz} | params | {first.label} | {second.label} | ONNX Runtime CPU ms (batch 1) "
        "| max abs ONNX-PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        latency = f"{r['ONNX ms']:.2f}" if "ONNX ms" in r else "-"
        diff = f"{r['ONNX vs PyTorch']:.1e}" if "ONNX vs PyTorch" in r else "-"
        lines.append(
            f"| {name} | {r['gflops']:.4f} | {r['params']:,} | {r[first.key]:.4f} | {r[second.key]:.4f} "
            f"| {latency} | {diff} |"
        )
    minutes = (time.time() - started) / 60
    lines.append(f"\nDemo finished in {minutes:.1f} min; outputs in {out}")
    summary = "\n".join(lines)
    (out / "summary.md").write_text(summary + "\n")
    print("\n" + summary)
    return summary
