"""DMS against uniform scaling and magnitude pruning at equal GFLOPs and equal training epochs.

Arms, all ending at the budget (within about 3%) and given the same total epochs `E` (search epochs count
against DMS; `S` is the part of the budget spent before the structure is fixed):

- `dms`: `yolo-dms search` of the supernet for S epochs, then stock fine-tuning of `pruned.pt` for E - S;
- `dms_scratch`: the same search, then `searched.yaml` trained from scratch for E - S;
- `uniform`: the supernet's YAML with `width_multiple` chosen to meet the budget, trained from scratch for E;
- `magnitude`: the supernet trained for S epochs, pruned to the budget by Torch-Pruning's L2 magnitude
  importance, fine-tuned for E - S (Torch-Pruning is a benchmark-only extra: `pip install yolo-dms[benchmark]`).

Every model is scored by Ultralytics' validator and, independently, by pycocotools on its saved predictions;
its ONNX export is timed under ONNX Runtime on the CPU (batch 1, median). Outputs: `results.csv`,
`results.md` (mean and spread over seeds), `map_vs_gflops.png`.
"""

from __future__ import annotations

import copy
import csv
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.modules import C2f, Conv
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import get_flops

from yolo_dms.demo_data import make_dataset
from yolo_dms.errors import DMSError
from yolo_dms.evaluation import onnx_report, validate
from yolo_dms.model_io import load_checkpoint_model
from yolo_dms.overhead import measure_overhead
from yolo_dms.search import run_search

ARMS = ("dms", "dms_scratch", "uniform", "magnitude")
DEFAULTS = {
    "data": "", "model": "yolov8s.yaml", "target": 0.5, "epochs": 20, "search_epochs": 10, "imgsz": 128,
    "batch": 16, "seeds": "0,1", "arms": ",".join(ARMS), "out": "runs/dms/benchmark", "n_train": 512,
    "n_val": 128, "latency_runs": 100,
}


# ------------------------------------------------------------------------------------------------- scoring
def coco_ground_truth(data_yaml: Path, out: Path) -> Path:
    """COCO-format ground truth of the validation split (YOLO labels, image ids from numeric file stems)."""
    import cv2
    import yaml

    info = yaml.safe_load(data_yaml.read_text())
    images_dir = Path(info["path"]) / info["val"]
    images, annotations = [], []
    for image in sorted(images_dir.iterdir()):
        height, width = cv2.imread(str(image)).shape[:2]
        image_id = int(image.stem)
        images.append({"id": image_id, "file_name": image.name, "width": width, "height": height})
        label = Path(info["path"]) / "labels" / info["val"].removeprefix("images/") / f"{image.stem}.txt"
        for line in label.read_text().split("\n") if label.exists() else []:
            if line.strip():
                c, x, y, w, h = map(float, line.split())
                box = [(x - w / 2) * width, (y - h / 2) * height, w * width, h * height]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    names = info["names"]
    categories = [{"id": i + 1, "name": str(names[i])} for i in range(len(names))]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out


def coco_map(ground_truth: Path, predictions: Path) -> float:
    """mAP50-95 by pycocotools, an independent check of Ultralytics' figure."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(ground_truth))
    detections = json.loads(predictions.read_text())
    if not detections:
        return 0.0
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


def score(weights: Path, data: Path, ground_truth: Path, imgsz: int, runs: int, out: Path) -> dict:
    """GFLOPs, params, Ultralytics and pycocotools mAP, and ONNX latency of one trained model."""
    scores, val_dir = validate(weights, data, imgsz, save_json=True, project=str(out), name="val", exist_ok=True)
    return {
        **scores,
        "coco_map50_95": coco_map(ground_truth, val_dir / "predictions.json"),
        "onnx_ms": onnx_report(weights, imgsz, runs).latency_ms,
    }


# ------------------------------------------------------------------------------------------------ the arms
def train(model, data: Path, epochs: int, seed: int, out: Path, name: str, imgsz: int, batch: int) -> Path:
    """Stock Ultralytics training of a YAML, a checkpoint, or an in-memory model; returns last.pt."""
    args = dict(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, workers=0, device="cpu",
                plots=False, project=str(out), name=name, exist_ok=True, val=False)
    if isinstance(model, nn.Module):
        trainer = DetectionTrainer(overrides={**args, "model": "yolov8n.yaml"})
        trainer.model = model  # trained as is: its own layers, no YAML rebuild
        trainer.train()
    else:
        YOLO(str(model)).train(**args)
    return out / name / "weights" / "last.pt"


def uniform_yaml(model: str, budget: float, imgsz: int, nc: int) -> dict:
    """The model's YAML for `nc` classes with one `width_multiple` (its own depth) whose GFLOPs are closest to
    the budget (the class count sets the Detect head's width, so it must be the dataset's)."""
    cfg = yaml_model_load(model)
    depth, width, _ = cfg["scales"][cfg.get("scale") or next(iter(cfg["scales"]))]
    base = {k: v for k, v in cfg.items() if k not in {"scales", "scale", "yaml_file"}}
    base["nc"] = nc

    def build(w: float) -> tuple[dict, float]:
        candidate = {**copy.deepcopy(base), "depth_multiple": depth, "width_multiple": w}
        return candidate, get_flops(DetectionModel(copy.deepcopy(candidate), verbose=False), imgsz)

    low, high = 0.01, width
    for _ in range(20):
        mid = (low + high) / 2
        low, high = (mid, high) if build(mid)[1] <= budget else (low, mid)
    return min((build(w) for w in (low, high)), key=lambda c: abs(c[1] - budget))[0]


class SplitC2f(nn.Module):
    """C2f whose `cv1` is two convolutions instead of one split in half, a graph Torch-Pruning can follow."""

    def __init__(self, c2f: C2f) -> None:
        super().__init__()
        self.halves = nn.ModuleList(_conv_rows(c2f.cv1, rows) for rows in (slice(0, c2f.c), slice(c2f.c, 2 * c2f.c)))
        self.m, self.cv2 = c2f.m, c2f.cv2
        self.i, self.f, self.type, self.np = c2f.i, c2f.f, c2f.type, c2f.np  # Ultralytics' layer bookkeeping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [half(x) for half in self.halves]
        y.extend(block(y[-1]) for block in self.m)
        return self.cv2(torch.cat(y, 1))


def _conv_rows(conv: Conv, rows: slice) -> Conv:
    """A Conv computing only the output channels `rows` of `conv`."""
    part = Conv(conv.conv.in_channels, rows.stop - rows.start, conv.conv.kernel_size, conv.conv.stride)
    part.conv.weight.data = conv.conv.weight.data[rows].clone()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(part.bn, name).data = getattr(conv.bn, name).data[rows].clone()
    part.act = conv.act
    return part


def magnitude_prune(weights: Path, budget: float, imgsz: int) -> nn.Module:
    """Prune a trained model to the budget with Torch-Pruning's L2 magnitude importance, step by step."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise DMSError("the magnitude arm needs Torch-Pruning: pip install 'yolo-dms[benchmark]'") from None
    model = load_checkpoint_model(weights)
    for i, layer in enumerate(model.model):
        if type(layer) is C2f:
            model.model[i] = SplitC2f(layer)
    for p in model.parameters():
        p.requires_grad_(True)
    head = model.model[-1]
    ignored = [head.dfl, *(seq[-1] for seq in head.cv2), *(seq[-1] for seq in head.cv3)]
    example = torch.zeros(1, 3, imgsz, imgsz)
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       iterative_steps=400, pruning_ratio=0.95, ignored_layers=ignored)
    model.eval()
    for _ in range(400):
        if get_flops(model, imgsz) <= budget:
            break
        pruner.step()
    return model.train()


# ------------------------------------------------------------------------------------------------- the run
def run_seed(seed: int, arms: list[str], options: dict, data: Path, ground_truth: Path, budget: float) -> list[dict]:
    """All arms for one seed; one row each, with the wall time of each phase.

    Phases: `structure_min` (the DMS search, shared by both DMS arms; for `magnitude` the supernet's training
    and the pruning), `train_min` (training the final network) and `eval_min` (validation, ONNX, timing).
    `total_min` counts the shared search once per arm, as a user running that arm alone would pay it.
    """
    nc = len(json.loads(ground_truth.read_text())["categories"])
    out, imgsz, batch = Path(options["out"]) / f"seed{seed}", options["imgsz"], options["batch"]
    epochs, search_epochs = options["epochs"], options["search_epochs"]
    rows = []

    def timed(fn, *args):
        start = time.time()
        return fn(*args), (time.time() - start) / 60

    structure = {}
    if {"dms", "dms_scratch"} & set(arms):
        search, structure["dms"] = timed(run_search, {
            "model": options["model"], "data": str(data), "gflops": budget, "epochs": search_epochs,
            "imgsz": imgsz, "batch": batch, "seed": seed, "workers": 0, "device": "cpu", "plots": False,
            "project": str(out), "name": "search", "exist_ok": True,
        })
        structure["dms_scratch"] = structure["dms"]
    if "magnitude" in arms:
        pruned, structure["magnitude"] = timed(lambda: magnitude_prune(
            train(options["model"], data, search_epochs, seed, out, "magnitude_pre", imgsz, batch), budget, imgsz))
    final = {
        "dms": lambda: train(search.export_result.weights_path, data, epochs - search_epochs, seed, out, "dms",
                             imgsz, batch),
        "dms_scratch": lambda: train(search.export_result.yaml_path, data, epochs - search_epochs, seed, out,
                                     "dms_scratch", imgsz, batch),
        "uniform": lambda: train(_write_yaml(uniform_yaml(options["model"], budget, imgsz, nc), out / "uniform.yaml"),
                                 data, epochs, seed, out, "uniform", imgsz, batch),
        "magnitude": lambda: train(pruned, data, epochs - search_epochs, seed, out, "magnitude", imgsz, batch),
    }
    for arm in arms:
        weights, train_min = timed(final[arm])
        scores, eval_min = timed(score, weights, data, ground_truth, imgsz, options["latency_runs"], out / arm)
        phases = {"structure_min": structure.get(arm, 0.0), "train_min": train_min, "eval_min": eval_min}
        row = {"arm": arm, "seed": seed, **scores, **phases, "total_min": sum(phases.values())}
        rows.append(row)
        LOGGER.info(f"benchmark {arm} seed {seed}: {row}")
    return rows


def _write_yaml(cfg: dict, path: Path) -> Path:
    from yolo_dms.model_io import write_model_yaml

    return write_model_yaml(cfg, path, "Uniformly scaled baseline written by the yolo-dms benchmark")


def summarize(rows: list[dict], budget: float, overhead: str) -> str:
    """Markdown table: mean and spread (population std) over seeds, per arm."""
    keys = ("gflops", "params", "map50_95", "map50", "coco_map50_95", "onnx_ms", "structure_min", "train_min",
            "eval_min")
    lines = [
        f"Budget {budget:.4g} GFLOPs. Mean ± std over seeds {sorted({r['seed'] for r in rows})}.",
        "",
        "| arm | GFLOPs | params | mAP50-95 | mAP50 | mAP50-95 (pycocotools) | ONNX CPU ms | structure min "
        "| train min | eval min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        cells = []
        for key in keys:
            values = [r[key] for r in rows if r["arm"] == arm]
            mean, spread = statistics.mean(values), statistics.pstdev(values)
            fmt = "{:,.0f}" if key == "params" else "{:.4f}" if "map" in key or key == "gflops" else "{:.2f}"
            cells.append(fmt.format(mean) + (f" ± {fmt.format(spread)}" if spread else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", f"Search overhead: {overhead}"]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), tight_layout=True)
    for arm in dict.fromkeys(r["arm"] for r in rows):
        points = [(r["gflops"], r["map50_95"]) for r in rows if r["arm"] == arm]
        ax.scatter(*zip(*points), label=arm, s=40)
    ax.set(xlabel="GFLOPs", ylabel="mAP50-95", title="Equal-budget comparison")
    ax.legend()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def run_benchmark(**overrides) -> str:
    """The whole benchmark; returns the Markdown summary (also in `out/results.md`)."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise DMSError(f"unknown benchmark argument(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **overrides}
    arms = [a for a in str(options["arms"]).split(",") if a]
    if bad := [a for a in arms if a not in ARMS]:
        raise DMSError(f"unknown arm(s) {bad}; valid: {', '.join(ARMS)}")
    if not 0 < options["search_epochs"] < options["epochs"]:
        raise DMSError("search_epochs must be at least 1 and below epochs (the arms then train for the rest)")
    out = Path(options["out"]).resolve()
    options["out"] = out
    out.mkdir(parents=True, exist_ok=True)
    data = Path(options["data"]) if options["data"] else make_dataset(
        out / "data", n_train=options["n_train"], n_val=options["n_val"], imgsz=options["imgsz"])
    ground_truth = coco_ground_truth(data, out / "val_ground_truth.json")
    full = get_flops(DetectionModel(options["model"], nc=len(json.loads(ground_truth.read_text())["categories"]),
                                    verbose=False), options["imgsz"])
    budget = options["target"] * full
    seeds = options["seeds"]  # "0,1" from Python, (0, 1) once the CLI has typed it
    seeds = [int(x) for x in (seeds if isinstance(seeds, list | tuple) else str(seeds).split(",")) if str(x).strip()]
    rows = [row for seed in seeds for row in run_seed(seed, arms, options, data, ground_truth, budget)]
    plain, search = measure_overhead(options["model"], options["imgsz"], options["batch"], iters=5, warmup=2)
    overhead = (f"{search / plain:.2f}x ({search * 1000:.0f} vs {plain * 1000:.0f} ms per iteration, "
                f"{options['model']}, imgsz={options['imgsz']}, batch={options['batch']}, CPU)")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, budget, overhead)
    (out / "results.md").write_text(summary + "\n")
    plot(rows, out / "map_vs_gflops.png")
    print(summary)
    return summary
