"""The `yolo-dms` command line, in Ultralytics' `key=value` style.

User mistakes (bad paths, bad arguments, unsupported models) print one line and exit with status 2;
set `debug=True` (or YOLO_DMS_DEBUG=1) to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from yolo_dms.errors import DMSError

USAGE = """Usage: yolo-dms MODE key=value ...

Modes:
  info   model=<yaml|pt> [imgsz=640] [nc=N]   per-layer widths, C2f depths, GFLOPs and parameters
  help                                        this message

Examples:
  yolo-dms info model=yolov8s.yaml
  yolo-dms info model=runs/dms/search/pruned.pt imgsz=320
"""


class UsageError(DMSError):
    """The command line itself is wrong: unknown mode, unknown key, malformed argument."""


def parse_arguments(pairs: list[str], allowed: dict[str, Callable[[str], object]]) -> dict[str, object]:
    """`key=value` strings to typed values; unknown keys and malformed pairs are usage errors."""
    parsed: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"argument '{pair}' is not of the form key=value")
        if key not in allowed:
            raise UsageError(f"unknown argument '{key}'; valid arguments: {', '.join(sorted(allowed))}")
        try:
            parsed[key] = allowed[key](value)
        except ValueError:
            raise UsageError(f"argument {key}={value} is not a valid {allowed[key].__name__}") from None
    return parsed


def to_bool(value: str) -> bool:
    """Ultralytics-style booleans."""
    if value.lower() in {"true", "1", "yes"}:
        return True
    if value.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(value)


to_bool.__name__ = "bool"


def info(args: list[str]) -> None:
    """Print each layer's widths, depth, GFLOPs and parameters, and the model's totals."""
    from yolo_dms.report import layer_table
    from yolo_dms.supernet import Supernet

    options = parse_arguments(args, {"model": str, "imgsz": int, "nc": int, "debug": to_bool})
    if "model" not in options:
        raise UsageError("info needs model=<yaml|pt>")
    supernet = Supernet.from_source(options["model"], nc=options.get("nc"))
    print(layer_table(supernet, options.get("imgsz", 640)))


COMMANDS: dict[str, Callable[[list[str]], None]] = {"info": info}


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
