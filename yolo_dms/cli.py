"""The `yolo-dms` command line, in Ultralytics' `key=value` style.

User mistakes (bad paths, bad arguments, unsupported models) print one line and exit with status 2;
set `debug=True` (or YOLO_DMS_DEBUG=1) to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import contextmanager

from yolo_dms.core.errors import DMSError, SearchInterrupted
from yolo_dms.usage import (
    BENCHMARK,
    DEMO,
    EXPAND,
    EXPORT,
    INFO,
    USAGE,
    export_help,
    mode_help,
    search_help,
    with_defaults,
)


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
            raise UsageError(f"unknown argument '{key}'; valid arguments: {', '.join(sorted(allowed)) or 'none'}")
        parsed[key] = smart_value(value)
    parsed.pop("debug", None)
    return parsed


def script_arguments(argv: list[str], defaults: dict, needs: dict[str, str] | None = None) -> dict:
    """A measurement script's (`tools/*.py`) `key=value` arguments over its `defaults`, typed as `yolo-dms` types
    them; a usage error, or a missing one of `needs` (key -> what to give), exits with one line."""
    try:
        args = {**defaults, **parse_arguments(argv, set(defaults))}
    except UsageError as e:
        sys.exit(str(e))
    if missing := [f"{key}=<{what}>" for key, what in (needs or {}).items() if not args[key]]:
        sys.exit(f"give {' and '.join(missing)}")
    return args


def listed(value: object) -> list[str]:
    """A comma-separated argument as a list: `seeds=0,1` reads as a tuple, `seeds=0` as a number."""
    return [str(item) for item in value] if isinstance(value, tuple | list) else str(value).split(",")


def required(options: dict, key: str, mode: str, example: str) -> object:
    if key not in options:
        raise UsageError(f"{mode} needs {key}=, e.g. {example}")
    return options[key]


def search(args: list[str]) -> None:
    """Run a DMS search inside Ultralytics training."""
    from yolo_dms.search.run import run_search

    run_search(parse_arguments(args))


def export(args: list[str]) -> None:
    """Write searched.yaml and pruned.pt from a search checkpoint, fitted under its budget; with `format=`, hand
    pruned.pt to Ultralytics' exporter too."""
    from yolo_dms.search.export import export_checkpoint
    from yolo_dms.search.run import check_train_arguments

    options = parse_arguments(args)
    exporter_options = {k: v for k, v in options.items() if k not in EXPORT}
    parse_arguments(args, set(EXPORT) | format_arguments(options.get("format")))  # refuses what the format cannot take
    if "format" in options:
        check_train_arguments({"format": options["format"], **exporter_options})
    result = export_checkpoint(
        required(options, "model", "export", "model=runs/detect/dms/search/weights/last.pt"),
        options.get("out"),
        options.get("imgsz"),
    )
    print(f"{result.gflops:.4g} GFLOPs, {result.params:,} parameters\n{result.yaml_path}\n{result.weights_path}")
    if "format" in options:
        from ultralytics import YOLO

        size = {"imgsz": options["imgsz"]} if "imgsz" in options else {}  # else pruned.pt's: the search's
        print(YOLO(str(result.weights_path)).export(format=options["format"], **size, **exporter_options))


def format_arguments(fmt: object) -> set[str]:
    """The `yolo export` arguments format `fmt` takes (none without a format), as Ultralytics lists them."""
    if fmt is None:
        return set()
    from ultralytics.engine.exporter import export_formats

    formats = export_formats()
    names = [name for name in formats["Argument"] if name != "-"]
    if fmt not in names:
        raise UsageError(f"unknown export format '{fmt}'; valid formats: {', '.join(names)}")
    return {"device", *formats["Arguments"][list(formats["Argument"]).index(fmt)]}


def expand(args: list[str]) -> None:
    """Write a wider and deeper supernet YAML."""
    from pathlib import Path

    from yolo_dms.core.expand import expanded_yaml
    from yolo_dms.core.model_io import write_model_yaml

    options = parse_arguments(args, set(EXPAND))
    source = str(required(options, "model", "expand", "model=yolov8n.yaml width=1.5 depth=2.0"))
    width, depth = float(options.get("width", 1.0)), float(options.get("depth", 1.0))
    out = Path(str(options.get("out") or f"{Path(source).stem}-w{width:g}-d{depth:g}.yaml"))
    header = f"Supernet expanded by yolo-dms from {source}: width x{width:g}, depth x{depth:g}"
    print(write_model_yaml(expanded_yaml(source, width, depth, options.get("nc")), out, header))


def info(args: list[str]) -> None:
    """Print each layer's widths, depth, GFLOPs and parameters, and the model's totals."""
    from yolo_dms.core.latency_backends import latency_backend
    from yolo_dms.core.model_io import load_supernet
    from yolo_dms.core.report import layer_table

    options = parse_arguments(args, set(INFO))
    model = required(options, "model", "info", "model=yolov8s.yaml")
    supernet = load_supernet(str(model), nc=options.get("nc"))
    backend = None
    if options.get("latency", False):
        backend = latency_backend(str(options.get("latency_backend", "auto")), options.get("device", "cpu"))
    print(layer_table(supernet, options.get("imgsz", 640), latency=backend,
                      refresh=bool(options.get("latency_refresh", False))))


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

        run_demo(**parse_arguments(args, set(DEMO)))


def benchmark(args: list[str]) -> None:
    """DMS against uniform scaling and magnitude pruning at equal GFLOPs and epochs."""
    with tools_extra("benchmark"):
        from yolo_dms.tools.benchmark import DEFAULTS, run_benchmark

        run_benchmark(**parse_arguments(args, set(DEFAULTS)))


def version(args: list[str]) -> None:
    """yolo-dms's version and those of the libraries it runs on."""
    import platform

    import torch
    import ultralytics

    import yolo_dms

    parse_arguments(args, set())
    print(
        f"yolo-dms {yolo_dms.__version__}\nultralytics {ultralytics.__version__}\ntorch {torch.__version__}\n"
        f"python {platform.python_version()}"
    )


def demo_help() -> str:
    import inspect

    with tools_extra("demo"):
        from yolo_dms.tools.demo import run_demo

    defaults = {name: p.default for name, p in inspect.signature(run_demo).parameters.items()}
    summary = ("generate data for the task, train its yolov8n model, search it at 50% of its GFLOPs, fine-tune, "
               "export ONNX, compare by the task's metric")
    return mode_help("demo", summary, with_defaults(DEMO, defaults))


def benchmark_help() -> str:
    with tools_extra("benchmark"):
        from yolo_dms.tools.benchmark import DEFAULTS

    summary = "DMS against other pruning and uniform scaling at equal GFLOPs and epochs (see docs/BENCHMARKS.md)"
    return mode_help("benchmark", summary, with_defaults(BENCHMARK, DEFAULTS))


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "search": search,
    "export": export,
    "expand": expand,
    "info": info,
    "demo": demo,
    "benchmark": benchmark,
    "version": version,
}
HELP: dict[str, Callable[[], str]] = {
    "search": search_help,
    "export": export_help,
    "expand": lambda: mode_help("expand", "write a wider and deeper supernet YAML to search from", EXPAND),
    "info": lambda: mode_help("info", "per-layer widths, depths, GFLOPs, parameters (and milliseconds)", INFO),
    "demo": demo_help,
    "benchmark": benchmark_help,
    "version": lambda: "yolo-dms version\nprints the versions of yolo-dms, Ultralytics, torch and Python",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `yolo-dms` console script; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(HELP[argv[1]]() if argv[1:] and argv[1] in HELP else USAGE)  # also 'yolo-dms help search'
        return 0
    mode, args = argv[0], argv[1:]
    debug = os.environ.get("YOLO_DMS_DEBUG") == "1" or any(a.lower() in {"debug=true", "debug=1"} for a in args)
    try:
        if mode not in COMMANDS:
            raise UsageError(f"unknown mode '{mode}'; valid modes: {', '.join(COMMANDS)}, help")
        if args and args[0] in {"help", "-h", "--help"}:
            print(HELP[mode]())
        else:
            COMMANDS[mode](args)
    except DMSError as e:
        if debug:
            raise
        print(f"yolo-dms {mode}: error: {e}", file=sys.stderr)
        if isinstance(e, UsageError):
            print("Run 'yolo-dms help' for usage.", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: where the work is, not the interrupt's traceback
        if debug:
            raise
        print(f"\nyolo-dms {mode}: {e if isinstance(e, SearchInterrupted) else 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
