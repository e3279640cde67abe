"""The one traced pass (`resources.traced_pass`) that the resource model and the latency table read runs its input
on the device and in the dtype of the supernet's parameters, so both work on a float64 or a CUDA supernet. (The
`meta` device cannot run it: Ultralytics' Detect reads its strides back to the host while it decodes boxes.)"""

from __future__ import annotations

import pytest
import torch

from yolo_dms import ResourceModel, Supernet
from yolo_dms.core.latency import conv_geometries
from yolo_dms.core.model_io import load_supernet

IMGSZ = (64, 64)


def first_input(supernet: Supernet) -> dict[str, torch.Tensor]:
    """Run the latency table's geometry extraction on `supernet`, keeping the image its traced pass fed in."""
    seen = {}
    hook = supernet.model[0].register_forward_pre_hook(lambda module, inputs: seen.setdefault("image", inputs[0]))
    try:
        seen["geometries"] = conv_geometries(supernet, IMGSZ)
    finally:
        hook.remove()
    return seen


@pytest.fixture(scope="module")
def reference() -> tuple[list, float]:
    """Geometries and GFLOPs of a float32 supernet on the CPU."""
    supernet = load_supernet("yolov8n.yaml", nc=3)
    return conv_geometries(supernet, IMGSZ), ResourceModel(supernet, IMGSZ).gflops().item()


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float64),
    pytest.param("cuda", torch.float32, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
])
def test_the_traced_pass_runs_where_the_parameters_are(reference, device, dtype):
    supernet = load_supernet("yolov8n.yaml", nc=3).to(device, dtype).train()
    seen = first_input(supernet)
    assert (seen["image"].device.type, seen["image"].dtype) == (device, dtype)
    assert seen["geometries"] == reference[0] and None not in seen["geometries"]
    assert ResourceModel(supernet, IMGSZ).gflops().item() == pytest.approx(reference[1], rel=1e-9)
    assert supernet.training  # the pass leaves the mode as it found it
