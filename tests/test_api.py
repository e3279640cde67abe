"""The Python API (`DMS(model).search()`), `YOLO().train(trainer=DMSTrainer.configured(...))`, the final metrics
reaching Ultralytics' callbacks, and `yolo-dms export format=onnx`, on one tiny search shared by the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import yolo_dms
from ultralytics import YOLO
from ultralytics.utils.torch_utils import get_flops

from yolo_dms import DMS, DMSError, SearchResult
from yolo_dms.search.trainer import DMSTrainer
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64
EPOCHS = 2
TINY = dict(epochs=EPOCHS, imgsz=IMGSZ, batch=8, nbs=8, workers=0, device="cpu", plots=False, seed=0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def tiny_data(workdir) -> Path:
    return make_dataset(workdir / "data", n_train=32, n_val=8, imgsz=IMGSZ, seed=1)


@pytest.fixture(scope="module")
def searched(workdir, tiny_data) -> tuple[SearchResult, list[tuple[int, dict]]]:
    """One search from Python, with a callback on `on_fit_epoch_end` recording the epoch and metrics it sees."""
    seen: list[tuple[int, dict]] = []
    dms = DMS("yolov8n.yaml")
    dms.add_callback("on_fit_epoch_end", lambda trainer: seen.append((trainer.epoch, dict(trainer.metrics))))
    result = dms.search(data=tiny_data, target=0.7, project=workdir / "runs", name="api", **TINY)
    return result, seen


def test_search_returns_its_outputs_figures_and_a_stock_model(searched, tiny_data):
    result, _ = searched
    for path in (result.searched_yaml, result.pruned, result.summary):
        assert path.is_file(), path
    summary = json.loads(result.summary.read_text())
    assert (result.budget, result.gflops, result.params) == (
        summary["budget"]["value"], summary["final"]["gflops"], summary["final"]["params"]
    )
    assert result.fit_factor == summary["fit_factor"] and result.resource == "gflops"
    assert result.finetune_args == summary["finetune"] and set(result.finetune_args) == {"optimizer", "lr0"}
    assert result.gflops <= result.budget < result.supernet_gflops
    model = result.model
    assert isinstance(model, YOLO) and sum(p.numel() for p in model.model.parameters()) == result.params
    assert get_flops(model.model, IMGSZ) == pytest.approx(result.gflops, rel=1e-6)
    metrics = model.val(data=str(tiny_data), imgsz=IMGSZ, batch=8, workers=0, device="cpu", plots=False)
    assert metrics.box.map == pytest.approx(result.map, abs=1e-6)  # the search's final validation is stock val


def test_returned_model_exports_onnx_that_matches_pytorch(searched):
    import onnxruntime as ort

    result, _ = searched
    onnx_path = result.model.export(format="onnx", imgsz=IMGSZ)
    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        torch_out = YOLO(str(result.pruned)).model.float().eval()(torch.from_numpy(x))[0].numpy()
    assert np.abs(onnx_out - torch_out).max() < 1e-3


def test_final_metrics_of_pruned_model_reach_on_fit_epoch_end_once(searched):
    result, seen = searched
    assert [epoch for epoch, _ in seen] == list(range(EPOCHS + 1))  # one call per epoch, then the final one
    final = seen[-1][1]
    assert final["metrics/mAP50-95(B)"] == result.map and final["metrics/mAP50(B)"] == result.map50
    assert final["dms/GFLOPs"] == result.gflops and final["dms/params"] == result.params
    assert final["dms/budget"] == pytest.approx(result.budget) and final["dms/fit_factor"] == result.fit_factor
    assert all("dms/fit_factor" not in metrics for _, metrics in seen[:-1])


def test_cli_export_hands_the_pruned_model_to_ultralytics_exporter(searched, workdir):
    result, _ = searched
    out = workdir / "exported"
    proc = yolo_dms("export", f"model={result.save_dir / 'weights' / 'last.pt'}", f"out={out}", "format=onnx",
                    "opset=17", cwd=workdir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    onnx_path = out / "pruned.onnx"
    assert onnx_path.is_file() and str(onnx_path) in proc.stdout
    import onnx

    assert onnx.load(str(onnx_path)).opset_import[0].version == 17
    refused = yolo_dms("export", f"model={result.save_dir / 'weights' / 'last.pt'}", "format=onnx", "workspace=4",
                       cwd=workdir)
    assert refused.returncode == 2 and "unknown argument 'workspace'" in refused.stderr


@pytest.mark.parametrize(
    "arguments",
    [{"target": 2.0}, {"epoch": 3}, {"target": "half"}, {"cfg": "no-such-recipe"}],
    ids=["target-out-of-range", "unknown-argument", "mistyped-setting", "unknown-recipe"],
)
def test_bad_arguments_raise_dmserror_with_the_cli_line(arguments, tiny_data, workdir):
    with pytest.raises(DMSError) as raised:
        DMS("yolov8n.yaml").search(data=tiny_data, **arguments)
    proc = yolo_dms("search", "model=yolov8n.yaml", f"data={tiny_data}", *(f"{k}={v}" for k, v in arguments.items()),
                    cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == f"yolo-dms search: error: {raised.value}"


def test_resume_continues_the_search_of_the_given_checkpoint(searched, workdir):
    """`DMS(path).search(resume=True)` is `yolo-dms search resume=path`: here a finished search, refused alike."""
    last = searched[0].save_dir / "weights" / "last.pt"
    with pytest.raises(DMSError, match="has finished, so there is nothing to resume") as raised:
        DMS(last).search(resume=True)
    proc = yolo_dms("search", f"resume={last}", cwd=workdir)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == f"yolo-dms search: error: {raised.value}"


def test_yolo_train_with_a_configured_dms_trainer_ends_with_the_pruned_model(tiny_data, workdir):
    with pytest.raises(DMSError, match="unknown DMS setting 'targt'"):
        DMSTrainer.configured(targt=0.5)
    model = YOLO("yolov8n.yaml")
    full = get_flops(model.model, IMGSZ)
    metrics = model.train(trainer=DMSTrainer.configured(target=0.6), data=str(tiny_data), **TINY,
                          project=str(workdir / "runs"), name="yolo-train")
    run = Path(model.trainer.save_dir)
    assert run.name == "yolo-train" and (run / "pruned.pt").is_file()
    pruned = YOLO(str(run / "pruned.pt")).model
    assert model.model.yaml == pruned.yaml  # Ultralytics loaded its result, weights/best.pt: the pruned model
    assert get_flops(model.model, IMGSZ) <= 0.6 * full
    assert metrics.box.map == pytest.approx(model.trainer.metrics["metrics/mAP50-95(B)"])
