"""The exported files work in stock Ultralytics, in a process where yolo_dms cannot be imported."""

from __future__ import annotations

import re

import pytest
import yaml
from helpers import assert_onnx_matches, randomize_structure, run_without_yolo_dms

from yolo_dms.core.export import export_searched
from yolo_dms.tools.demo_data import make_dataset
from yolo_dms.core.model_io import load_supernet

IMGSZ = 64


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=16, n_val=8, imgsz=IMGSZ, seed=0)


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])  # YOLO11 and more YOLO26: test_families.py
def test_pruned_checkpoint_loads_predicts_validates_trains_and_exports_without_plugin(cfg, tiny_data, tmp_path):
    nc = yaml.safe_load(tiny_data.read_text())["nc"]
    supernet = load_supernet(cfg, nc=nc)
    randomize_structure(supernet, seed=3, empty_c2f=1)
    supernet.eval()
    result = export_searched(supernet, tmp_path / "search", imgsz=IMGSZ)
    assert result.gflops > 0 and result.params > 0

    code = f"""
        import numpy as np, onnxruntime as ort, torch
        from ultralytics import YOLO
        from ultralytics.cfg import entrypoint

        model = YOLO({str(result.weights_path)!r})
        assert type(model.model).__name__ == "DetectionModel", type(model.model)
        print("PRUNED_PARAMS", sum(p.numel() for p in model.model.parameters()))  # before val: 8.4.0 fuses in place
        results = model.predict(np.full(({IMGSZ}, {IMGSZ}, 3), 127, np.uint8), imgsz={IMGSZ}, verbose=False)
        print("PREDICTED", len(results))
        metrics = model.val(data={str(tiny_data)!r}, imgsz={IMGSZ}, batch=4, workers=0, device="cpu",
                            plots=False, project={str(tmp_path / 'runs')!r}, name="val")
        print("VALIDATED", metrics.box.map)
        rebuilt = YOLO({str(result.yaml_path)!r})
        print("YAML_PARAMS", sum(p.numel() for p in rebuilt.model.parameters()))
        entrypoint("yolo train model={result.weights_path} data={tiny_data} epochs=1 imgsz={IMGSZ} batch=4 "
                   "workers=0 device=cpu plots=False val=False project={tmp_path / 'runs'} name=finetune")
        onnx_path = model.export(format="onnx", imgsz={IMGSZ})
        x = np.random.default_rng(0).random((1, 3, {IMGSZ}, {IMGSZ}), dtype=np.float32)
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {{session.get_inputs()[0].name: x}})[0]
        with torch.no_grad():
            torch_out = YOLO({str(result.weights_path)!r}).model.float().eval()(torch.from_numpy(x))[0].numpy()
        print("ONNX_DIFF", float(np.abs(onnx_out - torch_out).max()))
    """
    proc = run_without_yolo_dms(code, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "PREDICTED 1" in output
    assert re.search(r"VALIDATED \d", output)
    rebuilt, pruned = (int(re.search(rf"{key} (\d+)", output).group(1)) for key in ("YAML_PARAMS", "PRUNED_PARAMS"))
    assert rebuilt == pruned  # the YAML rebuilds every parameter pruned.pt holds
    transferred = re.search(r"Transferred (\d+)/(\d+) items", output)
    assert transferred, output[-4000:]
    assert transferred.group(1) == transferred.group(2), transferred.group(0)
    assert (tmp_path / "runs" / "finetune" / "weights" / "last.pt").exists()
    assert_onnx_matches(output, end_to_end=cfg.startswith("yolo26"))
