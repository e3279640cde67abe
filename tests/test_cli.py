"""`yolo-dms expand` and `yolo-dms info` through the real console script."""

from __future__ import annotations

from helpers import yolo_dms
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops


def test_expand_writes_a_wider_deeper_stock_yaml(tmp_path):
    out = tmp_path / "big.yaml"
    proc = yolo_dms("expand", "model=yolov8n.yaml", "width=1.5", "depth=2", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    big, base = DetectionModel(str(out), verbose=False), DetectionModel("yolov8n.yaml", verbose=False)
    assert get_flops(big, 320) > 2 * get_flops(base, 320)
    widths = [m.conv.out_channels for m in big.model[:2]]
    assert widths == [24, 48]  # 16 and 32 channels times 1.5
    assert [len(big.model[i].m) for i in (2, 4)] == [2, 4]  # 1 and 2 blocks times 2
    refused = yolo_dms("expand", "model=yolov8n.yaml", "width=0.5", cwd=tmp_path)
    assert refused.returncode == 2 and "at least 1" in refused.stderr


def test_info_reports_ultralytics_totals(tmp_path):
    proc = yolo_dms("info", "model=yolov8n.yaml", "imgsz=640", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = DetectionModel("yolov8n.yaml", verbose=False)
    params = sum(p.numel() for p in model.parameters())
    assert f"{get_flops(model, 640):.3f} GFLOPs, {params:,} parameters" in proc.stdout
    assert "C2f" in proc.stdout and "Detect" in proc.stdout
