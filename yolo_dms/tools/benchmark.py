"""DMS against magnitude pruning, a frozen-structure control and uniform scaling, at equal GFLOPs and epochs, for
any task DMS searches (detect, segment, pose, obb, classify: the model's own, as `yolo train` reads it).

Every arm ends at the budget (`target` times the model's GFLOPs at `imgsz`, within about 3%) and gets the same
total epochs `E`; `S` of them (`search_epochs`) are spent before the structure is fixed. From a `.pt`, every
arm but the from-scratch ones starts from its weights.

- `dms`: `yolo-dms search` of the model for S epochs, then stock fine-tuning of `pruned.pt` for E - S with the
  arguments its `search.json` recommends (the search's optimizer at a tenth of its rate), as every arm that
  starts from a search's `pruned.pt` (`dms_kd`, `dms_sgd`, `taylor_uniform`);
- `dms_kd`: the same search, then stock fine-tuning with Ultralytics' distillation (`distill_model=`, `dis` at
  its default), for E - S, from a teacher that knows the data: `teacher=` when given (`{seed}` in it becomes the
  seed), else the starting `.pt` when its class names are the data's, else the `reference` arm's model (trained
  once per seed, shared with that arm). Ultralytics distils through the Detect head, so there is no `dms_kd` for
  classification models;
- `dms_scratch`: the same search, then `searched.yaml` trained from scratch for E - S;
- `dms_sgd`: `dms` with the keep ratios stepped by normalized SGD instead of Adam (`structure_optimizer=sgd`),
  the ablation of how the structure step allocates the budget across layers;
- `taylor_uniform`: the same search with the structure frozen (`structure_lr=0`), so its final
  fit prunes every layer by one common keep ratio with the Taylor ranking; then fine-tuned for E - S;
- `magnitude_uniform` / `magnitude_global`: the model trained for S epochs, pruned to the budget in one shot by
  Torch-Pruning's L2 magnitude importance, per layer / ranked across layers (`global_pruning`), fine-tuned for E - S
  by the task's stock trainer (Torch-Pruning is a benchmark-only extra: `pip install yolo-dms[tools]`); the
  layers that fix the head's output format keep their channels. Torch-Pruning cannot prune attention (C2PSA in
  YOLO11 and YOLO26), so these arms are left out for such models;
- `uniform`: the model's YAML with one `width_multiple` chosen to meet the budget, trained from scratch for E;
- `reference`: the unpruned model trained for E (fine-tuned from a `.pt`), the accuracy pruning gives away.

Every model is scored by its task's stock Ultralytics validator on the two scores the task table names (box, mask,
pose or OBB mAP50-95 and mAP50; top-1 and top-5 accuracy) and, for detection, independently by pycocotools on the
COCO-format files that validator writes (`evaluation.validate`); its ONNX export is timed under ONNX Runtime on
the CPU (batch 1, median). Training and validation run on `device=`, as in Ultralytics. With no `data=`, the demo
dataset of the model's task is written. Outputs: `benchmark.csv`, `benchmark.md` (mean and spread over seeds),
`map_vs_gflops.png` (the task's first score against GFLOPs); `merge_results` joins the outputs of several runs
of one task (CSVs written before the `task` column read as detection).
"""

from __future__ import annotations

import copy
import csv
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from ultralytics import YOLO
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.modules import C2f, Conv, Detect
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.tasks import BaseModel
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import select_device

from yolo_dms.core.data import resolve_data
from yolo_dms.core.errors import DMSError
from yolo_dms.core.model_io import (
    build_task_model,
    is_checkpoint,
    load_checkpoint_model,
    load_model,
    resolve_model,
    trained_on,
    write_model_yaml,
)
from yolo_dms.core.resources import deployed_gflops
from yolo_dms.core.tasks import DISTILLATION, TASKS, model_task
from yolo_dms.search.run import run_search
from yolo_dms.search.summary import read_summary, recommended_finetune
from yolo_dms.tools.demo_data import make_dataset
from yolo_dms.tools.evaluation import onnx_report, validate
from yolo_dms.tools.overhead import measure_overhead

# `reference` first: it is dms_kd's teacher when the model's classes are not the data's
ARMS = ("reference", "dms", "dms_kd", "dms_scratch", "dms_sgd", "taylor_uniform", "magnitude_uniform",
        "magnitude_global", "uniform", "stock")
DEFAULTS = {
    "data": "", "model": "yolov8s.yaml", "target": 0.5, "epochs": 20, "search_epochs": 10, "imgsz": 128,
    "batch": 16, "seeds": "0,1", "arms": "", "out": "runs/dms/benchmark", "n_train": 512,
    "n_val": 128, "latency_runs": 100, "device": None, "workers": 2, "cache": False, "overhead": True,
    "teacher": "", "stock_models": "",
}
# arm -> the search it starts from (also its run name), and that search's own settings: `search_taylor` has its
# structure frozen (0: the keep ratios never move), `search_sgd` steps the keep ratios with normalized SGD
SEARCH_ARMS = {"dms": "search", "dms_kd": "search", "dms_scratch": "search", "dms_sgd": "search_sgd",
               "taylor_uniform": "search_taylor"}
SEARCH_SETTINGS = {"search": {}, "search_taylor": {"structure_lr": 0.0}, "search_sgd": {"structure_optimizer": "sgd"}}
MAGNITUDE_ARMS = {"magnitude_uniform": False, "magnitude_global": True}  # arm -> Torch-Pruning global_pruning


# ----------------------------------------------------------------------------------------------- inputs
def model_cfg(network: BaseModel, info: dict) -> dict:
    """The loaded model's architecture as a YAML dict (a checkpoint's own YAML, or the YAML file it was built
    from) for the dataset `info`, as its trainer builds it: the data's class count and, for pose, keypoint shape."""
    return {**copy.deepcopy(network.yaml), "nc": info["nc"],
            **({"kpt_shape": info["kpt_shape"]} if "kpt_shape" in info else {})}


# ------------------------------------------------------------------------------------------------- the arms
def train(model, data: Path, epochs: int, seed: int, out: Path, name: str, options: dict, **extra) -> Path:
    """Stock Ultralytics training of a YAML, a checkpoint, or an in-memory model; returns last.pt."""
    args = dict(data=str(data), epochs=epochs, imgsz=options["imgsz"], batch=options["batch"], seed=seed,
                workers=options["workers"], device=options["device"], cache=options["cache"], plots=False,
                project=str(out), name=name, exist_ok=True, val=False, **extra)
    if isinstance(model, nn.Module):
        source = str(options["model"])  # what the in-memory model was made from: its task's trainer, as `yolo train`
        trainer = YOLO(source).task_map[model_task(model)]["trainer"](overrides={**args, "model": source})
        trainer.model = model  # trained as is: its own layers, no YAML rebuild
        trainer.train()
    else:
        YOLO(str(model)).train(**args)
    return out / name / "weights" / "last.pt"


def search(model: str, data: Path, budget: float, seed: int, out: Path, name: str, options: dict, **dms) -> Path:
    """A `yolo-dms search` of `model` for `search_epochs` down to `budget` GFLOPs; returns its pruned.pt."""
    trainer = run_search({
        "model": model, "data": str(data), "gflops": budget, "epochs": options["search_epochs"],
        "imgsz": options["imgsz"], "batch": options["batch"], "seed": seed, "workers": options["workers"],
        "device": options["device"], "cache": options["cache"], "plots": False, "project": str(out), "name": name,
        "exist_ok": True, **dms,
    })
    return trainer.session.export_result.weights_path


def uniform_yaml(cfg: dict, budget: float, imgsz: int) -> dict:
    """`cfg` with its own depth and the one width multiplier whose GFLOPs are closest to the budget (the
    class count sets the Detect head's width, so `cfg` must carry the dataset's). The model is built by its task's
    class, whose head (masks, keypoints, angles, classifier) counts too."""
    base = {k: v for k, v in cfg.items() if k not in {"scales", "scale", "depth_multiple", "width_multiple",
                                                         "yaml_file"}}
    if cfg.get("scales"):
        depth, width, max_channels = cfg["scales"][cfg.get("scale") or next(iter(cfg["scales"]))]
    else:
        depth, width, max_channels = cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0), None

    def build(w: float) -> tuple[dict, float]:
        # One named scale keeps the stock channel cap; a YAML without scales has none
        scaling = {"scales": {"u": [depth, w, max_channels]}} if max_channels else {"depth_multiple": depth,
                                                                                   "width_multiple": w}
        candidate = {**copy.deepcopy(base), **scaling}
        return candidate, deployed_gflops(build_task_model(candidate), imgsz)

    low, high = 0.01, width
    for _ in range(20):
        mid = (low + high) / 2
        low, high = (mid, high) if build(mid)[1] <= budget else (low, mid)
    return min((build(w) for w in (low, high)), key=lambda c: abs(c[1] - budget))[0]


class SplitC2f(nn.Module):
    """C2f (or a subclass with its forward: YOLO11's C3k2) whose `cv1` is two convolutions instead of one split in
    half, a graph Torch-Pruning can follow."""

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


def attention_layers(model: BaseModel) -> list[str]:
    """The layers (index and class) with attention inside (YOLO11's and YOLO26's C2PSA, YOLO26's C3k2 with PSA
    blocks): Torch-Pruning cannot prune them, its group search does not finish through the heads' reshapes."""
    return [f"{i} ({type(layer).__name__})" for i, layer in enumerate(model.model)
            if any(isinstance(m, Attention) for m in layer.modules())]


def output_layers(head: nn.Module) -> list[nn.Module]:
    """The head's layers whose output channels are its output format, which pruning must keep: the last layer
    of every per-level branch (Detect's box and class branches, YOLO26's one-to-one copies of them, the mask
    coefficient, keypoint or angle branches), DFL, the mask prototypes (and YOLO26's semantic logits) and the
    classifier."""

    def last(module: nn.Module) -> nn.Module:
        return [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]

    layers = [last(branch) for child in head.children() if isinstance(child, nn.ModuleList) for branch in child]
    layers += [getattr(head, name) for name in ("dfl", "linear") if hasattr(head, name)]
    if proto := getattr(head, "proto", None):
        layers += [proto.cv3, *([last(proto.semseg)] if hasattr(proto, "semseg") else [])]
    return layers


def unavailable_arms(network: BaseModel, model: str) -> dict[str, str]:
    """The arms `network` (built from `model`) cannot run, each with the one-line reason."""
    cannot = {}
    if not DISTILLATION:
        cannot["dms_kd"] = f"Ultralytics {ULTRALYTICS_VERSION} has no knowledge distillation (distill_model=)"
    elif not isinstance(network.model[-1], Detect):
        cannot["dms_kd"] = (f"Ultralytics distils through the Detect head (DistillationModel.get_distill_layers), "
                            f"which a {model_task(network)} model does not have")
    if attention := attention_layers(network):
        cannot |= dict.fromkeys(MAGNITUDE_ARMS, (
            f"Torch-Pruning cannot prune the attention in layer(s) {', '.join(attention)} of {Path(model).name} "
            "(its group search does not finish through the attention heads' reshapes)"))
    return cannot


def magnitude_prune(weights: Path, budget: float, imgsz: int, global_pruning: bool) -> nn.Module:
    """A trained model of any task pruned to the budget in one shot by Torch-Pruning's L2 magnitude importance,
    channels ranked within each layer (every layer loses the same share) or, with `global_pruning`, across
    layers; the pruning ratio is the smallest that meets the budget, found by bisection (10 halvings: within
    0.1%; each one prunes a copy). The head's output format is kept (`output_layers`)."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise DMSError("the magnitude arms need Torch-Pruning: pip install 'yolo-dms[tools]'") from None
    model = load_checkpoint_model(weights).cpu().eval()
    for i, layer in enumerate(model.model):
        if isinstance(layer, C2f) and type(layer).forward is C2f.forward:  # C2f and its subclasses, e.g. C3k2
            model.model[i] = SplitC2f(layer)

    def pruned(ratio: float) -> nn.Module:
        candidate = copy.deepcopy(model)
        for p in candidate.parameters():
            p.requires_grad_(True)
        tp.pruner.MagnitudePruner(
            candidate, torch.zeros(1, 3, 64, 64),  # traces the graph only; any size the strides divide will do
            importance=tp.importance.MagnitudeImportance(p=2), global_pruning=global_pruning, pruning_ratio=ratio,
            ignored_layers=output_layers(candidate.model[-1]),
        ).step()
        return candidate

    low, high = 0.0, 0.95  # pruning ratios over and under the budget
    for _ in range(10):
        mid = (low + high) / 2
        low, high = (low, mid) if deployed_gflops(pruned(mid), imgsz) <= budget else (mid, high)
    return pruned(high).train()


# ------------------------------------------------------------------------------------------------- the run
def stock_arms(options: dict) -> dict[str, str]:
    """The `stock` arm's rows, `stock_<name>` -> each of `stock_models` (a `.pt` is fine-tuned, a YAML trained from
    scratch), trained for E epochs at its own GFLOPs: the stock family's curve a pruned model must beat."""
    return {f"stock_{Path(name).stem}": name for name in str(options["stock_models"]).split(",") if name}


def arm_order(arm: str) -> tuple[int, str]:
    """Where a row's arm sorts: in `ARMS` order, every `stock_<name>` row where the `stock` arm is."""
    return ARMS.index("stock" if arm.startswith("stock_") else arm), arm


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """`fn()` and its wall time in minutes."""
    start = time.time()
    return fn(), (time.time() - start) / 60


def run_seed(
    seed: int, arms: list[str], options: dict, data: Path, cfg: dict, budget: float, names: dict, task: str
) -> list[dict]:
    """All arms for one seed; one row each, with the wall time of each phase.

    Phases: `structure_min` (the search, shared by the arms that use the same one; for the magnitude arms the
    model's training, shared, plus their own pruning), `train_min` (training the final network) and
    `eval_min` (validation, ONNX, timing). `total_min` counts a shared phase once per arm, as a user running
    that arm alone would pay it.
    """
    out, model, imgsz = Path(options["out"]) / f"seed{seed}", options["model"], options["imgsz"]
    epochs, rest = options["epochs"], options["epochs"] - options["search_epochs"]
    shared: dict[str, tuple[object, float]] = {}

    def once(key: str, fn: Callable[[], object]) -> tuple[object, float]:
        """`fn()` and its minutes, run the first time `key` is asked for; later arms reuse both."""
        if key not in shared:
            shared[key] = timed(fn)
        return shared[key]

    def reference() -> tuple[Path, float]:
        """The unpruned model trained for E epochs, and its minutes (once per seed)."""
        return once("reference", lambda: train(model, data, epochs, seed, out, "reference", options))

    def teacher() -> tuple[str, float]:
        """The distillation teacher (see `dms_kd`) and the minutes spent training it here."""
        if options["teacher"]:
            return str(options["teacher"]).replace("{seed}", str(seed)), 0.0
        if is_checkpoint(model) and trained_on(model, names):
            return model, 0.0
        weights, minutes = reference()
        return str(weights), minutes

    def structure(arm: str) -> tuple[Callable[[], Path], float]:
        """(The arm's final training, still to run; the minutes spent fixing its structure)."""
        if arm == "reference":
            return lambda: reference()[0], 0.0
        if arm in stock_arms(options):
            return lambda: train(stock_arms(options)[arm], data, epochs, seed, out, arm, options), 0.0
        if arm == "uniform":
            path = write_model_yaml(uniform_yaml(cfg, budget, imgsz), out / "uniform.yaml",
                                    "Uniformly scaled baseline written by the yolo-dms benchmark")
            return lambda: train(path, data, epochs, seed, out, arm, options), 0.0
        if arm in MAGNITUDE_ARMS:
            trained, pre_min = once("magnitude_pre", lambda: train(
                model, data, options["search_epochs"], seed, out, "magnitude_pre", options))
            network, prune_min = timed(lambda: magnitude_prune(trained, budget, imgsz, MAGNITUDE_ARMS[arm]))
            return lambda: train(network, data, rest, seed, out, arm, options), pre_min + prune_min
        name = SEARCH_ARMS[arm]
        settings = SEARCH_SETTINGS[name]
        pruned, search_min = once(name, lambda: search(model, data, budget, seed, out, name, options, **settings))
        if arm == "dms_scratch":
            return lambda: train(pruned.parent / "searched.yaml", data, rest, seed, out, arm, options), search_min
        finetune = recommended_finetune(read_summary(pruned.parent))
        if arm == "dms_kd":
            distill_model, teacher_min = teacher()
            return (lambda: train(pruned, data, rest, seed, out, arm, options, distill_model=distill_model,
                                  **finetune), search_min + teacher_min)
        return lambda: train(pruned, data, rest, seed, out, arm, options, **finetune), search_min

    def score(weights: Path, arm: str) -> dict:
        """GFLOPs, params, the task's two scores (and pycocotools' mAP50-95 for detection) and ONNX Runtime
        latency; `latency_runs=0` skips ONNX (NaN), for runs that share the CPU with others, where a timing would
        not mean much."""
        scores = validate(weights, data, imgsz, options["device"], save_json=True, project=str(out / arm),
                          name="val", exist_ok=True)[0]
        runs = options["latency_runs"]
        return {**scores, "onnx_ms": onnx_report(weights, imgsz, runs).latency_ms if runs else math.nan}

    rows = []
    for arm in (row for name in arms for row in (stock_arms(options) if name == "stock" else [name])):
        final_training, structure_min = structure(arm)
        weights, train_min = timed(final_training)
        scores, eval_min = timed(lambda: score(weights, arm))
        phases = {"structure_min": structure_min, "train_min": train_min, "eval_min": eval_min}
        row = {"arm": arm, "target": options["target"], "budget": budget, "seed": seed, "task": task, **scores,
               **phases,
               "total_min": sum(phases.values())}
        rows.append(row)
        LOGGER.info(f"benchmark {arm} seed {seed}: {row}")
    return rows


# ----------------------------------------------------------------------------------------------- reporting
PHASES = ("structure_min", "train_min", "eval_min")
LABELS = {"gflops": "GFLOPs", "params": "params", "coco_map50_95": "mAP50-95 (pycocotools)", "onnx_ms": "ONNX CPU ms",
          **{phase: phase.replace("_min", " min") for phase in PHASES}}


def row_task(row: dict) -> str:
    """A row's task; CSVs written before the `task` column are detection runs."""
    return row.get("task") or "detect"


def columns(task: str) -> tuple[str, ...]:
    """The measured columns for `task`: its two scores (`TaskKind.metrics`), pycocotools' check for detection only."""
    scores = tuple(metric.key for metric in TASKS[task].metrics)
    return ("gflops", "params", *scores, *(("coco_map50_95",) if task == "detect" else ()), "onnx_ms", *PHASES)


def labels(task: str) -> dict[str, str]:
    """Column headers for `task`: the task's own score names (mask mAP50-95, top-1 accuracy, ...)."""
    return {**LABELS, **{metric.key: metric.label for metric in TASKS[task].metrics}}


def one_task(rows: list[dict]) -> str:
    """The task all `rows` share: one table and one plot compare one kind of score."""
    tasks = sorted({row_task(r) for r in rows})
    if len(tasks) > 1:
        raise DMSError(f"benchmark rows of several tasks ({', '.join(tasks)}); summarize each task's runs apart")
    return tasks[0]


def summarize(rows: list[dict], overhead: str = "") -> str:
    """Markdown: per target, one line per arm with the mean and spread (population std) over its seeds (merged
    runs may give the arms different seeds; each row then names its own)."""
    task = one_task(rows)
    keys, names = columns(task), labels(task)
    lines = []
    for target in dict.fromkeys(float(r["target"]) for r in rows):
        group = [r for r in rows if float(r["target"]) == target]
        seeds = {arm: sorted({int(r["seed"]) for r in group if r["arm"] == arm}) for arm in (r["arm"] for r in group)}
        shared = len({tuple(s) for s in seeds.values()}) == 1
        lines += [
            f"Target {target:g}: budget {float(group[0]['budget']):.4g} GFLOPs. Mean ± std over "
            + (f"seeds {next(iter(seeds.values()))}." if shared else "each arm's seeds (in brackets)."),
            "",
            "| arm | " + " | ".join(names[key] for key in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for arm in seeds:
            cells = []
            for key in keys:
                values = [float(r[key]) for r in group if r["arm"] == arm]
                if any(math.isnan(v) for v in values):  # not measured (ONNX timing skipped)
                    cells.append("-")
                    continue
                mean, spread = statistics.mean(values), statistics.pstdev(values)
                fmt = "{:,.0f}" if key == "params" else "{:.2f}" if key in {"onnx_ms", *PHASES} else "{:.4f}"
                cells.append(fmt.format(mean) + (f" ± {fmt.format(spread)}" if spread else ""))
            lines.append(f"| {arm}{'' if shared else f' {seeds[arm]}'} | " + " | ".join(cells) + " |")
        lines.append("")
    if overhead:
        lines.append(f"Search overhead: {overhead}")
    return "\n".join(lines).rstrip() + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """The task's first score against GFLOPs and, where it was timed, ONNX Runtime milliseconds: each arm's mean
    over its seeds with their spread (arms offset a little on x so none hides another), per target, and the
    stock models (`stock_*` rows) as one curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = TASKS[one_task(rows)].metrics[0]
    axes = [("gflops", "GFLOPs")] + ([("onnx_ms", "ONNX Runtime CPU ms, batch 1")]
                                     if any(not math.isnan(float(r["onnx_ms"])) for r in rows) else [])
    fig, panels = plt.subplots(1, len(axes), figsize=(7 * len(axes), 4.5), tight_layout=True, squeeze=False)
    for ax, (key, label) in zip(panels[0], axes):
        points = arm_points(rows, key, score.key)
        stock = sorted(point for arm, point in points if arm.startswith("stock_"))
        if stock:
            ax.plot([x for x, *_ in stock], [y for _, y, _ in stock], "k-o", label="stock models", zorder=1)
        others = [(arm, point) for arm, point in points if not arm.startswith("stock_")]
        low, high = x_window([x for _, (x, _, _) in points])
        for arm, (x, y, spread) in others:  # spread over x each group of arms that would hide each other
            group = [name for name, (other, _, _) in others if abs(other - x) < 0.04 * (high - low)]
            offset = (group.index(arm) - (len(group) - 1) / 2) * 0.008 * (high - low)
            ax.errorbar(x + offset, y, yerr=spread, fmt="o", capsize=3, label=arm)
        ax.set_xlim(low, high)
        ax.set(xlabel=label, ylabel=score.label, title=f"Mean ± std over seeds, against {label.split(',')[0]}")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def x_window(xs: list[float]) -> tuple[float, float]:
    """The x range a plot shows around points at `xs`: their span with a 10% margin, and at least 24% of the
    largest x, because the arms at one budget differ by a fraction of a percent and must read as one x value
    rather than as an axis zoomed into a difference that is not there."""
    xs = xs or [1.0]
    width = max(max(xs) - min(xs), 0.2 * max(xs))
    centre = (max(xs) + min(xs)) / 2
    return centre - 0.6 * width, centre + 0.6 * width


def arm_points(rows: list[dict], x_key: str, y_key: str) -> list[tuple[str, tuple[float, float, float]]]:
    """(label, (mean x, mean y, std y)) of every arm and target over its seeds; labels name the target when
    several are plotted."""
    targets = list(dict.fromkeys(float(r["target"]) for r in rows))
    points = []
    for target in targets:
        for arm in dict.fromkeys(r["arm"] for r in rows if float(r["target"]) == target):
            group = [r for r in rows if r["arm"] == arm and float(r["target"]) == target]
            xs, ys = [float(r[x_key]) for r in group], [float(r[y_key]) for r in group]
            label = arm if len(targets) == 1 or arm.startswith("stock_") else f"{arm} ({target:g})"
            if label not in (p[0] for p in points) and not any(math.isnan(x) for x in xs):
                points.append((label, (statistics.mean(xs), statistics.mean(ys), statistics.pstdev(ys))))
    return points


def write_results(rows: list[dict], out: Path, overhead: str = "") -> str:
    """`benchmark.csv`, `benchmark.md` and `map_vs_gflops.png` under `out`; returns the Markdown."""
    with open(out / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, overhead)
    (out / "benchmark.md").write_text(summary)
    plot(rows, out / "map_vs_gflops.png")
    return summary


def merge_results(out: str | Path) -> str:
    """Join the `benchmark.csv` of every run under `out` (runs made in parallel, one per target and seed, say)
    into `out/benchmark.csv`, `benchmark.md` and `map_vs_gflops.png`; returns the Markdown."""
    out = Path(out)
    runs = sorted(out.glob("*/**/benchmark.csv"))
    if not runs:
        raise DMSError(f"no benchmark.csv under '{out}'")
    rows = []
    for path in runs:
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    rows.sort(key=lambda r: (-float(r["target"]), arm_order(r["arm"]), int(r["seed"])))
    return write_results(rows, out)


def run_benchmark(**overrides) -> str:
    """The whole benchmark; returns the Markdown summary (also in `out/benchmark.md`)."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise DMSError(f"unknown benchmark argument(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **overrides}
    options["model"] = model = resolve_model(options["model"])
    network = load_model(model)
    task, cannot = model_task(network), unavailable_arms(network, model)
    arms = [a for a in str(options["arms"]).split(",") if a] or [  # default: every arm the model allows
        a for a in ARMS if a not in cannot and (a != "dms_kd" or model.endswith(".pt"))
        and (a != "stock" or stock_arms(options))]
    if "stock" in arms and not stock_arms(options):
        raise DMSError("the stock arm needs stock_models=, e.g. stock_models=yolov8n.pt,yolo11n.pt")
    if bad := [a for a in arms if a not in ARMS]:
        raise DMSError(f"unknown arm(s) {bad}; valid: {', '.join(ARMS)}")
    if refused := [a for a in arms if a in cannot]:
        raise DMSError(f"arm {refused[0]} cannot run: {cannot[refused[0]]}")
    if cannot and not options["arms"]:
        LOGGER.info(f"benchmark leaves out {', '.join(cannot)}: {'; '.join(dict.fromkeys(cannot.values()))}")
    arms = sorted(arms, key=ARMS.index)  # in ARMS order: a teacher is trained before the arm that needs it
    if not 0 < options["search_epochs"] < options["epochs"]:
        raise DMSError("search_epochs must be at least 1 and below epochs (the arms then train for the rest)")
    if not 0 < float(options["target"]) <= 1:
        raise DMSError(f"target must lie in (0, 1] (a fraction of the model's GFLOPs), got {options['target']}")
    out = Path(options["out"]).resolve()
    options["out"] = out
    out.mkdir(parents=True, exist_ok=True)
    info = resolve_data(options["data"] or make_dataset(
        out / "data", n_train=options["n_train"], n_val=options["n_val"], imgsz=options["imgsz"], task=task), task)
    # what `data=` named, wherever Ultralytics found it: the YAML, or for classification the folder of the splits
    data = Path(info["train"]).parent.resolve() if task == "classify" else Path(info["yaml_file"]).resolve()
    cfg = model_cfg(network, info)
    budget = float(options["target"]) * deployed_gflops(build_task_model(cfg), options["imgsz"])
    seeds = options["seeds"]  # "0,1" from Python, (0, 1) once the CLI has typed it
    seeds = [int(x) for x in (seeds if isinstance(seeds, list | tuple) else str(seeds).split(",")) if str(x).strip()]
    rows = [row for seed in seeds for row in run_seed(seed, arms, options, data, cfg, budget, info["names"], task)]
    overhead = ""
    if options["overhead"]:
        device = select_device(options["device"], verbose=False).type
        plain, step = measure_overhead(copy.deepcopy(cfg), options["imgsz"], options["batch"], iters=5, warmup=2,
                                       device=device, amp=device == "cuda")
        overhead = (f"{step / plain:.2f}x ({step * 1000:.0f} vs {plain * 1000:.0f} ms per iteration, "
                    f"{Path(str(model)).name}, imgsz={options['imgsz']}, batch={options['batch']}, {device})")
    summary = write_results(rows, out, overhead)
    print(summary)
    return summary
