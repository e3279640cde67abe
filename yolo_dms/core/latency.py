"""Measured latency as a differentiable resource: a per-convolution lookup fitted to timings on the target backend.

Each convolution of the supernet is timed alone (convolution, bias, SiLU, as it runs after export and BatchNorm
fusion) at a few widths on the backend the model will run on, and a per-site line is fitted to those timings:
`t = a * kept + b * MACs + d * outputs`. The sum over sites, in the straight-through counts of the resource
model, is differentiable in every keep ratio. Everything else in the network (concatenation, upsampling,
pooling, the head's decoding, the runtime's own overhead) is absorbed by an affine calibration against the
whole exported model, timed end to end at full width and at half width. Tables are cached on disk, keyed by
model, image size, batch, device and backend, so a search measures once.

The backend today is ONNX Runtime on the CPU (the `tools` extra): the default deployment of `yolo export
format=onnx`. After a search the exported model is timed end to end the same way, and the measured figure is
what the budget is held to.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from ultralytics.utils import USER_CONFIG_DIR

from yolo_dms.core.budget import fit_to_budget, keep_ratios, set_keep_ratios, structure_as
from yolo_dms.core.errors import DMSError
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet

BACKEND = "onnxruntime-cpu"
CACHE_DIR = USER_CONFIG_DIR / "yolo_dms" / "latency"
GRID = (1.0, 0.75, 0.5, 0.25)  # widths at which each convolution is timed alone, as fractions of its own
SITE_RUNS = 25  # timed runs per convolution and width (median), after warm-up
MODEL_RUNS = 200  # timed runs of a whole exported model (median), after warm-up


@dataclass(frozen=True)
class ConvGeometry:
    """What a convolution site computes at full width: channels, kernel, stride, padding, groups, input size."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    height: int
    width: int

    def scaled(self, factor: float) -> ConvGeometry:
        """The same convolution with its widths scaled; a depthwise one stays depthwise, the image stays RGB."""
        c_out = max(1, round(self.out_channels * factor))
        if self.groups > 1:  # depthwise: one channel in per channel out
            return ConvGeometry(c_out, c_out, self.kernel, self.stride, self.padding, c_out, self.height, self.width)
        c_in = self.in_channels if self.in_channels <= 3 else max(1, round(self.in_channels * factor))
        return ConvGeometry(c_in, c_out, self.kernel, self.stride, self.padding, 1, self.height, self.width)

    def features(self) -> tuple[float, float, float]:
        """(kept, MACs, output elements), the terms `ResourceModel.conv_features` gives for a site."""
        h = (self.height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        w = (self.width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        per_output = self.kernel[0] * self.kernel[1] * self.in_channels // self.groups
        return 1.0, float(h * w * self.out_channels * (per_output + 4)), float(h * w * self.out_channels)


def conv_geometries(supernet: Supernet, imgsz: tuple[int, int]) -> list[ConvGeometry]:
    """The full-width geometry of every convolution site, in `supernet.sites` order, from one traced pass."""
    found: dict[str, ConvGeometry] = {}
    hooks = []
    for site in supernet.sites:
        def record(conv: nn.Conv2d, inputs, _, path: str = site.path) -> None:
            found[path] = ConvGeometry(conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                                       tuple(conv.stride), tuple(conv.padding), conv.groups, *inputs[0].shape[2:])

        hooks.append(supernet.get_submodule(site.path).register_forward_hook(record))
    training = supernet.training
    try:
        supernet.eval()
        with torch.no_grad(), supernet.masks_off():
            supernet(torch.zeros(1, supernet.yaml.get("channels", 3), *imgsz))
    finally:
        supernet.train(training)
        for hook in hooks:
            hook.remove()
    return [found[site.path] for site in supernet.sites]


def _onnxruntime():
    """ONNX Runtime and onnx, or the one line that says how to get them."""
    try:
        import onnx
        import onnxruntime
    except ModuleNotFoundError as e:
        raise DMSError(
            f"a latency budget needs '{e.name}', from the tools extra: pip install 'yolo-dms[tools]'"
        ) from None
    return onnx, onnxruntime


def conv_graph(geometry: ConvGeometry):
    """An ONNX graph of one convolution with bias and SiLU, with random weights."""
    onnx, _ = _onnxruntime()
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
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, g.in_channels, g.height, g.width])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def time_session(session, feed: dict, runs: int, warmup: int = 5, blocks: int = 3) -> float:
    """Milliseconds of `session.run` on `feed`: the lowest of the medians of `blocks` blocks of runs, so that a
    burst of other work on the machine during one block does not move the figure."""
    for _ in range(warmup):
        session.run(None, feed)
    medians = []
    for _ in range(blocks):
        times = []
        for _ in range(max(1, runs // blocks)):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1e3)
        medians.append(statistics.median(times))
    return min(medians)


def session_of(model_bytes: bytes):
    """An ONNX Runtime CPU session, sequential, default threads (as a deployment would run it)."""
    _, ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def time_conv(geometry: ConvGeometry, runs: int = SITE_RUNS) -> float:
    """Median milliseconds of one convolution alone."""
    session = session_of(conv_graph(geometry).SerializeToString())
    x = np.random.default_rng(1).standard_normal((1, geometry.in_channels, geometry.height, geometry.width))
    return time_session(session, {"x": x.astype(np.float32)}, runs)


def time_onnx(path: str | Path, runs: int = MODEL_RUNS) -> float:
    """Median milliseconds of an exported ONNX model at batch 1 on its own input shape."""
    session = session_of(Path(path).read_bytes())
    spec = session.get_inputs()[0]
    x = np.random.default_rng(1).random(spec.shape, dtype=np.float32)
    return time_session(session, {spec.name: x}, runs, warmup=10)


def export_weights_onnx(weights: str | Path, imgsz: int | tuple[int, int]) -> Path:
    """A checkpoint exported the way `yolo export format=onnx` does it; the .onnx lands beside it."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel("WARNING")  # the exporter's own report would bury the search log
    try:
        return Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, verbose=False))
    finally:
        LOGGER.setLevel(level)


def export_onnx(model: nn.Module, imgsz: tuple[int, int], directory: Path) -> Path:
    """A model exported through a stock checkpoint written into `directory`."""
    from yolo_dms.core.model_io import write_checkpoint

    return export_weights_onnx(write_checkpoint(model, directory / "model.pt", {"imgsz": max(imgsz)}), list(imgsz))


def time_structure(supernet: Supernet, imgsz: tuple[int, int], runs: int = MODEL_RUNS) -> float:
    """Measured milliseconds of the supernet's current hard structure, pruned and exported."""
    from yolo_dms.core.prune import prune

    with tempfile.TemporaryDirectory() as tmp:
        return time_onnx(export_onnx(prune(supernet).eval(), imgsz, Path(tmp)), runs)


def _fit_site(rows: list[tuple[float, float, float]], times: list[float]) -> list[float]:
    """Non-negative least squares of `times` on the feature rows (three unknowns: every subset tried)."""
    x, y = np.array(rows), np.array(times)
    best, best_error = [0.0, 0.0, 0.0], float("inf")
    for size in (1, 2, 3):
        for columns in itertools.combinations(range(3), size):
            coef = np.linalg.lstsq(x[:, columns], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            error = float(((x[:, columns] @ coef - y) ** 2).sum())
            if error < best_error:
                best, best_error = [0.0] * 3, error
                for c, value in zip(columns, coef):
                    best[c] = float(value)
    return best


@dataclass
class LatencyTable:
    """Per-site coefficients `(a, b, d)` and the affine calibration `ms = alpha + beta * sum(sites)`."""

    key: str
    backend: str
    coefficients: list[list[float]]
    alpha: float
    beta: float
    measured_full_ms: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))


def table_key(geometries: list[ConvGeometry], imgsz: tuple[int, int], batch: int = 1) -> str:
    """What a table depends on: every convolution's geometry, image size, batch, backend and its version."""
    _, ort = _onnxruntime()
    spec = json.dumps([[asdict(g) for g in geometries], list(imgsz), batch, BACKEND, ort.__version__])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class LatencyModel:
    """Predicted milliseconds of a supernet's structure on the backend, differentiable in every keep ratio."""

    def __init__(self, resources: ResourceModel, table: LatencyTable) -> None:
        self.resources, self.table = resources, table
        self.coefficients = torch.tensor(table.coefficients, dtype=torch.float64)

    def raw(self) -> torch.Tensor:
        """The sum of the sites' lines, before calibration."""
        features = self.resources.conv_features()
        return (features * self.coefficients.to(features.device)).sum()

    def ms(self) -> torch.Tensor:
        return self.table.alpha + self.table.beta * self.raw()

    def per_site(self) -> torch.Tensor:
        """Calibrated milliseconds of every convolution site (the rest of `ms()` is the constant `alpha`)."""
        features = self.resources.conv_features()
        return self.table.beta * (features * self.coefficients.to(features.device)).sum(1)


def measure_table(resources: ResourceModel, geometries: list[ConvGeometry], key: str) -> LatencyTable:
    """Time every convolution at the grid widths, fit its line, and calibrate against two whole-model timings."""
    from ultralytics.utils import LOGGER, TQDM

    supernet = resources.supernet
    coefficients = []
    for geometry in TQDM(geometries, desc=f"DMS latency: timing {len(geometries)} convolutions on {BACKEND}"):
        variants = [geometry.scaled(f) for f in GRID]
        coefficients.append(_fit_site([v.features() for v in variants], [time_conv(v) for v in variants]))
    model = LatencyModel(resources, LatencyTable(key, BACKEND, coefficients, 0.0, 1.0, 0.0))
    points = []
    names = supernet.keep_ratio_masks()
    for ratio in (1.0, 0.5):
        with structure_as(supernet, dict.fromkeys(names, ratio)), torch.no_grad():
            points.append((model.raw().item(), time_structure(supernet, resources.imgsz)))
    (raw_full, full), (raw_half, half) = points
    beta = (full - half) / (raw_full - raw_half) if raw_full > raw_half and full > half else full / raw_full
    alpha = full - beta * raw_full
    LOGGER.info(f"DMS latency: whole model {full:.3f} ms at full width, {half:.3f} ms at half width ({BACKEND})")
    return LatencyTable(key, BACKEND, coefficients, alpha, beta, full)


def attach_latency(resources: ResourceModel, cache_dir: Path = CACHE_DIR) -> LatencyModel:
    """Give `resources` its latency model, from the disk cache or measured now (and cached)."""
    geometries = conv_geometries(resources.supernet, resources.imgsz)
    key = table_key(geometries, resources.imgsz)
    path = cache_dir / f"{key}.json"
    if path.is_file():
        table = LatencyTable(**json.loads(path.read_text()))
    else:
        table = measure_table(resources, geometries, key)
        table.save(path)
    resources.latency = LatencyModel(resources, table)
    from ultralytics.utils import LOGGER

    LOGGER.info(
        f"DMS latency: budgets in ms are measured on {table.backend} at batch 1 (the deployment of `yolo export "
        f"format=onnx` on a CPU), whatever device trains; GPU backends (TensorRT, CUDA) are not built yet. "
        f"Whole model {table.measured_full_ms:.3f} ms; table {path}"
    )
    return resources.latency


def resource_model(supernet: Supernet, imgsz: int | tuple[int, int], resource: str = "gflops") -> ResourceModel:
    """The resource model of `supernet`, with its latency model attached when the budget is in milliseconds."""
    resources = ResourceModel(supernet, imgsz)
    if resource == "latency":
        attach_latency(resources)
    return resources


def fit_to_measured_budget(
    supernet: Supernet, resources: ResourceModel, budget: float, tries: int = 3
) -> tuple[float, float]:
    """Fit the structure under `budget` ms on the prediction, then hold it to the measured figure: while the
    exported structure measures above the budget, refit to a budget lowered by the overshoot.

    Returns (the common factor applied to the learned keep ratios, the measured milliseconds)."""
    target = budget
    learned = keep_ratios(supernet)
    for _ in range(tries):
        set_keep_ratios(supernet, learned)
        factor = fit_to_budget(supernet, resources, target, "latency")
        measured = time_structure(supernet, resources.imgsz)
        if measured <= budget:
            break
        target *= budget / measured
    return factor, measured
