"""Generate the procedural demo dataset and print what `data=` takes (its data.yaml, or for classify its folder).

    python tools/make_demo_data.py root=datasets/dms-demo n_train=256 n_val=64 imgsz=128 seed=0
    python tools/make_demo_data.py root=datasets/dms-demo-seg task=segment   # or pose, obb, classify
    python tools/make_demo_data.py root=datasets/dms-demo overwrite=True

Arguments are Ultralytics-style key=value pairs; all are optional. A dataset already generated at `root` with
the same settings is reused.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULTS: dict[str, object] = {
    "root": "datasets/dms-demo", "n_train": 256, "n_val": 64, "imgsz": 128, "seed": 0, "overwrite": False,
    "task": "detect",
}
USAGE = "usage: make_demo_data.py " + " ".join(f"{key}={value}" for key, value in DEFAULTS.items())
TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def parse_args(argv: list[str]) -> dict[str, object]:
    """key=value pairs into typed settings; raises ValueError with a one-line reason on anything unexpected."""
    settings = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(f"unknown argument {arg!r}")
        if not value:
            raise ValueError(f"{key} needs a value")
        if key in {"root", "task"}:
            settings[key] = value
        elif key == "overwrite":
            if value.lower() not in TRUE | FALSE:
                raise ValueError(f"overwrite must be True or False, got {value!r}")
            settings[key] = value.lower() in TRUE
        else:
            try:
                settings[key] = int(value)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {value!r}") from None
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in {"-h", "--help", "help"} for arg in argv):
        print(__doc__.strip())
        print(USAGE)
        return 0
    try:
        settings = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}; {USAGE}", file=sys.stderr)
        return 2

    try:
        from yolo_dms.tools.demo_data import make_dataset
    except ImportError:  # run from a source checkout without installing the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from yolo_dms.tools.demo_data import make_dataset

    try:
        yaml_path = make_dataset(**settings)
    except (ValueError, TypeError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(yaml_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
