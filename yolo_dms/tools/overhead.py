"""Timing one DMS search iteration against one plain training iteration of the same supernet.

Both run the same model, batch and image size through forward, Ultralytics' detection loss, backward and an
SGD weight step; the search iteration adds the masks (soft, with Taylor-importance hooks) and the structure
step (resource model, balanced resource gradient, Adam on keep ratios). `keep` sets every keep ratio first: a
search spends most of its batches below 1, where many gates are closed (exactly 0, see `core.topk`).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG

from yolo_dms.core.budget import set_keep_ratios
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.tools.demo_data import random_batch


def _time(model, step, batch: dict, iters: int, warmup: int, amp: bool, device: torch.device) -> float:
    """Median seconds per iteration (forward, loss, backward, `step`) after `warmup` untimed ones."""
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, enabled=amp):
            loss, _ = model(batch)
        scaler.scale(loss.sum()).backward()
        step(scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    """(plain, search) median seconds per iteration of the same supernet on a random batch."""
    device = torch.device("cuda:0" if device not in {"cpu", ""} else "cpu")
    base = DetectionModel(model, nc=80, verbose=False)
    base.args = copy.copy(DEFAULT_CFG)
    plain = copy.deepcopy(base).to(device).train()
    supernet = Supernet(copy.deepcopy(base)).to(device).train()
    set_keep_ratios(supernet, dict.fromkeys(supernet.keep_ratio_masks(), keep))
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

    return (
        _time(plain, plain_step, data, iters, warmup, amp, device),
        _time(supernet, search_step, data, iters, warmup, amp, device),
    )
