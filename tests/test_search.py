"""`yolo-dms search` through the real CLI on tiny generated data, and what stock Ultralytics makes of its outputs."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import textwrap
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from helpers import run_without_yolo_dms
from ultralytics.utils.torch_utils import get_flops

from yolo_dms.demo_data import make_dataset
from yolo_dms.model_io import load_checkpoint_model
from yolo_dms.trainer import DMSTrainer

IMGSZ = 64
TARGET = 0.7  # mild, so the briefly trained baseline keeps detections to compare after pruning
TINY = ["epochs=2", f"imgsz={IMGSZ}", "batch=8", "nbs=8", "workers=0", "device=cpu", "plots=False", "seed=0"]


def yolo_dms(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed `yolo-dms` console script."""
    exe = Path(sys.executable).with_name("yolo-dms")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def tiny_data(workdir) -> Path:
    return make_dataset(workdir / "data", n_train=96, n_val=16, imgsz=IMGSZ, seed=1)


@pytest.fixture(scope="module")
def trained_yolov8n(workdir, tiny_data) -> Path:
    """A yolov8n trained briefly (about 40 s, mAP50-95 about 0.02), so validation has detections to score."""
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").train(
        data=str(tiny_data), epochs=30, imgsz=IMGSZ, batch=8, nbs=8, warmup_epochs=1, workers=0, device="cpu",
        plots=False, seed=0,
        project=str(workdir / "runs"), name="baseline", exist_ok=True, verbose=False,
    )
    return workdir / "runs" / "baseline" / "weights" / "last.pt"


@pytest.fixture(scope="module")
def search_run(workdir, tiny_data, trained_yolov8n) -> Path:
    proc = yolo_dms(
        "search", f"model={trained_yolov8n}", f"data={tiny_data}", f"target={TARGET}", "warmup_epochs=0", *TINY,
        f"project={workdir / 'runs'}", "name=dms", cwd=workdir,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return workdir / "runs" / "dms"


def last_row(path: Path) -> dict:
    with open(path) as f:
        return {k.strip(): v for k, v in list(csv.DictReader(f))[-1].items()}


def test_search_writes_outputs_within_budget(search_run, trained_yolov8n):
    for name in ("searched.yaml", "pruned.pt", "search.csv", "results.csv", "search.png", "structure.png"):
        assert (search_run / name).exists(), name
    supernet_gflops = get_flops(load_checkpoint_model(trained_yolov8n), IMGSZ)
    budget = TARGET * supernet_gflops
    pruned_gflops = get_flops(load_checkpoint_model(search_run / "pruned.pt"), IMGSZ)
    assert 0.9 * budget <= pruned_gflops <= budget
    row = last_row(search_run / "results.csv")
    assert float(row["dms/GFLOPs"]) == pytest.approx(pruned_gflops, rel=1e-6)


def test_last_search_validation_equals_stock_val_of_pruned(search_run, tiny_data):
    searched_map = float(last_row(search_run / "results.csv")["metrics/mAP50-95(B)"])
    code = f"""
        from ultralytics import YOLO
        m = YOLO({str(search_run / 'pruned.pt')!r}).val(data={str(tiny_data)!r}, imgsz={IMGSZ}, batch=8, workers=0,
                                                         device="cpu", plots=False)
        print("STOCK_MAP", m.box.map)
    """
    proc = run_without_yolo_dms(code, cwd=search_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stock_map = float(re.search(r"STOCK_MAP ([0-9.eE+-]+)", proc.stdout).group(1))
    assert stock_map > 0, "the tiny baseline should detect something, or this comparison proves nothing"
    assert abs(stock_map - searched_map) <= 0.005


def test_stock_ultralytics_trains_from_both_outputs_and_exports_onnx(search_run, tiny_data, workdir):
    runs = workdir / "stock"
    code = f"""
        import numpy as np, onnxruntime as ort, torch
        from ultralytics import YOLO
        from ultralytics.cfg import entrypoint
        common = "data={tiny_data} epochs=1 imgsz={IMGSZ} batch=8 workers=0 device=cpu plots=False val=False"
        entrypoint(f"yolo train model={search_run / 'pruned.pt'} {{common}} project={runs} name=finetune")
        entrypoint(f"yolo train model={search_run / 'searched.yaml'} {{common}} project={runs} name=scratch")
        onnx_path = YOLO({str(search_run / 'pruned.pt')!r}).export(format="onnx", imgsz={IMGSZ})
        x = np.random.default_rng(0).random((1, 3, {IMGSZ}, {IMGSZ}), dtype=np.float32)
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {{session.get_inputs()[0].name: x}})[0]
        with torch.no_grad():
            torch_out = YOLO({str(search_run / 'pruned.pt')!r}).model.float().eval()(torch.from_numpy(x))[0].numpy()
        print("ONNX_DIFF", float(np.abs(onnx_out - torch_out).max()))
    """
    proc = run_without_yolo_dms(code, cwd=workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    transferred = re.findall(r"Transferred (\d+)/(\d+) items", output)
    assert transferred and transferred[0][0] == transferred[0][1], transferred
    assert (runs / "scratch" / "weights" / "last.pt").exists()
    assert float(re.search(r"ONNX_DIFF ([0-9.eE+-]+)", output).group(1)) < 1e-3


def test_resume_continues_with_structure_and_importance_intact(workdir, tiny_data):
    """A search killed after its first epoch resumes from last.pt with the saved structure, and finishes."""
    project = workdir / "resume"
    code = f"""
        import os
        from yolo_dms.settings import SearchSettings
        from yolo_dms.trainer import DMSTrainer
        args = dict(model="yolov8n.yaml", data={str(tiny_data)!r}, epochs=3, imgsz={IMGSZ}, batch=8, nbs=8,
                    workers=0, device="cpu", plots=False, project={str(project)!r}, name="run", warmup_epochs=0)
        trainer = DMSTrainer(overrides=args, settings=SearchSettings.from_arguments({{"target": 0.4}}))
        trainer.add_callback("on_model_save", lambda t: os._exit(17))  # die right after epoch 1 is saved
        trainer.train()
    """
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert killed.returncode == 17, killed.stderr[-3000:]
    last = project / "run" / "weights" / "last.pt"
    saved = load_checkpoint_model(last)
    saved_masks = {k: v.clone() for k, v in saved.masks.state_dict().items()}
    assert any(v.abs().sum() > 0 for k, v in saved_masks.items() if k.endswith("importance"))

    seen = {}
    trainer = DMSTrainer(overrides={"resume": str(last), "model": str(last)})
    trainer.add_callback("on_train_start", lambda t: seen.update(
        live=deepcopy(t.supernet.masks.state_dict()), ema=deepcopy(t.ema.ema.masks.state_dict()), start=t.start_epoch))
    trainer.train()
    assert seen["start"] == 1
    for key, value in saved_masks.items():
        assert torch.equal(seen["live"][key].cpu(), value), key
        assert torch.equal(seen["ema"][key].cpu(), value), key
    assert (project / "run" / "pruned.pt").exists() and (project / "run" / "searched.yaml").exists()
    with open(project / "run" / "results.csv") as f:
        assert [int(float(r["epoch"])) for r in csv.DictReader(f)] == [1, 2, 3]


def test_cli_reports_user_mistakes_in_one_line(workdir, tiny_data):
    cases = {
        ("search", "model=yolov8n.yaml", f"data={workdir / 'missing.yaml'}"): "does not exist",
        ("search", "model=yolov8n.yaml", f"data={tiny_data}", "target=1.5"): "target must lie in (0, 1]",
        ("search", "model=yolov8n.yaml", f"data={tiny_data}", "target=0.5", "gflops=1"): "not both",
        ("search", "model=yolov8n.yaml", f"data={tiny_data}", "gflops=500"): "above the supernet",
        ("search", "model=yolov8n.yaml", f"data={tiny_data}", "epochz=3"): "did you mean epochs",
        ("search", "model=yolov8-rtdetr.yaml", f"data={tiny_data}"): "RTDETRDecoder",
        ("info",): "info needs model=",
        ("frobnicate",): "unknown mode",
    }
    for args, message in cases.items():
        proc = yolo_dms(*args, cwd=workdir)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, args
    assert not (workdir / "runs" / "dms" / "search").exists()  # refused runs leave nothing behind


def test_help_lists_every_mode(workdir):
    proc = yolo_dms("help", cwd=workdir)
    assert proc.returncode == 0
    for mode in ("search", "export", "expand", "info", "demo"):
        assert f"  {mode}" in proc.stdout


def test_export_from_search_checkpoint_reproduces_the_search_outputs(search_run, workdir):
    out = workdir / "exported"
    proc = yolo_dms("export", f"model={search_run / 'weights' / 'last.pt'}", f"out={out}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "searched.yaml").read_text() == (search_run / "searched.yaml").read_text()
    pruned, exported = load_checkpoint_model(search_run / "pruned.pt"), load_checkpoint_model(out / "pruned.pt")
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), exported.state_dict().values()))
