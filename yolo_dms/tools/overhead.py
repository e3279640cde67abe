"""Timing one DMS search iteration against one plain training iteration of the same supernet.

Both run the same model, batch and image size through forward, Ultralytics' detection loss, backward and an
SGD weight step; the search iteration adds the masks (straight-through, with Taylor-importance hooks) and the
structure step (resource model, balanced resource gradient, Adam on keep ratios). The two alternate iteration by
iteration, so a machine whose speed drifts slows both alike. On a CPU the clock is the process's CPU time (what
the iteration costs the host, not counting other jobs on a shared machine; with one thread it equals the wall
time of an idle machine), on a GPU the wall time. `keep` sets every keep ratio first: a search spends most of
its batches below 1, where many gates are closed.

At a size where the convolutions cost almost nothing (`model=yolov8s.yaml imgsz=32 batch=2` on a CPU; batch 1
would leave BatchNorm one value per channel at P5) the difference between the two is the host-side cost of the
search, the part a fast GPU cannot hide behind its kernels.

The harness reads only what every version of the package has (Supernet, ResourceModel, StructureStep), so
`tools/search_overhead.py before=<commit>` can time an earlier version with this very harness.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG

from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.tools.demo_data import random_batch


def _iteration(model, step: Callable, scaler, batch: dict, amp: bool, device: torch.device) -> float:
    """Seconds of one iteration: forward, loss, backward and `step` (CPU seconds on a CPU; on a GPU wall seconds,
    waited for)."""
    gpu = device.type == "cuda"
    clock = time.perf_counter if gpu else time.process_time
    if gpu:
        torch.cuda.synchronize()
    start = clock()
    with torch.autocast(device.type, enabled=amp):
        loss, _ = model(batch)
    scaler.scale(loss.sum()).backward()
    step(scaler)
    if gpu:
        torch.cuda.synchronize()
    return clock() - start


def measure_overhead(
    model: str,
    imgsz: int,
    batch: int,
    iters: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    amp: bool = False,
    keep: float = 1.0,
) -> tuple[float, float]:
    """(plain, search) median seconds per iteration of the same supernet on a random batch, interleaved."""
    device = torch.device("cuda:0" if device not in {"cpu", ""} else "cpu")
    base = DetectionModel(model, nc=80, verbose=False)
    base.args = copy.copy(DEFAULT_CFG)
    plain = copy.deepcopy(base).to(device).train()
    supernet = Supernet(copy.deepcopy(base)).to(device).train()
    for mask in supernet.keep_ratio_masks().values():
        mask.set_keep_ratio(max(keep, mask.min_ratio))
    data = random_batch(batch, imgsz, device)

    def sgd(net):
        return torch.optim.SGD([p for n, p in net.named_parameters() if "keep_ratio" not in n], lr=1e-4, momentum=0.9)

    plain_opt, super_opt = sgd(plain), sgd(supernet)
    structure = StructureStep(supernet, ResourceModel(supernet, imgsz), lr=0.01, weight=1.0)
    target = 0.5 * structure.resources.gflops().item()

    def plain_step(scaler):
        scaler.step(plain_opt)
        scaler.update()
        plain_opt.zero_grad()

    def search_step(scaler):
        structure.step(target, scaler.get_scale() if scaler.is_enabled() else 1.0)
        scaler.step(super_opt)
        scaler.update()
        super_opt.zero_grad()

    runs = [(plain, plain_step), (supernet, search_step)]
    scalers = [torch.amp.GradScaler(device.type, enabled=amp) for _ in runs]
    times: list[list[float]] = [[], []]
    for i in range(warmup + iters):
        for (net, step), scaler, timed in zip(runs, scalers, times):
            seconds = _iteration(net, step, scaler, data, amp, device)
            if i >= warmup:
                timed.append(seconds)
    return statistics.median(times[0]), statistics.median(times[1])
