"""Two gloo processes run search steps of one supernet under DDP and must end with the same structure."""

from __future__ import annotations

import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG

from yolo_dms import ResourceModel, Supernet
from yolo_dms.demo_data import random_batch
from yolo_dms.objective import StructureStep

IMGSZ, STEPS = 64, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search_steps(rank: int, world: int, port: int, out: str) -> None:
    """What DMSTrainer does per optimizer step, on each rank's own data."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    base = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    base.args = copy.copy(DEFAULT_CFG)
    supernet = Supernet(base).train()
    model = DistributedDataParallel(supernet, find_unused_parameters=True)
    weights = torch.optim.SGD([p for n, p in supernet.named_parameters() if "keep_ratio" not in n], lr=1e-3)
    structure = StructureStep(supernet, ResourceModel(supernet, IMGSZ), lr=0.05, weight=1.0)
    target = 0.5 * structure.resources.gflops().item()
    for step in range(STEPS):
        loss, _ = model(random_batch(2, IMGSZ, nc=3, seed=100 * rank + step))  # different data on each rank
        loss.sum().backward()
        structure.step(target)
        weights.step()
        weights.zero_grad()
    supernet.eval()
    counts = supernet.hard_counts()
    hard = {name: mask.hard_masks(counts[name]) for name, mask in supernet.masks.items()}
    torch.save({"masks": supernet.masks.state_dict(), "hard": hard}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_keep_identical_keep_ratios_importance_and_masks(tmp_path):
    mp.spawn(search_steps, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    ratios = [k for k in rank0["masks"] if k.endswith("keep_ratio")]
    assert any(rank0["masks"][k] < 1 for k in ratios), "the structure never moved, so the test proves nothing"
    assert any(rank0["masks"][k].abs().sum() > 0 for k in rank0["masks"] if k.endswith("importance"))
    for key, value in rank0["masks"].items():
        assert torch.equal(value, rank1["masks"][key]), key
    for key, value in rank0["hard"].items():
        assert torch.equal(value, rank1["hard"][key]), key
