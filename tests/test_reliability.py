"""Interruption, atomic outputs, non-finite gradients and determinism of a search."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import OLDEST_ULTRALYTICS, run_without_yolo_dms
from ultralytics.nn.tasks import DetectionModel

import yolo_dms.search.session as session_module
from yolo_dms import ResourceModel
from yolo_dms.core.model_io import load_checkpoint_model, load_supernet
from yolo_dms.search.export import export_checkpoint
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


def run_killed(args: dict, settings: dict, kill_when: str) -> None:
    """Search in a fresh process that SIGKILLs itself after the first batch where `kill_when` (an expression of
    `trainer`) holds, as a crash or an out-of-memory killer would."""
    code = f"""
        import os, signal
        from yolo_dms.search.settings import SearchSettings
        from yolo_dms.search.trainer import DMSTrainer

        def kill(trainer):
            if {kill_when}:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer = DMSTrainer(overrides={args!r}, settings=SearchSettings.from_arguments({settings!r}))
        trainer.add_callback("on_train_batch_end", kill)
        trainer.train()
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]


def resume(last: Path, seen: dict) -> DMSTrainer:
    """Resume the search of `last` to its end, recording in `seen` its start epoch, masks and search state."""
    trainer = DMSTrainer(overrides={"resume": str(last), "model": str(last)})
    trainer.add_callback("on_train_start", lambda t: seen.update(
        masks={k: v.detach().clone() for k, v in t.supernet.masks.state_dict().items()}, start=t.start_epoch,
        frozen=t.session.frozen, fit=dict(t.session.fit)))
    trainer.train()
    return trainer


def test_sigkill_mid_epoch_then_resume_finishes_with_saved_structure(tiny_data, tmp_path):
    run_killed(search_args(tiny_data, tmp_path, "run", epochs=3), {"target": 0.4},
               "trainer.epoch == 1 and trainer.session.iteration % 4 == 2")
    weights = tmp_path / "run" / "weights"
    assert not list(weights.glob(".*.tmp")), "a checkpoint was being written when nothing should have been"
    last = weights / "last.pt"
    saved = {k: v.clone() for k, v in load_checkpoint_model(last).masks.state_dict().items()}

    seen = {}
    resume(last, seen)
    assert seen["start"] == 1
    assert all(torch.equal(seen["masks"][k], v) for k, v in saved.items())
    run = tmp_path / "run"
    assert (run / "searched.yaml").exists() and (run / "pruned.pt").exists()
    load_checkpoint_model(run / "pruned.pt")  # loads: the final outputs are complete


def refined_search(tiny_data: Path, project: Path, name: str, **extra) -> dict:
    """A 3-epoch search of 4 batches an epoch whose structure is fitted and frozen at batch 6 (inside epoch 1)."""
    return {**search_args(tiny_data, project, name, epochs=3), **extra}


REFINE = {"target": 0.4, "target_schedule": 0.4, "refine": 0.5}


def summary(run: Path) -> dict:
    return json.loads((run / "search.json").read_text())


def test_kill_inside_refine_then_resume_keeps_the_fitted_structure_and_stale_temp_files_replace_nothing(
    tiny_data, tmp_path
):
    run_killed(refined_search(tiny_data, tmp_path, "run"), REFINE, "trainer.session.iteration == 10")
    weights = tmp_path / "run" / "weights"
    last = weights / "last.pt"
    saved = load_checkpoint_model(last)
    assert saved.search_state["fit"]["iteration"] == 6  # last.pt (epoch 1) was written inside the refine phase
    for stale in (".best.pt.tmp", ".last.pt.tmp"):  # what a kill during a write leaves behind
        (weights / stale).write_bytes(b"half a checkpoint")

    seen = {}
    resume(last, seen)
    assert seen["start"] == 2 and seen["frozen"]
    assert seen["fit"] == saved.search_state["fit"]
    assert all(torch.equal(seen["masks"][k], v) for k, v in saved.masks.state_dict().items())
    result = summary(tmp_path / "run")
    assert result["fit_iteration"] == 6  # the refine phase's fit, not a second one at export
    assert result["final"]["gflops"] <= result["budget"]["value"]
    assert not list(weights.glob(".*.tmp"))
    assert isinstance(load_checkpoint_model(weights / "best.pt"), DetectionModel)  # the pruned model, whole


@pytest.mark.skipif(OLDEST_ULTRALYTICS, reason="8.4.0 goes on to the next epoch after a NaN loss, not rerunning it")
def test_nan_loss_in_the_epoch_that_fixed_the_structure_is_recovered_with_the_search_state(tiny_data, tmp_path):
    """Ultralytics reloads last.pt after a non-finite loss and reruns the epoch; the fit made inside that epoch
    is undone with it and made again, so the exported model is under the budget."""
    trainer = DMSTrainer(overrides=refined_search(tiny_data, tmp_path, "nan"),
                         settings=SearchSettings.from_arguments(REFINE))
    fits = []
    injected = []

    def poison(t):
        if t.epoch == 1 and t.session.iteration == 8 and not injected:
            injected.append(t.session.fit["iteration"])
            t.loss = torch.tensor(float("nan"))

    trainer.add_callback("on_train_batch_end", poison)
    trainer.add_callback("on_train_epoch_start", lambda t: fits.append((t.epoch, t.session.frozen)))
    trainer.train()
    assert injected == [6]
    assert fits[:3] == [(0, False), (1, False), (1, False)]  # epoch 1 reran from last.pt's unfrozen structure
    result = summary(tmp_path / "nan")
    assert result["fit_iteration"] == 6
    assert result["final"]["gflops"] <= result["budget"]["value"]


def test_time_limited_search_follows_the_run_length_and_ends_after_a_refine_phase(tiny_data, tmp_path):
    """`time=` re-estimates the epochs after each one; the schedule follows, so the structure is fixed before
    the time runs out and the run ends on a flat stretch at the budget."""
    args = {**search_args(tiny_data, tmp_path, "timed", epochs=3), "time": 0.004}
    trainer = DMSTrainer(overrides=args, settings=SearchSettings.from_arguments({"target": 0.4, "refine": 0.4}))
    planned = []  # the run's length as Ultralytics estimated it when each epoch began (it re-estimates after the last too)
    trainer.add_callback("on_train_epoch_start", lambda t: planned.append(t.epochs * len(t.train_loader)))
    trainer.train()
    result = summary(tmp_path / "timed")
    assert result["total_iterations"] == planned[-1] != 3 * 4
    assert result["fit_iteration"] is not None and result["fit_iteration"] < trainer.session.iteration
    assert result["final"]["gflops"] <= result["budget"]["value"]
    with open(tmp_path / "timed" / "search.csv") as f:
        rows = list(csv.reader(f))[1:]  # iteration, epoch, figure, target, resource loss
    refined = [float(r[2]) for r in rows if int(r[0]) >= result["fit_iteration"]]
    assert len(refined) >= 2 and max(refined) == min(refined) <= result["budget"]["value"]


def test_non_finite_gradients_never_reach_the_structure():
    supernet = load_supernet("yolov8n.yaml", nc=3)
    step = StructureStep(supernet, ResourceModel(supernet, IMGSZ), lr=0.05, weight=1.0)
    before = {k: v.clone() for k, v in supernet.masks.state_dict().items()}
    supernet.masks["l0"].keep_ratio.grad = torch.tensor(float("nan"))
    _, _, finite = step.step(target=0.01)
    assert not finite  # skipped, and said so
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


@pytest.mark.skipif(OLDEST_ULTRALYTICS, reason="8.4.0 does not retry an epoch after an out-of-memory error")
def test_batch_halved_after_out_of_memory_resizes_the_schedule(tiny_data, tmp_path, monkeypatch):
    """Ultralytics halves the batch after an out-of-memory error in the first epoch and reruns it: twice the
    batches, so the schedule and the search clock follow; the structure optimizer and its state survive (every
    step counted) and no second resource model is built."""
    built, steps, seen = [], [], {}
    resource_model, step = session_module.resource_model, session_module.StructureStep.step
    monkeypatch.setattr(session_module, "resource_model", lambda *a, **k: built.append(1) or resource_model(*a, **k))
    monkeypatch.setattr(session_module.StructureStep, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    trainer = DMSTrainer(overrides=search_args(tiny_data, tmp_path, "oom"),
                         settings=SearchSettings.from_arguments({"target": 0.5}))
    trainer.add_callback("on_train_batch_end", lambda t: seen.setdefault("first", t.session.structure.optimizer))
    failed, preprocess = [], trainer.preprocess_batch

    def out_of_memory_once(batch):
        if not failed and trainer.session.iteration == 2:
            failed.append(trainer.batch_size)
            raise RuntimeError("CUDA out of memory (simulated)")
        return preprocess(batch)

    trainer.preprocess_batch = out_of_memory_once
    trainer.train()
    assert failed == [8] and trainer.batch_size == 4
    result = summary(tmp_path / "oom")
    assert result["total_iterations"] == 2 * 8 and trainer.session.iteration == 16
    assert result["final"]["gflops"] <= result["budget"]["value"]
    optimizer = trainer.session.structure.optimizer
    assert optimizer is seen["first"] and len(built) == 1  # one resource model, built before the retry
    assert {float(s["step"]) for s in optimizer.state.values()} == {float(len(steps))}  # steps before it count too


def with_classes(data: Path, nc: int, root: Path) -> Path:
    """A copy of the dataset `data` declaring `nc` classes (labels folded into them when fewer)."""
    source = data.parent
    shutil.copytree(source / "images", root / "images")
    for label in (source / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        target = root / label.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(f"{int(r[0]) % nc} {' '.join(r[1:])}\n" for r in rows))
    names = {i: f"class{i}" for i in range(nc)}
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {names}\n")
    return root / "data.yaml"


def test_checkpoints_of_other_class_counts_search_resume_and_export_for_stock_ultralytics(tiny_data, tmp_path):
    """Stock loading keeps Detect's class branch at a checkpoint's width when the class count differs; the search
    exports the branch exported YAMLs rebuild for the data's classes, through a kill and resume too."""
    coco_like = tmp_path / "coco80.pt"
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    torch.save({"model": model.half(), "ema": None, "train_args": {}}, coco_like)
    four, ten, eighty = (with_classes(tiny_data, nc, tmp_path / f"data{nc}") for nc in (4, 10, 80))

    run_killed({**search_args(four, tmp_path, "from80"), "model": str(coco_like)}, {"target": 0.5},
               "trainer.epoch == 1")
    resume(tmp_path / "from80" / "weights" / "last.pt", {})
    pruned4 = tmp_path / "from80" / "pruned.pt"
    for data, name in ((ten, "to10"), (eighty, "to80")):
        args = {**search_args(data, tmp_path, name, epochs=1), "model": str(pruned4)}
        DMSTrainer(overrides=args, settings=SearchSettings.from_arguments({"target": 0.5})).train()
    again = export_checkpoint(tmp_path / "to80" / "weights" / "last.pt", out=tmp_path / "exported")
    assert again.yaml_path.read_text() == (tmp_path / "to80" / "searched.yaml").read_text()

    runs = {"from80": 4, "to10": 10, "to80": 80}
    code = f"""
        import torch
        from ultralytics import YOLO
        for name, nc in {runs!r}.items():
            for weights in ("pruned.pt", "weights/best.pt"):
                model = YOLO(f"{tmp_path}/{{name}}/{{weights}}")
                out = model.model.float().eval()(torch.zeros(1, 3, {IMGSZ}, {IMGSZ}))[0]
                assert len(model.names) == nc and out.shape[1] == 4 + nc, (name, weights, out.shape)
                YOLO(f"{tmp_path}/{{name}}/searched.yaml")  # the architecture rebuilds
        print("STOCK_OK")
    """
    proc = run_without_yolo_dms(code, cwd=tmp_path)
    assert "STOCK_OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
