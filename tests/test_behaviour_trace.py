"""The search's behaviour is pinned by recorded traces: a short detection and a short segmentation search must
reproduce, to float tolerance, the keep ratios after every batch, the fit, `search.csv`, `search.json` and the
pruned structure that the code produced when the traces were recorded. A refactor that changes what the search
does fails here; a change meant to alter behaviour records the traces again:

    python tests/test_behaviour_trace.py          # rewrites tests/fixtures/traces/*.json
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
from pathlib import Path

import pytest
import ultralytics
import yaml

from yolo_dms import DMS
from yolo_dms.core.budget import keep_ratios
from yolo_dms.tools.demo_data import make_dataset

TRACES = Path(__file__).parent / "fixtures" / "traces"
IMGSZ = 64
CASES = {  # one detection and one segmentation search, each with a refine phase and a projecting target
    "detect": "yolov8n.yaml",
    "segment": "yolov8n-seg.yaml",
}
VOLATILE = {"seconds", "save_dir", "date", "version", "weights", "yaml", "source"}  # paths, clocks, versions
# Float tolerance: the same code on another CPU (other SIMD summation orders) moves a keep ratio by up to 4.1e-4
# relative over the segmentation trace (measured between two machines; counts, fit and structure identical), while
# a change of behaviour moves them by percents
RTOL, ATOL = 1e-3, 1e-6


def _stable(value):
    """`value` without the entries that name paths, clocks or versions."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_path")}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def record(task: str, work: Path) -> dict:
    """Run the short search of `task` in `work` and return what it did, in plain JSON values."""
    data = make_dataset(work / "data", n_train=24, n_val=8, imgsz=IMGSZ, seed=3, task=task)
    dms, steps = DMS(CASES[task]), []
    dms.add_callback("on_train_batch_end", lambda trainer: steps.append(keep_ratios(trainer.supernet)))
    result = dms.search(data=str(data), target=0.5, epochs=3, imgsz=IMGSZ, batch=8, workers=0, device="cpu",
                        plots=False, seed=0, project=str(work / "runs"), name=task)
    with open(result.save_dir / "search.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads(result.summary.read_text())
    return json.loads(json.dumps({  # as the trace file holds it (string keys)
        "ultralytics": ultralytics.__version__,
        "keep_ratios": steps,
        "search_csv": [{k: float(v) for k, v in row.items()} for row in rows],
        "search_json": _stable(summary),
        "structure": yaml.safe_load(result.searched_yaml.read_text()),
    }))


def _close(recorded, now, where: str = "") -> None:
    """Assert two JSON values equal, numbers to float tolerance, naming the first place they differ."""
    if isinstance(recorded, dict):
        assert isinstance(now, dict) and set(recorded) == set(now), (where, sorted(set(recorded) ^ set(now or {})))
        for key in recorded:
            _close(recorded[key], now[key], f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(now, list) and len(recorded) == len(now), (where, len(recorded), len(now or []))
        for i, (a, b) in enumerate(zip(recorded, now)):
            _close(a, b, f"{where}[{i}]")
    elif isinstance(recorded, float) and not isinstance(now, bool):
        assert isinstance(now, (int, float)) and math.isclose(recorded, now, rel_tol=RTOL, abs_tol=ATOL), (
            where, recorded, now)
    else:
        assert recorded == now, (where, recorded, now)


@pytest.mark.parametrize("task", CASES)
def test_search_reproduces_its_recorded_trace(task, tmp_path):
    recorded = json.loads((TRACES / f"{task}.json").read_text())
    if recorded["ultralytics"] != ultralytics.__version__:  # its trainer (schedule, augmentation, loss) differs
        pytest.skip(f"the trace pins this code on Ultralytics {recorded['ultralytics']}, not {ultralytics.__version__}")
    _close(recorded, record(task, tmp_path), task)


if __name__ == "__main__":
    TRACES.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or CASES:
        with tempfile.TemporaryDirectory() as tmp:
            (TRACES / f"{name}.json").write_text(json.dumps(record(name, Path(tmp)), indent=1) + "\n")
        print(f"recorded {TRACES / name}.json")
