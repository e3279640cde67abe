"""Time one DMS search iteration against one plain training iteration of the same supernet.

    python tools/search_overhead.py model=yolov8s.yaml imgsz=320 batch=8 iters=10 device=cpu keep=0.5
    python tools/search_overhead.py model=yolov8s.yaml imgsz=640 batch=32 iters=20 warmup=5 device=0 amp=True
"""

from __future__ import annotations

import sys

import torch
from ultralytics.cfg import smart_value

from yolo_dms.tools.overhead import measure_overhead

DEFAULTS = {
    "model": "yolov8s.yaml", "imgsz": 320, "batch": 8, "iters": 10, "warmup": 3, "device": "cpu", "amp": False, "keep": 1.0
}


def main(argv: list[str]) -> None:
    options = dict(DEFAULTS)
    for pair in argv:
        key, _, value = pair.partition("=")
        if key not in DEFAULTS:
            sys.exit(f"unknown argument '{key}'; valid: {', '.join(DEFAULTS)}")
        options[key] = smart_value(value)
    options["device"] = str(options["device"])
    plain, search = measure_overhead(**options)
    gpu = options["device"] not in {"cpu", ""}
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{options['model']} imgsz={options['imgsz']} batch={options['batch']} amp={options['amp']} on {name}: "
        f"plain {plain * 1000:.1f} ms/iter, search {search * 1000:.1f} ms/iter, ratio {search / plain:.2f} "
        f"(keep ratios {options['keep']}, median of {options['iters']} after {options['warmup']} warm-up)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
