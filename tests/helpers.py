"""Shared test helpers: random searched structures and stock-only subprocesses."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import ultralytics
import yaml
from torch import nn

from yolo_dms import DepthMask, Supernet


# The oldest Ultralytics pyproject.toml admits; its validator builds no COCO ground truth from the labels for
# `save_json=True` (the benchmark's pycocotools column is NaN there)
OLDEST_ULTRALYTICS = ultralytics.__version__ == "8.4.0"

# One model per task head and family, searched by the exactness tests of every task (tests/test_tasks.py)
TASK_CASES = [
    f"{family}-{task}.yaml" for task in ("seg", "pose", "obb", "cls") for family in ("yolov8n", "yolo11n", "yolo26n")
]


def randomize_structure(supernet: Supernet, seed: int, empty_c2f: int | None = None) -> None:
    """Random importance, keep ratios and BatchNorm statistics, as after some search steps.

    `empty_c2f` picks (cyclically) one C2f whose blocks are all removed, so every structure family appears.
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in supernet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 - 1)
        depth_names = [n for n, m in supernet.masks.items() if isinstance(m, DepthMask)]
        for name, mask in supernet.masks.items():
            mask.importance.copy_(torch.rand(mask.importance.shape, generator=gen))
            if name in depth_names:
                mask.set_keep_ratio(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0]))
            elif hasattr(mask, "keep_ratio"):
                mask.set_keep_ratio(rng.uniform(0.05, 1.0))
        if empty_c2f is not None and depth_names:
            supernet.masks[depth_names[empty_c2f % len(depth_names)]].set_keep_ratio(0.0)


def run_without_yolo_dms(code: str, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh process where importing yolo_dms fails, as on a machine without the plugin."""
    prelude = "import sys\nsys.modules['yolo_dms'] = None  # any import of the plugin now raises ImportError\n"
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def yolo_dms(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `yolo-dms` console script, as a user would (in `env`, by default this one's)."""
    exe = Path(sys.executable).with_name("yolo-dms")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def refused(proc: subprocess.CompletedProcess, *phrases: str) -> str:
    """A refusal: exit status 2 and one error line, the last on stderr (but for the usage hint after a command-line
    mistake), naming every phrase; returns that line."""
    assert proc.returncode == 2, (proc.args, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.args
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    ending = proc.stderr.strip().removesuffix("Run 'yolo-dms help' for usage.").strip()
    assert len(errors) == 1 and ending.endswith(errors[0]), proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]


def stock_gflops(model: nn.Module, imgsz: int) -> float:
    """Stock GFLOPs of `model`: THOP at the image size, which `get_flops` counts too, except 8.4.0's (it scales
    a 32 px count)."""
    import copy

    import thop
    from ultralytics.utils.torch_utils import get_flops

    flops = thop.profile(copy.deepcopy(model), inputs=[torch.empty(1, 3, imgsz, imgsz)], verbose=False)[0] / 1e9 * 2
    assert OLDEST_ULTRALYTICS or get_flops(model, imgsz) == flops, (get_flops(model, imgsz), flops)
    return flops


def assert_stock_trains_and_exports(run: Path, data: Path, imgsz: int, runs: Path, cwd: Path) -> None:
    """In a process without yolo_dms: stock `val` scores `run`'s pruned.pt with its task's metric, `yolo train`
    from it with the arguments search.json recommends transfers every weight, from its searched.yaml trains from
    scratch, and the ONNX export of pruned.pt matches PyTorch within 1e-3."""
    finetune = json.loads((run / "search.json").read_text())["finetune"] or {}
    recommended = " ".join(f"{key}={value}" for key, value in finetune.items())
    code = f"""
        import numpy as np, onnxruntime as ort, torch
        from ultralytics import YOLO
        from ultralytics.cfg import entrypoint
        metrics = YOLO({str(run / 'pruned.pt')!r}).val(data={str(data)!r}, imgsz={imgsz}, batch=8, workers=0,
                                                        device="cpu", plots=False, project={str(runs)!r}, name="val")
        print("VALIDATED", metrics.fitness)
        common = "data={data} epochs=1 imgsz={imgsz} batch=8 workers=0 device=cpu plots=False val=False"
        entrypoint(f"yolo train model={run / 'pruned.pt'} {{common}} {recommended} project={runs} name=finetune")
        entrypoint(f"yolo train model={run / 'searched.yaml'} {{common}} project={runs} name=scratch")
        onnx_path = YOLO({str(run / 'pruned.pt')!r}).export(format="onnx", imgsz={imgsz})
        x = np.random.default_rng(0).random((1, 3, {imgsz}, {imgsz}), dtype=np.float32)
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {{session.get_inputs()[0].name: x}})[0]
        with torch.no_grad():
            torch_out = YOLO({str(run / 'pruned.pt')!r}).model.float().eval()(torch.from_numpy(x))
        while isinstance(torch_out, (tuple, list)):  # the first output, as ONNX's (segmentation nests it deeper)
            torch_out = torch_out[0]
        torch_out = torch_out.numpy()
        print("ONNX_DIFF", float(np.abs(onnx_out - torch_out).max()))
    """
    proc = run_without_yolo_dms(code, cwd=cwd)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    transferred = re.findall(r"Transferred (\d+)/(\d+) items", output)
    assert transferred and transferred[0][0] == transferred[0][1], transferred
    if finetune:  # stock training took the recommended optimizer and rate
        assert f"{finetune['optimizer']}(lr={finetune['lr0']}," in output, output[-3000:]
    assert re.search(r"VALIDATED [0-9.]", output), output[-3000:]
    assert (runs / "scratch" / "weights" / "last.pt").exists()
    assert_onnx_matches(output, end_to_end=bool(yaml.safe_load((run / "searched.yaml").read_text()).get("end2end")))


def assert_onnx_matches(output: str, end_to_end: bool) -> None:
    """The `ONNX_DIFF` a stock process printed is under 1e-3, except for an end-to-end (YOLO26) model on 8.4.0,
    whose own export differs from its PyTorch model with no yolo_dms involved."""
    if not (OLDEST_ULTRALYTICS and end_to_end):
        assert float(re.search(r"ONNX_DIFF ([0-9.eE+-]+)", output).group(1)) < 1e-3
