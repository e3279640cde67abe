"""Predicted against measured latency, and the timing noise, of a model on this machine.

    python tools/latency_report.py model=yolov8n.yaml imgsz=128 structures=6 repeats=5 divisor=16
    python tools/latency_report.py model=yolov8s.yaml imgsz=640 latency_backend=torch device=0   # a GPU

Builds (or reads from its cache) the latency model `yolo-dms search resource=latency` uses, then for the full
supernet, uniform keep ratios 0.75 and 0.5, and random structures, prints the predicted milliseconds and the
measured milliseconds of the pruned, deployed model. The random structures are drawn from `seed` (default 1;
the latency model calibrates on structures drawn from seed 0, so these are held out). `divisor` is the search's
`divisor=`; `hidden_divisor` the multiple CSP hidden widths keep (by default the divisor, as `yolo-dms search
resource=latency` builds it; 1 frees them, as a GFLOPs search does); `latency_refresh=True` measures the table
again instead of reading its cache. Last, it times the full model `repeats` times and prints the spread (max / min
- 1): the margin a latency test must allow for timing noise.
"""

from __future__ import annotations

import random
import sys

import torch

from yolo_dms.cli import script_arguments
from yolo_dms.core.budget import structure_as
from yolo_dms.core.latency import CALIBRATION_RANGE, resource_model, time_structure
from yolo_dms.core.latency_backends import latency_backend
from yolo_dms.core.model_io import load_supernet

DEFAULTS = {"model": "yolov8n.yaml", "imgsz": 128, "structures": 6, "repeats": 5, "nc": 5, "seed": 1, "divisor": 8,
            "hidden_divisor": None, "latency_backend": "auto", "device": "cpu", "latency_refresh": False}


def main(argv: list[str]) -> None:
    options = script_arguments(argv, DEFAULTS)
    divisor = options["divisor"]
    hidden = options["hidden_divisor"] or divisor  # as a latency search aligns them
    supernet = load_supernet(options["model"], nc=options["nc"], divisor=divisor, hidden_divisor=hidden)
    imgsz = (options["imgsz"],) * 2
    backend = latency_backend(options["latency_backend"], options["device"])
    resources = resource_model(supernet, options["imgsz"], "latency", backend, options["latency_refresh"])
    names = list(supernet.keep_ratio_masks())
    rng = random.Random(options["seed"])
    structures = [("full", 1.0), ("uniform 0.75", 0.75), ("uniform 0.5", 0.5)]
    structures += [(f"random {i + 1}", None) for i in range(options["structures"] - 3)]
    title = f"{options['model']} @ {options['imgsz']}, {backend.name}"
    print(f"| {title} | predicted ms | measured ms | measured / predicted |")
    print("|---|---|---|---|")
    for label, ratio in structures:
        ratios = {n: ratio if ratio is not None else rng.uniform(*CALIBRATION_RANGE) for n in names}
        with structure_as(supernet, ratios), torch.no_grad():
            predicted, measured = resources.latency.ms().item(), time_structure(supernet, imgsz, backend)
        print(f"| {label} | {predicted:.3f} | {measured:.3f} | {measured / predicted:.3f} |")
    figures = [time_structure(supernet, imgsz, backend) for _ in range(options["repeats"])]
    print(f"\nfull model timed {options['repeats']} times: {' '.join(f'{f:.3f}' for f in figures)} ms, "
          f"spread {max(figures) / min(figures) - 1:.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
