"""A two-process search launched the way Ultralytics launches multi-GPU training, on CPU with gloo.

The parent `DMSTrainer` goes through its own DDP branch: it builds the supernet, Ultralytics' `generate_ddp_file`
pickles the trainer class, its arguments, the supernet and the parent's callbacks (cloudpickle), and
`torch.distributed.run` starts two workers running Ultralytics' generated script, which rebuilds each trainer
from that state and wraps the supernet in DDP with `broadcast_buffers=False`. Only what needs CUDA is swapped
in the workers (`CPU_WORKER`): the device count, NCCL, DDP's `device_ids` and the validator's device.

Every rank must run the same search clock as one process (a callback registered twice would double it), and
the ranks must hold the same structure after every batch.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import OLDEST_ULTRALYTICS
from ultralytics.engine import trainer as ultralytics_trainer
from ultralytics.utils import RANK

from yolo_dms.search.settings import SearchSettings
from yolo_dms.search.trainer import DMSTrainer
from yolo_dms.tools.demo_data import make_dataset

IMGSZ, WORLD = 64, 2

# Runs each worker's copy of Ultralytics' DDP script on CPU: the script and everything it loads stay as they are.
CPU_WORKER = """
import os, runpy, sys
from types import SimpleNamespace
import torch
import torch.distributed as dist
import ultralytics.engine.validator as validator
from ultralytics.engine.trainer import BaseTrainer

rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
init, backend = BaseTrainer.__init__, validator.AutoBackend


def init_on_cpu(self, *args, **kwargs):  # device='0,1' counts two devices on a GPU machine
    init(self, *args, **kwargs)
    self.world_size = world


class CpuDDP(torch.nn.parallel.DistributedDataParallel):  # Ultralytics passes the rank's CUDA index
    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, **kwargs)


BaseTrainer.__init__ = init_on_cpu
BaseTrainer._setup_ddp = lambda self: dist.init_process_group("gloo", rank=rank, world_size=world)  # not NCCL
torch.nn.parallel.DistributedDataParallel = CpuDDP
# a rank's final validation looks up its CUDA device and loads the model there
validator.get_torch_device_backend = lambda device_type: SimpleNamespace(current_device=lambda: local_rank)
validator.AutoBackend = lambda *args, device=None, **kwargs: backend(*args, device=torch.device("cpu"), **kwargs)
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def record_batch(trainer: DMSTrainer) -> None:
    """Callback: this rank's search clock and structure after each batch, one JSON line per batch."""
    state = {
        "iteration": trainer.session.iteration,
        "target": trainer.session.current_target(),
        "frozen": trainer.session.frozen,
        "masks": {k: v.flatten().tolist() for k, v in trainer.supernet.masks.state_dict().items()},
    }
    with open(trainer.save_dir.parent / f"{trainer.save_dir.name}-rank{RANK}.jsonl", "a") as f:
        f.write(json.dumps(state) + "\n")


class WorkersFailed(Exception):
    """The DDP workers did not exit cleanly."""


def read_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def search_args(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    data = make_dataset(root / "data", n_train=32, n_val=8, imgsz=IMGSZ, seed=4)
    return dict(
        model="yolov8n.yaml", data=str(data), epochs=2, imgsz=IMGSZ, batch=8, nbs=8, workers=0, device="cpu",
        plots=False, val=False, project=str(root), warmup_epochs=0, seed=0, deterministic=True, exist_ok=True,
    )


@pytest.mark.skipif(OLDEST_ULTRALYTICS, reason="before 8.4.140 DDP workers build their model from args.model")
def test_two_ddp_workers_keep_one_process_search_clock_and_agree_on_structure(search_args, monkeypatch, tmp_path):
    settings = SearchSettings.from_arguments({"target": 0.6})  # not the default: the workers get it from the supernet
    single = DMSTrainer(overrides={**search_args, "name": "single"}, settings=settings)
    single.add_callback("on_train_batch_end", record_batch)
    single.train()

    parent = DMSTrainer(overrides={**search_args, "name": "ddp"}, settings=settings)
    parent.add_callback("on_train_batch_end", record_batch)  # reaches the workers with the parent's callbacks
    parent.ddp, parent.world_size = True, WORLD  # what device='0,1' sets on a GPU machine
    worker = tmp_path / "cpu_worker.py"
    worker.write_text(CPU_WORKER)
    run, workers = subprocess.run, []

    def launch(cmd, check):  # Ultralytics' command: python -m torch.distributed.run ... <ddp file>
        assert cmd[-1].endswith(".py") and f"--nproc_per_node {WORLD}" in " ".join(cmd)
        workers.append(run([*cmd[:-1], str(worker), cmd[-1]], capture_output=True, text=True))

    monkeypatch.setattr(ultralytics_trainer.subprocess, "run", launch)  # the subprocess module Ultralytics uses
    parent.train()

    root = parent.save_dir.parent
    reference = read_records(root / "single-rank-1.jsonl")
    ranks = [read_records(root / f"ddp-rank{r}.jsonl") for r in range(WORLD)]
    clock = [(r["iteration"], r["target"], r["frozen"]) for r in reference]
    assert len(clock) == 8 and clock[-1][0] == 8, "2 epochs of 4 batches"
    for records in ranks:
        assert [(r["iteration"], r["target"], r["frozen"]) for r in records] == clock
    assert any(r["frozen"] for r in reference) and reference[0]["target"] > reference[-1]["target"]
    for step0, step1 in zip(*ranks):
        assert step0["masks"] == step1["masks"], f"ranks split at batch {step0['iteration']}"
    assert ranks[0][-1]["masks"] != ranks[0][0]["masks"], "the structure never moved, so the test proves nothing"

    (done,) = workers
    if done.returncode != 0 or not (root / "ddp" / "pruned.pt").is_file():
        raise WorkersFailed(f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
