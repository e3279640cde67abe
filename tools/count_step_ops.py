"""Aten operators of one structure step and of its parts, counted on the CPU: what a GPU would launch.

    python tools/count_step_ops.py                       # yolov8n.yaml at 64 px, GFLOPs budget at 60%
    python tools/count_step_ops.py yolo11n-seg.yaml 128  # another model and imgsz

Prints the operators of a whole structure step (trade-off step and projection), of the projection alone and of
one evaluation of the resource figure. Every figure is the third step's, after the caches are warm. The whole
training iteration's count (forward, loss, backward, both steps) is `../shared/tools/count_host_reads.py`'s.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from yolo_dms import ResourceModel
from yolo_dms.core.budget import figure
from yolo_dms.core.model_io import load_supernet
from yolo_dms.search.structure_step import StructureStep


class CountOperators(TorchDispatchMode):
    """Counts every aten operator dispatched inside the `with` block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main(model: str = "yolov8n.yaml", imgsz: int = 64) -> None:
    supernet = load_supernet(model, nc=5)
    resources = ResourceModel(supernet, imgsz)
    target = 0.6 * figure(resources, "gflops").item()
    step = StructureStep(supernet, resources, 0.05, 1.0, "gflops")
    for _ in range(3):
        for p in supernet.structure_parameters():
            p.grad = torch.full_like(p, 0.01)
        with CountOperators() as whole:
            step.step(target)
    with CountOperators() as projection:
        step.project(target)
    with CountOperators() as resource_figure:
        figure(resources, "gflops")
    print(f"{model} at {imgsz} px: structure step {sum(whole.counts.values())} aten operators, projection "
          f"{sum(projection.counts.values())}, resource figure {sum(resource_figure.counts.values())}")
    print("most frequent in the step:", ", ".join(f"{k} {n}" for k, n in whole.counts.most_common(8)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "yolov8n.yaml", int(sys.argv[2]) if len(sys.argv) > 2 else 64)
