"""Where latency is measured: a backend times one convolution alone and a whole model, on one device.

- `onnxruntime`: ONNX Runtime on the CPU (the `tools` extra), how `yolo export format=onnx` is deployed; whole
  models are exported by the stock exporter and timed as exported (after a search, `pruned.onnx`, the model
  whose milliseconds `search.json` reports, is kept beside `pruned.pt`).
- `torch`: PyTorch on the training device, the model fused as `yolo predict` runs it; FP16 on a GPU (as
  `half=True` deploys it), FP32 on the CPU (and Apple's MPS). On a GPU every run ends in a synchronize, so a
  figure is the latency of one batch-1 call, launch overhead included.

`latency_backend=auto` picks `torch` when the search trains on a GPU and `onnxruntime` on the CPU. Every
figure is the lowest of three block medians (`time_calls`), so that a burst of other work on the machine
during one block does not move it.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo_dms.core.errors import DMSError

BACKENDS = ("auto", "onnxruntime", "torch")
SITE_RUNS = 25  # timed runs per convolution and width (median), after warm-up
MODEL_RUNS = 200  # timed runs of a whole model (median), after warm-up
WARMUP_S = 0.2  # least seconds of warm-up runs before timing


def time_calls(call: Callable[[], object], runs: int, warmup: int = 5, blocks: int = 3) -> float:
    """Milliseconds of one `call`: the lowest of the medians of `blocks` blocks of runs, after at least `warmup`
    runs and `WARMUP_S` seconds of them (a fresh session runs its first tenths of a second slower)."""
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < WARMUP_S:
        call()
        done += 1
    medians = []
    for _ in range(blocks):
        times = []
        for _ in range(max(1, runs // blocks)):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        medians.append(statistics.median(times))
    return min(medians)


def _cpu_name() -> str:
    """The processor's model name (what a CPU timing depends on besides its thread count)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _onnxruntime():
    """ONNX Runtime and onnx, or the one line that says how to get them."""
    try:
        import onnx
        import onnxruntime
    except ModuleNotFoundError as e:
        raise DMSError(
            f"latency on ONNX Runtime needs '{e.name}', from the tools extra: pip install 'yolo-dms[tools]' "
            "(or latency_backend=torch to time PyTorch itself)"
        ) from None
    return onnx, onnxruntime


class LatencyBackend:
    """Times convolutions and whole models on one runtime and device; `identity` keys its cached tables."""

    name: str

    def identity(self) -> list[str]:
        """What a timing depends on besides the model: backend, its version, the device."""
        raise NotImplementedError

    def time_conv(self, geometry, runs: int = SITE_RUNS) -> float:
        """Milliseconds of one convolution with bias and SiLU alone (a `latency.ConvGeometry`)."""
        raise NotImplementedError

    def time_model(self, model: nn.Module, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> float:
        """Milliseconds of a (pruned) detection model at batch 1, as this backend deploys it."""
        raise NotImplementedError

    def time_weights(self, weights: str | Path, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> float:
        """Milliseconds of a checkpoint as stock Ultralytics loads it, deployed as `time_model` deploys one."""
        from ultralytics import YOLO

        return self.time_model(YOLO(str(weights)).model, imgsz, runs)

    def time_export(
        self, weights: str | Path, imgsz: tuple[int, int], runs: int = MODEL_RUNS
    ) -> tuple[float, Path | None]:
        """`time_weights`, and the deployable file the timing exported beside the checkpoint (None: nothing)."""
        return self.time_weights(weights, imgsz, runs), None


class OnnxRuntimeCPU(LatencyBackend):
    """ONNX Runtime's CPU provider, default threads: what `yolo export format=onnx` runs on."""

    name = "onnxruntime-cpu"

    def identity(self) -> list[str]:
        _, ort = _onnxruntime()
        return [self.name, ort.__version__, _cpu_name(), str(os.cpu_count())]

    @staticmethod
    def session(model_bytes: bytes):
        """A CPU session, default threads and graph optimizations (as a deployment would run it)."""
        _, ort = _onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])

    @staticmethod
    def conv_graph(geometry):
        """An ONNX graph of one convolution with bias and SiLU, with random weights."""
        _onnxruntime()
        from onnx import TensorProto, helper, numpy_helper

        g = geometry
        rng = np.random.default_rng(0)
        weight = rng.standard_normal((g.out_channels, g.in_channels // g.groups, *g.kernel)).astype(np.float32)
        bias = rng.standard_normal(g.out_channels).astype(np.float32)
        nodes = [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(g.kernel), strides=list(g.stride),
                             pads=[g.padding[0], g.padding[1]] * 2, group=g.groups),
            helper.make_node("Sigmoid", ["y"], ["s"]),
            helper.make_node("Mul", ["y", "s"], ["z"]),
        ]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, g.in_channels, g.height, g.width])]
        graph = helper.make_graph(
            nodes, "conv", inputs, [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def time_conv(self, geometry, runs: int = SITE_RUNS) -> float:
        session = self.session(self.conv_graph(geometry).SerializeToString())
        x = np.random.default_rng(1).standard_normal((1, geometry.in_channels, geometry.height, geometry.width))
        feed = {"x": x.astype(np.float32)}
        return time_calls(lambda: session.run(None, feed), runs)

    def time_onnx(self, path: str | Path, runs: int = MODEL_RUNS) -> float:
        """Milliseconds of an exported ONNX model at batch 1 on its own input shape."""
        session = self.session(Path(path).read_bytes())
        spec = session.get_inputs()[0]
        feed = {spec.name: np.random.default_rng(1).random(spec.shape, dtype=np.float32)}
        return time_calls(lambda: session.run(None, feed), runs, warmup=10)

    def time_model(self, model: nn.Module, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> float:
        from yolo_dms.core.model_io import write_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            weights = write_checkpoint(model, Path(tmp) / "model.pt", {"imgsz": max(imgsz)})
            return self.time_onnx(export_weights_onnx(weights, imgsz), runs)

    def time_weights(self, weights: str | Path, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> float:
        return self.time_export(weights, imgsz, runs)[0]

    def time_export(self, weights: str | Path, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> tuple[float, Path]:
        """The checkpoint exported as `yolo export format=onnx` exports it, beside it (`pruned.pt` gives
        `pruned.onnx`, kept: the model the budget was measured on, ready to deploy), and its milliseconds."""
        onnx = export_weights_onnx(weights, imgsz)
        return self.time_onnx(onnx, runs), onnx


class TorchDevice(LatencyBackend):
    """PyTorch eager on `device`: FP16 on a GPU, FP32 on the CPU, default threads."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.half = device.type == "cuda"
        self.name = f"torch-{device.type}-{'fp16' if self.half else 'fp32'}"

    def identity(self) -> list[str]:
        if self.device.type == "cuda":
            hardware = torch.cuda.get_device_name(self.device)
        else:
            hardware = f"{_cpu_name()} x{torch.get_num_threads()}"
        return [self.name, torch.__version__, hardware]

    def _time(self, module: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> float:
        module = module.to(self.device).eval()
        x = x.to(self.device)
        if self.half:
            module, x = module.half(), x.half()
        synchronize = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(self.device.type, lambda: None)

        def call() -> None:
            module(x)
            synchronize()

        with torch.inference_mode():
            return time_calls(call, runs, warmup)

    def time_conv(self, geometry, runs: int = SITE_RUNS) -> float:
        g = geometry
        conv = nn.Conv2d(g.in_channels, g.out_channels, g.kernel, g.stride, g.padding, groups=g.groups)
        return self._time(nn.Sequential(conv, nn.SiLU()), torch.randn(1, g.in_channels, g.height, g.width), runs, 5)

    def time_model(self, model: nn.Module, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> float:
        deployed = copy.deepcopy(model).float().eval().fuse(verbose=False)
        channels = deployed.yaml.get("channels", 3)
        return self._time(deployed, torch.rand(1, channels, *imgsz), runs, 10)


def export_weights_onnx(weights: str | Path, imgsz: int | tuple[int, int]) -> Path:
    """A checkpoint exported the way `yolo export format=onnx` does it; the .onnx lands beside it."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    _onnxruntime()
    level = LOGGER.level
    LOGGER.setLevel("WARNING")  # the exporter's own report would bury the search log
    try:
        return Path(YOLO(str(weights)).export(format="onnx", imgsz=list(imgsz) if isinstance(imgsz, tuple)
                                              else imgsz, verbose=False))
    finally:
        LOGGER.setLevel(level)


def torch_device(device: str | torch.device | None) -> torch.device:
    """The device an Ultralytics `device=` argument names ('', 'cpu', '0', '0,1', 'cuda:1', 'mps'): the first
    GPU of a list, a GPU when none is named and one is present, else the CPU."""
    if isinstance(device, torch.device):
        return device
    text = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    if text in ("", "none"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text in ("cpu", "mps"):
        return torch.device(text)
    first = text.split(",")[0]
    if first.isdigit():
        return torch.device(f"cuda:{first}")
    raise DMSError(f"device={device} is not a device latency can be measured on (cpu, 0, 0,1, cuda:0, mps)")


def latency_backend(name: str = "auto", device: str | torch.device | None = "cpu") -> LatencyBackend:
    """The backend `latency_backend=name` asks for on `device=`: `auto` is PyTorch on a GPU, ONNX Runtime on
    the CPU. Building one imports nothing: a missing ONNX Runtime is reported when something is first timed, so
    GFLOPs and parameter searches never need it."""
    if name not in BACKENDS:
        raise DMSError(f"latency_backend must be one of {', '.join(BACKENDS)}, got {name}")
    target = torch_device(device)
    if name == "onnxruntime" or (name == "auto" and target.type == "cpu"):
        return OnnxRuntimeCPU()
    return TorchDevice(target)
