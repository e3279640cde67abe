"""Interruption, atomic outputs, non-finite gradients and determinism of a search."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import yolo_dms
from ultralytics.nn.tasks import ClassificationModel

from yolo_dms import ResourceModel, Supernet
from yolo_dms.core.model_io import load_checkpoint_model
from yolo_dms.search.settings import SearchSettings
from yolo_dms.search.structure_step import StructureStep
from yolo_dms.search.trainer import DMSTrainer
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=32, n_val=8, imgsz=IMGSZ, seed=2)


def search_args(data: Path, project: Path, name: str, epochs: int = 2) -> dict:
    return dict(
        model="yolov8n.yaml", data=str(data), epochs=epochs, imgsz=IMGSZ, batch=8, nbs=8, workers=0, device="cpu",
        plots=False, project=str(project), name=name, warmup_epochs=0, seed=0, deterministic=True,
    )


def test_sigkill_mid_epoch_then_resume_finishes_with_saved_structure(tiny_data, tmp_path):
    args = search_args(tiny_data, tmp_path, "run", epochs=3)
    code = f"""
        import os, signal
        from yolo_dms.search.settings import SearchSettings
        from yolo_dms.search.trainer import DMSTrainer

        def kill_in_second_epoch(trainer):
            if trainer.epoch == 1 and trainer.search_iteration % 4 == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer = DMSTrainer(overrides={args!r}, settings=SearchSettings.from_arguments({{"target": 0.4}}))
        trainer.add_callback("on_train_batch_end", kill_in_second_epoch)
        trainer.train()
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    weights = tmp_path / "run" / "weights"
    assert not list(weights.glob(".*.tmp")), "a checkpoint was being written when nothing should have been"
    last = weights / "last.pt"
    saved = {k: v.clone() for k, v in load_checkpoint_model(last).masks.state_dict().items()}

    seen = {}
    trainer = DMSTrainer(overrides={"resume": str(last), "model": str(last)})
    trainer.add_callback("on_train_start", lambda t: seen.update(masks={
        k: v.detach().clone() for k, v in t.supernet.masks.state_dict().items()}, start=t.start_epoch))
    trainer.train()
    assert seen["start"] == 1
    assert all(torch.equal(seen["masks"][k], v) for k, v in saved.items())
    run = tmp_path / "run"
    assert (run / "searched.yaml").exists() and (run / "pruned.pt").exists()
    load_checkpoint_model(run / "pruned.pt")  # loads: the final outputs are complete


def test_non_finite_gradients_never_reach_the_structure():
    supernet = Supernet.from_source("yolov8n.yaml", nc=3)
    step = StructureStep(supernet, ResourceModel(supernet, IMGSZ), lr=0.05, weight=1.0)
    before = {k: v.clone() for k, v in supernet.masks.state_dict().items()}
    supernet.masks["l0"].keep_ratio.grad = torch.tensor(float("nan"))
    assert step.step(target=0.01) is None
    after = supernet.masks.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in supernet.structure_parameters())


def test_same_seed_gives_the_same_structure(tiny_data, tmp_path):
    yamls = []
    for name in ("a", "b"):
        trainer = DMSTrainer(
            overrides=search_args(tiny_data, tmp_path, name), settings=SearchSettings.from_arguments({"target": 0.5})
        )
        trainer.train()
        yamls.append((tmp_path / name / "searched.yaml").read_text())
    assert yamls[0] == yamls[1]


def test_user_mistakes_get_one_line_and_leave_nothing_behind(tiny_data, tmp_path):
    """The bad-input matrix, through the real CLI: exit status 2, one line naming the problem, no run directory."""
    classifier = tmp_path / "classifier.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False)}, classifier)
    real = tmp_path / "real.pt"
    torch.save({"model": Supernet.from_source("yolov8n.yaml", nc=3)}, real)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    plain = tmp_path / "plain.pt"
    torch.save({"model": Supernet.from_source("yolov8n.yaml", nc=3).model}, plain)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    no_images = tmp_path / "no_images.yaml"
    no_images.write_text(f"path: {empty}\ntrain: images\nval: images\nnames: {{0: a}}\n")
    data = f"data={tiny_data}"
    cases = {
        ("search", f"model={tmp_path / 'missing.pt'}", data): "does not exist",
        ("search", f"model={classifier}", data): "not a YOLO detection model",
        ("search", f"model={truncated}", data): "not a readable checkpoint",
        ("search", "model=yolov8-rtdetr.yaml", data): "RTDETRDecoder",
        ("search", "model=yolov8n-cls.yaml", data): "not a detection model (task=classify",
        ("search", "model=yolov8n.yaml", data, "target=1.5"): "target must lie in (0, 1]",
        ("search", "model=yolov8n.yaml", data, "target=0"): "target must lie in (0, 1]",
        ("search", "model=yolov8n.yaml", data, "target=0.5", "gflops=1"): "give one budget",
        ("search", "model=yolov8n.yaml", data, "gflops=500"): "above the supernet",
        ("search", "model=yolov8n.yaml", data, "gflops=0.001"): "smallest structure",
        ("search", "model=yolov8n.yaml", data, "epochz=3"): "did you mean epochs",
        ("search", "model=yolov8n.yaml", f"data={tmp_path / 'missing.yaml'}"): "does not exist",
        ("search", "model=yolov8n.yaml", f"data={no_images}"): "no train images",
        ("export", f"model={plain}"): "not a yolo-dms search checkpoint",
        ("export", f"model={truncated}"): "not a readable checkpoint",
        ("search", "resume=True", f"project={tmp_path / 'none'}"): "no search checkpoint to resume",
        ("info",): "info needs model=",
        ("frobnicate",): "unknown mode",
    }
    for args, message in cases.items():
        proc = yolo_dms(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout[-1000:], proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout, args
    assert not (tmp_path / "runs").exists()  # refused runs leave nothing behind

