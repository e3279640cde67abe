"""The `yolo-dms` command line, in Ultralytics' `key=value` style.

User mistakes (bad paths, bad arguments, unsupported models) print one line and exit with status 2;
set `debug=True` (or YOLO_DMS_DEBUG=1) to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import contextmanager

from yolo_dms.core.errors import DMSError

USAGE = """Usage: yolo-dms MODE key=value ...

Modes:
  search  model=<yaml|pt> data=<yaml> target=0.5 | gflops=G | params=P | latency=MS  [any Ultralytics train
          argument]  search every width and depth under the budget; writes searched.yaml, pruned.pt, search.json
          DMS settings (defaults in yolo_dms/cfg/default.yaml): target, resource (gflops|params|latency), gflops,
          params, latency, latency_backend (auto|onnxruntime|torch), divisor, resource_weight, structure_lr,
          structure_optimizer, target_schedule, refine, width_lam, depth_lam, importance_decay
          cfg=cfg/search/<recipe>.yaml takes settings from a recipe (the command line wins)
          resume=True (or resume=path/to/last.pt) continues an interrupted search
  export  model=<search checkpoint> [out=dir] [imgsz=N]   searched.yaml and pruned.pt from any search checkpoint
  expand  model=<yaml|pt> width=1.5 depth=2.0 [out=file.yaml] [nc=N]   a larger supernet YAML
  info    model=<yaml|pt> [imgsz=640|[h,w]] [nc=N] [latency=True] [latency_backend=auto] [device=cpu]
          per-layer widths, depths, GFLOPs, parameters and, with latency=True, predicted milliseconds (ONNX
          Runtime on the CPU; PyTorch with latency_backend=torch, FP16 on a GPU device)
  demo    [out=runs/dms/demo]   generate data, search yolov8n at 50% GFLOPs, fine-tune, export ONNX, compare
  benchmark [model=yolov8s.yaml] [target=0.5] [epochs=20] [search_epochs=10] [seeds=0,1] [arms=...] [data=...]
          DMS against uniform scaling and magnitude pruning at equal GFLOPs and epochs (see docs/BENCHMARKS.md)
  help    this message

model= and data= resolve as in 'yolo train' in every mode: yolov8n.pt from here, the weights directory or the
Ultralytics releases; coco8.yaml from the YAMLs Ultralytics ships, its images under the datasets directory.
Add debug=True to any mode to see a traceback instead of a one-line error.

Examples:
  yolo-dms search model=yolov8n.pt data=coco8.yaml target=0.5 epochs=10
  yolo-dms search model=yolov8n.yaml data=my.yaml gflops=4.0 imgsz=640 batch=32
  yolo-dms search model=yolov8s.pt data=my.yaml resource=latency target=0.6 device=0 divisor=16
  yolo-dms export model=runs/detect/dms/search/weights/last.pt
  yolo-dms expand model=yolov8n.yaml width=1.5 depth=2.0 out=yolov8n-x1.5.yaml
"""


class UsageError(DMSError):
    """The command line itself is wrong: unknown mode, unknown key, malformed argument."""


def parse_arguments(pairs: list[str], allowed: set[str] | None = None) -> dict[str, object]:
    """`key=value` strings to values typed as Ultralytics types them; unknown keys are usage errors."""
    from ultralytics.cfg import smart_value

    parsed: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"argument '{pair}' is not of the form key=value")
        if allowed is not None and key not in allowed | {"debug"}:
            raise UsageError(f"unknown argument '{key}'; valid arguments: {', '.join(sorted(allowed))}")
        parsed[key] = smart_value(value)
    parsed.pop("debug", None)
    return parsed


def required(options: dict, key: str, mode: str, example: str) -> object:
    if key not in options:
        raise UsageError(f"{mode} needs {key}=, e.g. {example}")
    return options[key]


def search(args: list[str]) -> None:
    """Run a DMS search inside Ultralytics training."""
    from yolo_dms.search.run import run_search

    run_search(parse_arguments(args))


def export(args: list[str]) -> None:
    """Write searched.yaml and pruned.pt from a search checkpoint, fitted under its budget."""
    from yolo_dms.core.export import export_checkpoint

    options = parse_arguments(args, {"model", "out", "imgsz"})
    result = export_checkpoint(
        required(options, "model", "export", "model=runs/detect/dms/search/weights/last.pt"),
        options.get("out"),
        options.get("imgsz"),
    )
    print(f"{result.gflops:.4g} GFLOPs, {result.params:,} parameters\n{result.yaml_path}\n{result.weights_path}")


def expand(args: list[str]) -> None:
    """Write a wider and deeper supernet YAML."""
    from pathlib import Path

    from yolo_dms.core.expand import expanded_yaml
    from yolo_dms.core.model_io import write_model_yaml

    options = parse_arguments(args, {"model", "width", "depth", "out", "nc"})
    source = str(required(options, "model", "expand", "model=yolov8n.yaml width=1.5 depth=2.0"))
    width, depth = float(options.get("width", 1.0)), float(options.get("depth", 1.0))
    out = Path(str(options.get("out") or f"{Path(source).stem}-w{width:g}-d{depth:g}.yaml"))
    header = f"Supernet expanded by yolo-dms from {source}: width x{width:g}, depth x{depth:g}"
    print(write_model_yaml(expanded_yaml(source, width, depth, options.get("nc")), out, header))


def info(args: list[str]) -> None:
    """Print each layer's widths, depth, GFLOPs and parameters, and the model's totals."""
    from yolo_dms.core.latency_backends import latency_backend
    from yolo_dms.core.report import layer_table
    from yolo_dms.core.supernet import Supernet

    options = parse_arguments(args, {"model", "imgsz", "nc", "latency", "latency_backend", "device"})
    model = required(options, "model", "info", "model=yolov8s.yaml")
    supernet = Supernet.from_source(str(model), nc=options.get("nc"))
    backend = None
    if options.get("latency", False):
        backend = latency_backend(str(options.get("latency_backend", "auto")), options.get("device", "cpu"))
    print(layer_table(supernet, options.get("imgsz", 640), latency=backend))


TOOL_PACKAGES = {"onnx", "onnxruntime", "onnxslim", "pycocotools", "torch_pruning"}


@contextmanager
def tools_extra(mode: str):
    """Turn a missing tools-only dependency into the one line that says how to install it."""
    try:
        yield
    except ModuleNotFoundError as e:
        if e.name not in TOOL_PACKAGES:
            raise
        raise UsageError(
            f"{mode} needs '{e.name}', which comes with the tools extra: pip install 'yolo-dms[tools]'"
        ) from None


def demo(args: list[str]) -> None:
    """The embedded end-to-end run on generated data."""
    with tools_extra("demo"):
        from yolo_dms.tools.demo import run_demo

        run_demo(**parse_arguments(args, {"out", "epochs", "search_epochs", "finetune_epochs", "imgsz"}))


def benchmark(args: list[str]) -> None:
    """DMS against uniform scaling and magnitude pruning at equal GFLOPs and epochs."""
    with tools_extra("benchmark"):
        from yolo_dms.tools.benchmark import DEFAULTS, run_benchmark

        run_benchmark(**parse_arguments(args, set(DEFAULTS)))


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "search": search,
    "export": export,
    "expand": expand,
    "info": info,
    "demo": demo,
    "benchmark": benchmark,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `yolo-dms` console script; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(USAGE)
        return 0
    mode, args = argv[0], argv[1:]
    debug = os.environ.get("YOLO_DMS_DEBUG") == "1" or any(a.lower() in {"debug=true", "debug=1"} for a in args)
    try:
        if mode not in COMMANDS:
            raise UsageError(f"unknown mode '{mode}'; valid modes: {', '.join(COMMANDS)}, help")
        COMMANDS[mode](args)
    except DMSError as e:
        if debug:
            raise
        print(f"yolo-dms {mode}: error: {e}", file=sys.stderr)
        if isinstance(e, UsageError):
            print("Run 'yolo-dms help' for usage.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
