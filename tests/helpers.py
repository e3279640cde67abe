"""Shared test helpers: random searched structures and stock-only subprocesses."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from yolo_dms import DepthMask, Supernet


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
