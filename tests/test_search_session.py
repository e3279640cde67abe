"""The search session across Ultralytics' own retries, and the trainer that calls it staying thin."""

from __future__ import annotations

import ast
import inspect

import pytest
from ultralytics.engine.trainer import BaseTrainer

import yolo_dms.search.session as session_module
import yolo_dms.search.trainer as trainer_module
from yolo_dms.search.settings import SearchSettings
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64


@pytest.mark.skipif(not hasattr(BaseTrainer, "_build_train_pipeline"),
                    reason="this Ultralytics has no out-of-memory retry (it came after 8.4.0)")
def test_an_out_of_memory_retry_keeps_the_structure_optimizer_and_times_nothing_again(tmp_path, monkeypatch):
    """Ultralytics halves the batch and retries the first epoch after an out-of-memory error, keeping the weight
    optimizer; the search keeps its structure optimizer and its state (every step counted), builds no second
    resource model, and follows the new run length."""
    built = []
    real_resource_model = session_module.resource_model
    monkeypatch.setattr(session_module, "resource_model", lambda *a, **k: built.append(1) or real_resource_model(*a, **k))

    class OutOfMemoryOnce(trainer_module.DMSTrainer):
        failed = False

        def preprocess_batch(self, batch):
            if self.session.iteration == 2 and not OutOfMemoryOnce.failed:
                OutOfMemoryOnce.failed = True
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return super().preprocess_batch(batch)

    data = make_dataset(tmp_path / "data", n_train=32, n_val=8, imgsz=IMGSZ, seed=5)
    trainer = OutOfMemoryOnce(overrides={
        "model": "yolov8n.yaml", "data": str(data), "epochs": 1, "imgsz": IMGSZ, "batch": 8, "workers": 0,
        "device": "cpu", "plots": False, "val": False, "project": str(tmp_path / "runs"), "name": "oom",
    }, settings=SearchSettings.from_arguments({"target": 0.6}))
    seen, steps = {}, []
    trainer.add_callback("on_train_batch_end", lambda t: seen.setdefault(
        "optimizer", (t.session.structure.optimizer, t.session.resources)))

    real_step = session_module.StructureStep.step
    monkeypatch.setattr(session_module.StructureStep, "step",
                        lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    trainer.train()

    assert OutOfMemoryOnce.failed and trainer.batch_size == 4
    optimizer, resources = seen["optimizer"]
    assert trainer.session.structure.optimizer is optimizer and trainer.session.resources is resources
    assert len(built) == 1  # the resource model was built once, before the retry
    state_steps = {float(s["step"]) for s in optimizer.state.values()}
    assert state_steps == {float(len(steps))}, (state_steps, len(steps))  # the steps before the retry count too
    assert trainer.session.schedule.total_steps == len(trainer.train_loader) == 8  # 32 images at batch 4


HOOKS = {name for name, member in vars(trainer_module.SearchTrainer).items() if inspect.isfunction(member)}


def test_the_trainer_stays_thin():
    """Every method of the trainer and the session fits on a screen (25 lines); search set-up is not hidden in
    build_optimizer."""
    for module in (trainer_module, session_module):
        tree = ast.parse(inspect.getsource(module))
        long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 25]
        assert not long, (module.__name__, long)
    source = inspect.getsource(trainer_module.SearchTrainer.build_optimizer)
    assert not any(call in source for call in ("self.session", "resource_model(", "StructureStep(", "latency_backend("))
    assert "_setup_train" in HOOKS and "resume_training" not in HOOKS  # the session restores its own state
