"""Scoring a trained checkpoint with stock tools: Ultralytics' validator, `get_flops` (of the deployed model),
and its ONNX export under ONNX Runtime. Shared by the demo and the benchmark, so both measure the same way.

The independent mAP check is pycocotools on the COCO-format files Ultralytics' own validator makes with
`save_json=True`: its `predictions.json` (class ids mapped 80 -> 91 when the data is COCO), scored against
COCO's annotation file for COCO, and otherwise against the ground truth the validator builds from the labels
its data loader read. Nothing is inferred from file names or folder layout here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionValidator

from yolo_dms.core.latency_backends import time_calls
from yolo_dms.core.resources import deployed_gflops
from yolo_dms.core.tasks import TASKS


class CocoCheckValidator(DetectionValidator):
    """Ultralytics' detection validator whose COCO-format evaluation runs in pycocotools (a dependency) instead
    of faster-coco-eval (which Ultralytics would try to install at run time), keeping mAP50-95 for any data."""

    coco_map50_95: float = 0.0  # stays 0 when the model predicted nothing, so nothing was evaluated

    def coco_evaluate(
        self, stats: dict, pred_json: str | Path | list, anno_json: str | Path | dict, iou_types="bbox", suffix="Box"
    ) -> dict:
        """Score `pred_json` against `anno_json`, as Ultralytics' `eval_json` prepared them, with pycocotools.
        Ultralytics 8.4.0 builds no ground truth from the labels: there, data without COCO's annotation file is
        not checked (NaN)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not isinstance(anno_json, dict) and not Path(anno_json).is_file():
            self.coco_map50_95 = math.nan
            return stats
        ground_truth = COCO()
        ground_truth.dataset = anno_json if isinstance(anno_json, dict) else json.loads(Path(anno_json).read_text())
        ground_truth.createIndex()
        predictions = pred_json if isinstance(pred_json, list) else json.loads(Path(pred_json).read_text())
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(predictions), "bbox")
        # Only the images validated: a built ground truth holds exactly those (with no file names); COCO's
        # annotation file lists the whole split, so a subset is matched by file name.
        validated = {Path(f).name for f in self.dataloader.dataset.im_files}
        evaluator.params.imgIds = [
            i for i, image in ground_truth.imgs.items() if "file_name" not in image or image["file_name"] in validated
        ]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        self.coco_map50_95 = float(evaluator.stats[0])
        return stats


def validate(weights: Path, data: Path, imgsz: int, device=None, **val_args) -> tuple[dict, Path]:
    """(GFLOPs, params and the two scores the task table names for the checkpoint's task: mask, pose or OBB
    mAP50-95 and mAP50, or top-1 and top-5 accuracy; for detection with `save_json=True` also the pycocotools
    mAP50-95; the validator's output folder). Each task is scored by its stock Ultralytics validator.
    `device` as in Ultralytics (None: a GPU if there is one)."""
    model = YOLO(str(weights))
    validator_class = CocoCheckValidator if model.task == "detect" else model.task_map[model.task]["validator"]
    validator = validator_class(args={
        **model.overrides, "rect": True, "data": str(data), "imgsz": imgsz, "batch": 16, "workers": 0,
        "device": device, "plots": False, "verbose": False, **val_args, "mode": "val",
    })
    counts = {  # before validation: Ultralytics 8.4.0's validator fuses the model it is given in place
        "gflops": deployed_gflops(model.model, imgsz),
        "params": sum(p.numel() for p in model.model.parameters()),
    }
    validator(model=model.model)
    results = validator.metrics.results_dict
    scores = {**counts, **{metric.key: float(results[metric.result_key]) for metric in TASKS[model.task].metrics}}
    if isinstance(validator, CocoCheckValidator) and validator.args.save_json:
        scores["coco_map50_95"] = validator.coco_map50_95
    return scores, Path(validator.save_dir)


@dataclass(frozen=True)
class OnnxReport:
    """A checkpoint's stock ONNX export: where it is, how far it is from PyTorch, how fast it runs."""

    path: Path
    max_abs_difference: float
    latency_ms: float


def onnx_report(weights: Path, imgsz: int, runs: int = 50) -> OnnxReport:
    """Export with stock Ultralytics, compare ONNX Runtime with PyTorch on one random image, and time ONNX
    Runtime on the CPU (batch 1, 2 threads, median of `runs` after `time_calls`' warm-up)."""
    import onnxruntime as ort

    onnx_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, simplify=True, verbose=False))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    with torch.no_grad():
        torch_out = YOLO(str(weights)).model.float().eval()(torch.from_numpy(x))[0]
    torch_outs = torch_out if isinstance(torch_out, (list, tuple)) else [torch_out]  # segment: boxes, prototypes
    difference = max(
        float(np.abs(onnx_out - out.numpy()).max())
        for onnx_out, out in zip(session.run(None, feed), torch_outs, strict=True)
    )
    return OnnxReport(onnx_path, difference, time_calls(lambda: session.run(None, feed), runs, warmup=10, blocks=1))
