"""`yolo-dms help` and `yolo-dms <mode> help`: every argument of a mode, with its default and meaning.

Each meaning has one source: DMS settings the comments beside their defaults in yolo_dms/cfg/default.yaml,
Ultralytics' train arguments the comments of Ultralytics' own cfg/default.yaml (what `yolo cfg` prints), the other
modes' arguments the tables below, whose keys are also what those modes accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

USAGE = """Usage: yolo-dms MODE key=value ...    ('yolo-dms MODE help' lists MODE's arguments, defaults and meanings)

Modes:
  search     model=<yaml|pt> data=<yaml> target=0.5 | gflops=G | params=P | latency=MS  [any 'yolo train' argument]
             search every width and depth under the budget; writes searched.yaml, pruned.pt, search.json
             (cfg=<recipe> takes settings from a packaged recipe or a YAML; resume=True continues a search)
  export     model=<search checkpoint> [format=onnx]   searched.yaml and pruned.pt from any search checkpoint, and
             with format= pruned.pt exported by Ultralytics' exporter
  expand     model=<yaml|pt> width=1.5 depth=2.0   a larger supernet YAML
  info       model=<yaml|pt> [imgsz=640] [latency=True]   per-layer widths, depths, GFLOPs, parameters, milliseconds
  demo       [task=detect] [out=runs/dms/demo]   generate data, train the task's yolov8n model, search it at
             50% GFLOPs, fine-tune, export ONNX, compare (task=segment, pose, obb or classify too)
  benchmark  [model=yolov8s.yaml] [target=0.5] ...   DMS against other pruning at equal GFLOPs and epochs
  version    yolo-dms, Ultralytics and torch versions
  help       this message

model= and data= resolve as in 'yolo train' in every mode: yolov8n.pt from here, the weights directory or the
Ultralytics releases; coco8.yaml from the YAMLs Ultralytics ships, its images under the datasets directory.
Add debug=True to any mode to see a traceback instead of a one-line error. From Python:
  from yolo_dms import DMS; result = DMS("yolov8n.pt").search(data="coco8.yaml", target=0.5, epochs=10)

Examples:
  yolo-dms search model=yolov8n.pt data=coco8.yaml target=0.5 epochs=10
  yolo-dms search cfg=pretrained-short model=best.pt data=my.yaml
  yolo-dms search model=yolov8s.pt data=my.yaml resource=latency target=0.6 device=0 divisor=16
  yolo-dms export model=runs/detect/dms/search/weights/last.pt format=onnx
  yolo-dms expand model=yolov8n.yaml width=1.5 depth=2.0 out=yolov8n-x1.5.yaml
"""

# mode -> argument -> (default, meaning); a default in <> is required or derived, not a value
EXPORT = {
    "model": ("<required>", "a search checkpoint, finished or not: runs/detect/dms/<name>/weights/last.pt"),
    "out": ("<its run directory>", "where searched.yaml and pruned.pt go"),
    "imgsz": ("<the search's>", "image size the structure is fitted at (and exported at, with format=)"),
    "format": ("-", "also export pruned.pt with Ultralytics' exporter to this format (onnx, engine, openvino, ...), "
                    "in the same call; that format's 'yolo export' arguments are taken too, and device="),
}
EXPAND = {
    "model": ("<required>", "the model YAML or checkpoint to enlarge"),
    "width": ("1.0", "factor on every layer width (at least 1)"),
    "depth": ("1.0", "factor on every stage's block count (at least 1)"),
    "out": ("<model>-w<width>-d<depth>.yaml", "the YAML to write"),
    "nc": ("<the model's>", "class count of the written YAML"),
}
INFO = {
    "model": ("<required>", "a model YAML or checkpoint, pruned.pt and searched.yaml included"),
    "imgsz": ("640", "image size of the GFLOPs (an int or [h, w])"),
    "nc": ("<the model's>", "class count, for a YAML"),
    "latency": ("False", "also predict milliseconds per layer (measures the latency table on first use)"),
    "latency_backend": ("auto", "onnxruntime (CPU) or torch (the device, FP16 on a GPU); auto picks by device"),
    "latency_refresh": ("False", "measure the latency table again instead of reading its cache"),
    "device": ("cpu", "device of latency_backend=torch"),
}
DEMO = {
    "task": "detect, segment, pose, obb or classify: the data generated, the yolov8n model of that task (yolov8n, "
            "yolov8n-seg, -pose, -obb, -cls) and its metric",
    "out": "run directory of the demo's data, models and summary.md",
    "epochs": "epochs of the baseline trained from scratch",
    "search_epochs": "epochs of the search at 50% of the baseline's GFLOPs",
    "finetune_epochs": "epochs of stock fine-tuning of pruned.pt",
    "imgsz": "image size of the generated data, training and GFLOPs",
    "n_train": "training images generated",
    "n_val": "validation images generated",
}
BENCHMARK = {
    "data": "dataset YAML; empty generates the demo data (n_train, n_val images)",
    "model": "model YAML or checkpoint every arm starts from",
    "target": "budget: fraction of the model's GFLOPs at imgsz every arm ends at",
    "epochs": "total epochs of every arm",
    "search_epochs": "epochs before the structure is fixed (the search's, or the training before one-shot pruning)",
    "imgsz": "image size of training, validation and GFLOPs",
    "batch": "batch size of every training run",
    "seeds": "comma-separated seeds; every arm runs once per seed",
    "arms": "comma-separated arms (dms, dms_kd, dms_scratch, dms_sgd, taylor_uniform, magnitude_uniform, "
            "magnitude_global, uniform, reference, stock); empty runs every arm the model allows",
    "out": "run directory of every arm, benchmark.csv, benchmark.md and map_vs_gflops.png",
    "n_train": "training images generated when data is empty",
    "n_val": "validation images generated when data is empty",
    "latency_runs": "ONNX Runtime timings per model (median); 0 skips the latency column",
    "device": "training and validation device, as in Ultralytics",
    "workers": "dataloader workers",
    "cache": "cache images, as Ultralytics' cache=",
    "overhead": "also time one search iteration against one training iteration",
    "teacher": "distillation teacher of dms_kd ({seed} becomes the seed); empty: the starting .pt or the reference arm",
    "stock_models": "the stock arm's models, comma-separated (yolov8n.pt,yolo11n.pt: fine-tuned; a YAML: from "
                    "scratch), each trained E epochs at its own GFLOPs, drawn as the stock curve",
}
SEARCH_TRAIN_SECTIONS = ("Train settings", "Val/Test settings", "Hyperparameters")  # Ultralytics' default.yaml
NOT_SEARCH_ARGUMENTS = {"task", "mode", "cfg", "resume"}  # fixed by the mode, or listed as the search's own


@dataclass(frozen=True)
class Argument:
    """One documented argument of a defaults YAML."""

    name: str
    default: str
    meaning: str
    section: str


KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Za-z_]\w*):[^#]*?(#\s?(?P<meaning>.*))?$")
SECTION_HEADER = re.compile(r"^#\s*(?P<title>[^-#]+?)\s*-{3,}")  # Ultralytics' "# Train settings -----"
CONTINUATION = re.compile(r"^\s+#\s?(?P<more>.*)$")  # an indented comment line goes on with the meaning above


def documented_arguments(path: str | Path) -> list[Argument]:
    """Every `key: default  # meaning` line of a defaults YAML, in order. A key's section is its parent key
    (`dms:`) or the `# ... -----` header above it; indented comment lines right below a key continue its meaning."""
    text = Path(path).read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    arguments: list[Argument] = []
    section, parent, last = "", None, None
    for line in text.splitlines():
        if header := SECTION_HEADER.match(line):
            section, parent, last = header["title"], None, None
        elif (more := CONTINUATION.match(line)) and last is not None:
            last = arguments[-1] = Argument(last.name, last.default, f"{last.meaning} {more['more']}", last.section)
        elif key := KEY_LINE.match(line):
            name, nested = key["name"], bool(key["indent"])
            if not nested and isinstance(values.get(name), dict):
                parent, last = values[name], None
                section = name
                continue
            value = (parent if nested and parent is not None else values).get(name)
            last = Argument(name, show(value), (key["meaning"] or "").strip(), section)
            arguments.append(last)
        else:
            last = None
    return arguments


def show(value: object) -> str:
    """A default as the command line writes it; none is '-'."""
    return "-" if value is None else str(value)


def table(rows: list[tuple[str, str]]) -> str:
    """`key=default` and meaning in two columns."""
    width = min(max((len(left) for left, _ in rows), default=0), 30)
    return "\n".join(f"  {left.ljust(width)}  {meaning}" for left, meaning in rows)


def argument_rows(arguments: list[Argument]) -> list[tuple[str, str]]:
    return [(f"{a.name}={a.default}", a.meaning) for a in arguments]


def search_help() -> str:
    """The search mode: DMS settings, the search's own defaults for train arguments, recipes, resume, and every
    Ultralytics train argument."""
    from ultralytics.cfg import DEFAULT_CFG_PATH

    from yolo_dms.search.run import recipe_names
    from yolo_dms.search.settings import DEFAULTS_FILE

    ours = documented_arguments(DEFAULTS_FILE)
    stock = [a for a in documented_arguments(DEFAULT_CFG_PATH)
             if a.section in SEARCH_TRAIN_SECTIONS and a.name not in NOT_SEARCH_ARGUMENTS]
    parts = [
        "yolo-dms search model=<yaml|pt> data=<yaml> [key=value ...]\n"
        "Search every width and depth under a budget inside Ultralytics training; writes searched.yaml, pruned.pt "
        "and search.json.\nPython: from yolo_dms import DMS; DMS(model).search(data=..., **arguments)",
        f"DMS settings (defaults in {DEFAULTS_FILE}):\n"
        + table(argument_rows([a for a in ours if a.section == "dms"])),
        "The search's defaults for Ultralytics arguments (any value given wins):\n"
        + table(argument_rows([a for a in ours if a.section == "train"])),
        "Recipes and resuming:\n" + table([
            ("cfg=-", f"arguments from a packaged recipe ({', '.join(recipe_names())}) or a YAML file; "
                      "the command line wins, a budget given replaces the recipe's"),
            ("resume=False", "True continues the newest interrupted search, or give its weights/last.pt"),
        ]),
        f"Ultralytics train arguments, as in 'yolo train' ({DEFAULT_CFG_PATH}):",
    ]
    for section in SEARCH_TRAIN_SECTIONS:
        parts.append(f" {section}:\n" + table(argument_rows([a for a in stock if a.section == section])))
    return "\n\n".join(parts)


def export_help() -> str:
    """The export mode, with the arguments of every Ultralytics export format."""
    from ultralytics.engine.exporter import export_formats

    formats = export_formats()
    per_format = "\n".join(
        f"  {fmt.ljust(12)}{', '.join(args)}" for fmt, args in zip(formats["Argument"], formats["Arguments"])
        if fmt != "-"
    )
    return (
        mode_help("export", "searched.yaml and pruned.pt from a search checkpoint, fitted under its budget", EXPORT)
        + f"\n\nUltralytics export formats and their arguments (meanings: 'yolo cfg'):\n{per_format}"
    )


def mode_help(mode: str, summary: str, arguments: dict[str, tuple[str, str]]) -> str:
    return f"yolo-dms {mode} key=value ...\n{summary}\n\n" + table(
        [(f"{name}={default}", meaning) for name, (default, meaning) in arguments.items()]
    )


def with_defaults(meanings: dict[str, str], defaults: dict[str, object]) -> dict[str, tuple[str, str]]:
    """A mode's table from its meanings and the defaults its code holds (every default needs a meaning)."""
    return {name: (show(defaults[name]), meanings[name]) for name in defaults}
