"""Time one DMS search iteration against one plain training iteration of the same supernet.

    python tools/search_overhead.py model=yolov8s.yaml imgsz=320 batch=8 iters=10 device=cpu keep=0.5
    python tools/search_overhead.py model=yolov8s.yaml imgsz=640 batch=32 iters=20 warmup=5 device=0 amp=True
    python tools/search_overhead.py model=yolov8s.yaml imgsz=32 batch=2 iters=50 before=<commit> rounds=3

The search's host-side cost is the difference at a size where convolutions cost almost nothing (imgsz=32 on a
CPU). With `before=<commit>`, that commit's package and this checkout's are timed in alternating processes,
`rounds` times each, by this checkout's harness (yolo_dms/tools/overhead.py, loaded from its file so that it
times whichever package is importable).
"""

from __future__ import annotations

import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from ultralytics.cfg import smart_value

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "yolo_dms" / "tools" / "overhead.py"
DEFAULTS = {
    "model": "yolov8s.yaml", "imgsz": 320, "batch": 8, "iters": 10, "warmup": 3, "device": "cpu", "amp": False,
    "keep": 1.0,
}
COMPARE = {"before": "", "rounds": 3}
LINE = re.compile(r"plain ([\d.]+) ms/iter, search ([\d.]+) ms/iter")


def measure(options: dict) -> None:
    """Time with this checkout's harness against whichever `yolo_dms` is importable, and print one line."""
    spec = importlib.util.spec_from_file_location("search_overhead_harness", HARNESS)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    plain, search = harness.measure_overhead(**options)
    gpu = options["device"] not in {"cpu", ""}
    name = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{options['model']} imgsz={options['imgsz']} batch={options['batch']} amp={options['amp']} on {name}: "
        f"plain {plain * 1000:.1f} ms/iter, search {search * 1000:.1f} ms/iter, ratio {search / plain:.2f}, "
        f"search adds {(search - plain) * 1000:.1f} ms (keep ratios {options['keep']}, median of "
        f"{options['iters']} interleaved after {options['warmup']} warm-up)",
        flush=True,
    )


def compare(options: dict, before: str, rounds: int) -> None:
    """Alternate processes timing `before`'s package and this checkout's; print each line and the medians."""
    arguments = [f"{k}={v}" for k, v in options.items()]
    added: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", before, "yolo_dms"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        for _ in range(rounds):
            for label, path in (("before", old), ("after", str(ROOT))):
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}
                out = subprocess.run([sys.executable, __file__, *arguments], env=env, capture_output=True, text=True)
                line = next((x for x in out.stdout.splitlines() if LINE.search(x)), None)
                if line is None:
                    sys.exit(f"{label} failed:\n{out.stderr[-2000:]}")
                plain, search = map(float, LINE.search(line).groups())
                added[label].append(search - plain)
                print(f"{label} ({before if label == 'before' else 'this checkout'}): {line}", flush=True)
    old_ms, new_ms = (statistics.median(added[k]) for k in ("before", "after"))
    print(f"search adds {old_ms:.1f} ms before, {new_ms:.1f} ms after (median of {rounds}): {new_ms / old_ms:.2f}x")


def main(argv: list[str]) -> None:
    options, extra = dict(DEFAULTS), dict(COMPARE)
    for pair in argv:
        key, _, value = pair.partition("=")
        if key not in DEFAULTS and key not in COMPARE:
            sys.exit(f"unknown argument '{key}'; valid: {', '.join([*DEFAULTS, *COMPARE])}")
        (options if key in DEFAULTS else extra)[key] = value if key == "before" else smart_value(value)
    options["device"] = str(options["device"])
    if extra["before"]:
        compare(options, extra["before"], int(extra["rounds"]))
    else:
        measure(options)


if __name__ == "__main__":
    main(sys.argv[1:])
