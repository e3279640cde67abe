"""Measured latency as a differentiable resource: a per-convolution lookup fitted to timings on the target backend.

Each convolution of the supernet is timed alone (convolution, bias, SiLU, as it runs after export and BatchNorm
fusion) at a few widths on the backend the model will run on, and a per-site line is fitted to those timings:
`t = a * kept + b * MACs + d * outputs`. The sum over sites, in the straight-through counts of the resource
model, is differentiable in every keep ratio. Everything else in the network (concatenation, upsampling,
pooling, the head's decoding, the runtime's own overhead, widths that run slower than their FLOPs) is absorbed
by an affine calibration against the whole deployed model, timed end to end at full width, half width and a
few random structures. Tables are cached on disk, keyed by model, image size, batch, device and backend, so a
search measures once.

Backends (`core.latency_backends`): ONNX Runtime on the CPU, the default deployment of `yolo export
format=onnx`, or PyTorch on the training device (FP16 on a GPU). After a search the exported model is timed end
to end on the same backend, and the measured figure is what the budget is held to.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from ultralytics.utils import USER_CONFIG_DIR

from yolo_dms.core.budget import fit_to_budget, keep_ratios, set_keep_ratios, structure_as
from yolo_dms.core.latency_backends import LatencyBackend, OnnxRuntimeCPU
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet

CACHE_DIR = USER_CONFIG_DIR / "yolo_dms" / "latency"
GRID = (1.0, 0.75, 0.5, 0.25)  # widths at which each convolution is timed alone, as fractions of its own
CALIBRATION_RANDOM = 4  # random structures timed whole, besides full and half width, to calibrate the sum
CALIBRATION_RANGE = (0.25, 1.0)  # their keep ratios are drawn from this range
CALIBRATION_ROUNDS = 2  # each is timed this many times, interleaved, and its lowest figure kept (noise only slows)


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


def time_structure(supernet: Supernet, imgsz: tuple[int, int], backend: LatencyBackend) -> float:
    """Measured milliseconds of the supernet's current hard structure, pruned and deployed on `backend`."""
    from yolo_dms.core.prune import prune

    return backend.time_model(prune(supernet).eval(), imgsz)


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


def table_key(
    supernet: Supernet, geometries: list[ConvGeometry], imgsz: tuple[int, int], backend: LatencyBackend, batch: int = 1
) -> str:
    """What a table depends on: every convolution's geometry, the widths the masks allow (their divisors shape
    the calibration structures), image size, batch, and the backend's identity (runtime, version, device)."""
    masks = [[n, m.size, m.divisor] for n, m in supernet.keep_ratio_masks().items()]
    spec = json.dumps([[asdict(g) for g in geometries], masks, list(imgsz), batch, *backend.identity()])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class LatencyModel:
    """Predicted milliseconds of a supernet's structure on the backend, differentiable in every keep ratio."""

    def __init__(self, resources: ResourceModel, table: LatencyTable, backend: LatencyBackend) -> None:
        self.resources, self.table, self.backend = resources, table, backend
        self.coefficients = torch.tensor(table.coefficients, dtype=torch.float64)

    def site_lines(self) -> torch.Tensor:
        """Every convolution site's line at the current structure, before calibration."""
        features = self.resources.conv_features()
        return (features * self.coefficients.to(features.device)).sum(1)

    def raw(self) -> torch.Tensor:
        """The sum of the sites' lines, before calibration."""
        return self.site_lines().sum()

    def ms(self) -> torch.Tensor:
        return self.table.alpha + self.table.beta * self.raw()

    def per_site(self) -> torch.Tensor:
        """Calibrated milliseconds of every convolution site (the rest of `ms()` is the constant `alpha`)."""
        return self.table.beta * self.site_lines()


def measure_table(
    resources: ResourceModel, geometries: list[ConvGeometry], key: str, backend: LatencyBackend
) -> LatencyTable:
    """Time every convolution at the grid widths, fit its line, and calibrate the sum against whole models:
    full width, half width and random structures (a search ends at a structure that is not uniform)."""
    from ultralytics.utils import LOGGER, TQDM

    supernet = resources.supernet
    coefficients = []
    for geometry in TQDM(geometries, desc=f"DMS latency: timing {len(geometries)} convolutions on {backend.name}"):
        variants = [geometry.scaled(f) for f in GRID]
        times = [backend.time_conv(v) for v in variants]
        coefficients.append(_fit_site([v.features() for v in variants], times))
    model = LatencyModel(resources, LatencyTable(key, backend.name, coefficients, 0.0, 1.0, 0.0), backend)
    names = list(supernet.keep_ratio_masks())
    rng = random.Random(0)
    structures = [dict.fromkeys(names, 1.0), dict.fromkeys(names, 0.5)]
    structures += [{n: rng.uniform(*CALIBRATION_RANGE) for n in names} for _ in range(CALIBRATION_RANDOM)]
    raw, measured = [], [float("inf")] * len(structures)
    rounds = [(r, i) for r in range(CALIBRATION_ROUNDS) for i in range(len(structures))]
    for r, i in TQDM(rounds, desc=f"DMS latency: timing {len(structures)} whole models on {backend.name}"):
        with structure_as(supernet, structures[i]), torch.no_grad():
            if r == 0:
                raw.append(model.raw().item())
            measured[i] = min(measured[i], time_structure(supernet, resources.imgsz, backend))
    beta, alpha = np.polyfit(raw, measured, 1)
    if not beta > 0:  # timing noise swamped the spread: proportional instead
        beta, alpha = float(np.dot(raw, measured) / np.dot(raw, raw)), 0.0
    LOGGER.info(f"DMS latency: whole model {measured[0]:.3f} ms at full width, {measured[1]:.3f} ms at half width "
                f"({backend.name})")
    return LatencyTable(key, backend.name, coefficients, float(alpha), float(beta), measured[0])


def attach_latency(resources: ResourceModel, backend: LatencyBackend, cache_dir: Path = CACHE_DIR) -> LatencyModel:
    """Give `resources` its latency model on `backend`, from the disk cache or measured now (and cached)."""
    geometries = conv_geometries(resources.supernet, resources.imgsz)
    key = table_key(resources.supernet, geometries, resources.imgsz, backend)
    path = cache_dir / f"{key}.json"
    if path.is_file():
        table = LatencyTable(**json.loads(path.read_text()))
    else:
        table = measure_table(resources, geometries, key, backend)
        table.save(path)
    resources.latency = LatencyModel(resources, table, backend)
    from ultralytics.utils import LOGGER

    LOGGER.info(
        f"DMS latency: budgets in ms are measured on {table.backend} at batch 1 ({' '.join(backend.identity())}). "
        f"Whole model {table.measured_full_ms:.3f} ms; table {path}"
    )
    return resources.latency


def resource_model(
    supernet: Supernet, imgsz: int | tuple[int, int], resource: str = "gflops", backend: LatencyBackend | None = None
) -> ResourceModel:
    """The resource model of `supernet`, with its latency model attached when the budget is in milliseconds
    (on `backend`, by default ONNX Runtime on the CPU)."""
    resources = ResourceModel(supernet, imgsz)
    if resource == "latency":
        attach_latency(resources, backend or OnnxRuntimeCPU())
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
        measured = time_structure(supernet, resources.imgsz, resources.latency.backend)
        if measured <= budget:
            break
        target *= budget / measured
    return factor, measured
