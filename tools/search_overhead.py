"""Time one DMS search iteration against one plain training iteration of the same supernet.

Both iterations run the same model, batch and image size through forward, Ultralytics' detection loss,
backward and an SGD weight step; the search iteration adds the masks (soft, with Taylor-importance hooks)
and the structure step (resource model, balanced resource gradient, Adam on keep ratios).

    python tools/search_overhead.py model=yolov8s.yaml imgsz=320 batch=8 iters=10 device=cpu
    python tools/search_overhead.py model=yolov8s.yaml imgsz=640 batch=32 iters=50 device=0 amp=True
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
from ultralytics.cfg import smart_value
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG

from yolo_dms import ResourceModel, Supernet
from yolo_dms.demo_data import random_batch
from yolo_dms.objective import StructureStep

DEFAULTS = {"model": "yolov8s.yaml", "imgsz": 320, "batch": 8, "iters": 10, "warmup": 3, "device": "cpu", "amp": False}


def time_iterations(model, step, batch: dict, iters: int, warmup: int, amp: bool, device: torch.device) -> list[float]:
    """Seconds per iteration (forward, loss, backward, `step`), after `warmup` untimed ones."""
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
    return times


def main(argv: list[str]) -> None:
    options = dict(DEFAULTS)
    for pair in argv:
        key, _, value = pair.partition("=")
        if key not in DEFAULTS:
            sys.exit(f"unknown argument '{key}'; valid: {', '.join(DEFAULTS)}")
        options[key] = smart_value(value)
    device = torch.device("cuda:0" if str(options["device"]) not in {"cpu", ""} else "cpu")
    base = DetectionModel(options["model"], nc=80, verbose=False)
    base.args = copy.copy(DEFAULT_CFG)
    plain = copy.deepcopy(base).to(device).train()
    supernet = Supernet(copy.deepcopy(base)).to(device).train()
    batch = random_batch(options["batch"], options["imgsz"], device)

    def sgd(model):
        weights = [p for n, p in model.named_parameters() if "keep_ratio" not in n]
        return torch.optim.SGD(weights, lr=1e-4, momentum=0.9)

    plain_opt, super_opt = sgd(plain), sgd(supernet)
    structure = StructureStep(supernet, ResourceModel(supernet, options["imgsz"]), lr=0.01, weight=1.0)
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

    args = (batch, options["iters"], options["warmup"], bool(options["amp"]), device)
    plain_times = time_iterations(plain, plain_step, *args)
    search_times = time_iterations(supernet, search_step, *args)
    p, s = statistics.median(plain_times), statistics.median(search_times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{options['model']} imgsz={options['imgsz']} batch={options['batch']} amp={options['amp']} on {name}: "
        f"plain {p * 1000:.1f} ms/iter, search {s * 1000:.1f} ms/iter, ratio {s / p:.2f} "
        f"(median of {options['iters']} after {options['warmup']} warm-up)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
