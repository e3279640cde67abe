"""Measured latency as a differentiable resource: a per-convolution lookup fitted to timings on the target backend.

Each convolution of the supernet is timed alone (convolution, bias, SiLU, as it runs after export and BatchNorm
fusion) at a few widths on the backend the model will run on, and a per-site line is fitted to those timings:
`t = a * kept + b * MACs + d * outputs`. The sum over sites, in the straight-through counts of the resource
model, is differentiable in every keep ratio. Everything else in the network (concatenation, upsampling,
pooling, the head's decoding, the runtime's own overhead, widths that run slower than their FLOPs) is absorbed
by an affine calibration against the whole deployed model, timed end to end at full width, half width and a
few random structures. A table is used (and cached) only if it is plausible (`_implausible`, one rule): repeat
timings of each calibration structure agree within `REPEAT_SPREAD` of their median, the calibration's
scale is positive, every convolution's fitted time is positive at the widths it was timed at, the calibrated
prediction is positive at the smallest structure (every keep ratio at its minimum: the least any structure can
be predicted, since every term grows with every keep ratio), at half width and at the calibration structures,
it grows from the smallest structure to the full one, and it predicts the full model within
`CALIBRATION_TOLERANCE` of its measured figure. A machine busy with other work disturbs the timings, and is named
as the cause: an implausible table is timed again, up to `MEASURE_TRIES` times, then refused in one line; it is
never used nor cached. Tables are cached on disk, keyed by model, image size, batch, device and backend, so a
search measures once (`latency_refresh=True` measures again).

Backends (`core.latency_backends`): ONNX Runtime on the CPU, the default deployment of `yolo export
format=onnx`, or PyTorch on the training device (FP16 on a GPU). After a search the exported model is timed end
to end on the same backend (`final_latency`): the measured figure is what the budget is held to, and one over
the budget is a warning in the log and `over_budget` in `search.json`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ultralytics.utils import LOGGER, TQDM, USER_CONFIG_DIR, colorstr

from yolo_dms.core.budget import structure_as
from yolo_dms.core.errors import DMSError
from yolo_dms.core.latency_backends import LatencyBackend, OnnxRuntimeCPU
from yolo_dms.core.resource_registry import RESOURCES
from yolo_dms.core.resources import ResourceModel, traced_pass
from yolo_dms.core.supernet import Supernet

CACHE_DIR = USER_CONFIG_DIR / "yolo_dms" / "latency"
GRID = (1.0, 0.75, 0.5, 0.25)  # widths at which each convolution is timed alone, as fractions of its own
CALIBRATION_RANDOM = 4  # random structures timed whole, besides full and half width, to calibrate the sum
CALIBRATION_RANGE = (0.25, 1.0)  # their keep ratios are drawn from this range
CALIBRATION_ROUNDS = 2  # each is timed this many times, interleaved, and its lowest figure kept (noise only slows)
CALIBRATION_TOLERANCE = 0.2  # a table whose calibrated prediction of the full model is further off its measured
# figure, or whose repeat timings of one structure differ by more than this share of their median, was timed while
# something else disturbed the machine: it is measured again, never used or cached (`_implausible`)
REPEAT_SPREAD = 1.0  # repeat timings of one structure may differ by this much of their median: noise only slows,
# and the lowest is kept, but a machine busy enough to double a timing disturbs every other timing too
MEASURE_TRIES = 2  # measurements of a table before an implausible one is refused


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


def conv_geometries(supernet: Supernet, imgsz: tuple[int, int]) -> list[ConvGeometry | None]:
    """The full-width geometry of every convolution site, in `supernet.sites` order, from one traced pass
    (`traced_pass`); None for a training-only site (not `counted`: Segment26's semantic branch, Pose26's keypoint
    spreads), which never runs in an eval pass nor in the deployed model."""
    conv_shapes = traced_pass(supernet, imgsz).conv_shapes
    geometries: list[ConvGeometry | None] = []
    for site in supernet.sites:
        conv = supernet.get_submodule(site.path)
        shapes = conv_shapes.get(site.path)
        geometries.append(None if shapes is None else ConvGeometry(
            conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding),
            conv.groups, *shapes[0][2:],
        ))
    return geometries


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
    """Per-site coefficients `(a, b, d)` and the affine calibration `ms = alpha + beta * sum(sites)`;
    `calibration` holds every timing of each calibration structure (`calibration_structures` order, one figure
    per round), empty in a table cached before it was recorded."""

    key: str
    backend: str
    coefficients: list[list[float]]
    alpha: float
    beta: float
    measured_full_ms: float
    calibration: list[list[float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))


def table_key(
    supernet: Supernet,
    geometries: list[ConvGeometry | None],
    imgsz: tuple[int, int],
    backend: LatencyBackend,
    batch: int = 1,
) -> str:
    """What a table depends on: every convolution's geometry, the widths the masks allow (their divisors shape
    the calibration structures), image size, batch, and the backend's identity (runtime, version, device)."""
    masks = [[n, m.size, m.divisor] for n, m in supernet.keep_ratio_masks().items()]
    spec = json.dumps([[asdict(g) if g else None for g in geometries], masks, list(imgsz), batch, *backend.identity()])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class LatencyModel:
    """Predicted milliseconds of a supernet's structure on the backend, differentiable in every keep ratio."""

    def __init__(self, resources: ResourceModel, table: LatencyTable, backend: LatencyBackend) -> None:
        self.resources, self.table, self.backend = resources, table, backend
        self.coefficients = torch.tensor(table.coefficients, dtype=torch.float64)

    def site_lines(self, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Every convolution site's line at the current structure, before calibration (`[candidates, sites]` for
        a batch of keep ratios `ratios`, see `ResourceModel.conv_features`)."""
        features = self.resources.conv_features() if ratios is None else self.resources.conv_features(ratios)
        return (features * self.coefficients.to(features.device)).sum(-1)

    def raw(self, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """The sum of the sites' lines, before calibration."""
        return self.site_lines(ratios).sum(-1)

    def ms(self, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted milliseconds of the current structure, or of each of a batch of keep ratios `ratios`."""
        return self.table.alpha + self.table.beta * self.raw(ratios)

    def per_site(self) -> torch.Tensor:
        """Every convolution site's share of `ms()`, in proportion to its line (the calibration's offset, which
        stands for what no convolution accounts for, spread the same way), so the sites sum to the total."""
        lines = self.site_lines()
        return self.ms() * lines / lines.sum()

    def measure(self) -> float:
        """Measured milliseconds of the current hard structure, pruned and deployed on the backend."""
        return time_structure(self.resources.supernet, self.resources.imgsz, self.backend)

    def calibration_error(self) -> float:
        """How far the calibrated prediction of the full model is off its measured figure (relative)."""
        supernet = self.resources.supernet
        with structure_as(supernet, dict.fromkeys(supernet.keep_ratio_masks(), 1.0)), torch.no_grad():
            return self.ms().item() / self.table.measured_full_ms - 1


def same_resources(like: ResourceModel, supernet: Supernet) -> ResourceModel:
    """`like`'s resource model over another supernet of the same structure (an EMA copy to export), sharing its
    latency table and backend."""
    resources = ResourceModel(supernet, like.imgsz)
    if like.latency is not None:
        resources.latency = LatencyModel(resources, like.latency.table, like.latency.backend)
    return resources


def calibration_structures(names: list[str]) -> list[dict[str, float]]:
    """The structures a table is calibrated on: full width, half width, and `CALIBRATION_RANDOM` random ones
    (always the same: a cached table is checked on the structures it was calibrated on)."""
    rng = random.Random(0)
    structures = [dict.fromkeys(names, 1.0), dict.fromkeys(names, 0.5)]
    return structures + [{n: rng.uniform(*CALIBRATION_RANGE) for n in names} for _ in range(CALIBRATION_RANDOM)]


def measure_table(
    resources: ResourceModel, geometries: list[ConvGeometry | None], key: str, backend: LatencyBackend
) -> LatencyTable:
    """Time every convolution at the grid widths, fit its line, and calibrate the sum against whole models:
    full width, half width and random structures (a search ends at a structure that is not uniform)."""
    supernet = resources.supernet
    start = time.perf_counter()
    coefficients = []
    for geometry in TQDM(geometries, desc=f"DMS latency: timing {len(geometries)} convolutions on {backend.name}"):
        if geometry is None:  # a training-only site: its features, and so its line, are always zero
            coefficients.append([0.0, 0.0, 0.0])
            continue
        variants = [geometry.scaled(f) for f in GRID]
        times = [backend.time_conv(v) for v in variants]
        coefficients.append(_fit_site([v.features() for v in variants], times))
    convolutions_s, start = time.perf_counter() - start, time.perf_counter()
    model = LatencyModel(resources, LatencyTable(key, backend.name, coefficients, 0.0, 1.0, 0.0), backend)
    structures = calibration_structures(list(supernet.keep_ratio_masks()))
    raw, timings = [], [[] for _ in structures]
    rounds = [(r, i) for r in range(CALIBRATION_ROUNDS) for i in range(len(structures))]
    for r, i in TQDM(rounds, desc=f"DMS latency: timing {len(structures)} whole models on {backend.name}"):
        with structure_as(supernet, structures[i]), torch.no_grad():
            if r == 0:
                raw.append(model.raw().item())
            timings[i].append(time_structure(supernet, resources.imgsz, backend))
    measured = [min(t) for t in timings]  # noise only slows: the lowest figure (their spread is checked)
    beta, alpha = np.polyfit(raw, measured, 1)
    if not beta > 0:  # timing noise swamped the spread: proportional instead (checked like any calibration)
        beta, alpha = float(np.dot(raw, measured) / np.dot(raw, raw)), 0.0
    LOGGER.info(f"DMS latency: whole model {measured[0]:.3f} ms at full width, {measured[1]:.3f} ms at half width "
                f"({backend.name}); convolutions timed in {convolutions_s:.1f} s, whole models (calibration) in "
                f"{time.perf_counter() - start:.1f} s")
    return LatencyTable(key, backend.name, coefficients, float(alpha), float(beta), measured[0], timings)


DISTURBED = "the timings were disturbed, most likely by other work on a busy machine"


def _implausible(model: LatencyModel, geometries: list[ConvGeometry | None]) -> str | None:
    """Why `model`'s table must not be used (nor cached), in a clause, or None; the cause is `DISTURBED`. The
    one rule, checked in order:

    - repeat timings of each calibration structure agree: their spread is at most `REPEAT_SPREAD` of their
      median;
    - the calibration is physical: a positive, finite scale and a finite offset, a positive full-model figure;
    - every counted convolution's fitted line is positive at every width it was timed at (`GRID`);
    - the calibrated prediction is positive at the smallest structure (every keep ratio at its minimum), at
      uniform quarter, half and three-quarter width and at every calibration structure, and does not fall from
      the smallest structure to the full one (every term grows with every keep ratio, so with a positive scale
      the smallest structure's prediction bounds every structure's from below);
    - it predicts the full model within `CALIBRATION_TOLERANCE` of its measured figure.
    """
    table, supernet = model.table, model.resources.supernet
    names = list(supernet.keep_ratio_masks())
    structures = calibration_structures(names)
    labels = ["full model", "half-width structure"] + [f"random structure {i + 1}" for i in range(CALIBRATION_RANDOM)]
    for label, timings in zip(labels, table.calibration):
        median = float(np.median(timings))
        spread = (max(timings) - min(timings)) / median if median > 0 else float("inf")
        if not spread <= REPEAT_SPREAD:
            figures = ", ".join(f"{t:.3f}" for t in timings)
            return (f"repeat timings of the calibration's {label} differ by {spread:.0%} of their median ({figures} "
                    f"ms, more than {REPEAT_SPREAD:.0%})")
    if not (np.isfinite(table.alpha) and np.isfinite(table.beta) and table.beta > 0 and table.measured_full_ms > 0):
        return (f"its calibration is not physical (scale {table.beta:.4g}, offset {table.alpha:.4g} ms, full model "
                f"{table.measured_full_ms:.4g} ms measured)")
    for site, geometry, coefficients in zip(supernet.sites, geometries, table.coefficients):
        for f in GRID if geometry is not None else ():
            line = float(np.dot(coefficients, geometry.scaled(f).features()))
            if not line > 0:
                return f"convolution {site.path} is fitted at {line:.4g} ms at {f:.0%} of its width, where it was timed"
    ladder = [("smallest structure (every keep ratio at its minimum)", dict.fromkeys(names, 0.0))]
    ladder += [(f"uniform {r:.0%} width", dict.fromkeys(names, r)) for r in (0.25, 0.5, 0.75)]
    ladder += [("full model", structures[0])]
    others = [(f"calibration's {label}", ratios) for label, ratios in zip(labels[1:], structures[1:])]
    predicted = {}
    with torch.no_grad():
        for label, ratios in ladder + others:
            with structure_as(supernet, ratios):
                predicted[label] = ms = model.ms().item()
            if not ms > 0:
                return f"its calibration predicts the {label} at {ms:.3f} ms"
    rising = [predicted[label] for label, _ in ladder]
    if any(b < a for a, b in zip(rising, rising[1:])) or not rising[0] < rising[-1]:
        steps = ", ".join(f"{ms:.3f}" for ms in rising)
        return (f"its calibration does not grow from the smallest structure to the full model ({steps} ms at the "
                f"smallest, 25%, 50%, 75% and full width)")
    error = model.calibration_error()
    if not abs(error) <= CALIBRATION_TOLERANCE:
        return (f"its calibration predicts the full model at {table.measured_full_ms * (1 + error):.3f} ms against "
                f"{table.measured_full_ms:.3f} ms measured ({error:+.0%})")
    return None


_TABLES: dict[Path, LatencyTable] = {}  # tables this process measured or checked, by cache file: announced once


def attach_latency(
    resources: ResourceModel, backend: LatencyBackend, cache_dir: Path | None = None, refresh: bool = False
) -> LatencyModel:
    """Give `resources` its latency model on `backend`, from the disk cache or measured now (and cached).

    A table is checked before it is used or cached (`_implausible`): an implausible cached table is measured
    again, a measurement implausible `MEASURE_TRIES` times is refused (`DMSError`, one line) and nothing is
    cached. `refresh` measures again whatever is cached (once per process: a search's preflight and its trainer
    share one measurement)."""
    geometries = conv_geometries(resources.supernet, resources.imgsz)
    key = table_key(resources.supernet, geometries, resources.imgsz, backend)
    path = (cache_dir or CACHE_DIR) / f"{key}.json"
    if path in _TABLES:
        resources.latency = LatencyModel(resources, _TABLES[path], backend)
        return resources.latency
    problem = None
    if path.is_file() and not refresh:
        resources.latency = LatencyModel(resources, LatencyTable(**json.loads(path.read_text())), backend)
        problem = _implausible(resources.latency, geometries)
        if problem:
            LOGGER.warning(f"DMS latency: the cached table {path} is not used: {problem}: {DISTURBED}. Measuring it "
                           "again (latency_refresh=True always does)")
    if refresh or problem or not path.is_file():
        for attempt in range(1, MEASURE_TRIES + 1):
            resources.latency = LatencyModel(resources, measure_table(resources, geometries, key, backend), backend)
            problem = _implausible(resources.latency, geometries)
            if not problem:
                break
            if attempt < MEASURE_TRIES:
                LOGGER.warning(f"DMS latency: the table just measured is not used: {problem}: {DISTURBED}. "
                               "Measuring it again")
        if problem:
            resources.latency = None  # a refused table is never used
            raise DMSError(f"DMS latency: the machine is too busy to time latency reliably: the table was timed "
                           f"{MEASURE_TRIES} times and each was implausible, as timings disturbed by other work on a "
                           f"busy machine are (last: {problem}); run on a quiet machine, or use resource=gflops "
                           "(nothing was cached; latency_refresh=True re-times)")
        resources.latency.table.save(path)
    table = _TABLES[path] = resources.latency.table
    LOGGER.info(
        f"DMS latency: budgets in ms are measured on {table.backend} at batch 1 ({' '.join(backend.identity())}). "
        f"Whole model {table.measured_full_ms:.3f} ms; table {path}"
    )
    return resources.latency


def final_latency(
    model: LatencyModel, weights: str | Path, imgsz: tuple[int, int], budget_ms: float, fit_ms: float | None = None
) -> dict:
    """Time the exported `weights` (pruned.pt) end to end on `model`'s backend, against the prediction of the
    current structure (the exported one) and the budget, and say so in one line: a warning when it measures over
    the budget. `fit_ms` is what the fit measured at that structure, if it did.

    Returns `search.json`'s `latency` record, in ms: `backend`, `supernet_measured_ms`, `predicted_ms`,
    `measured_ms`, `fit_measured_ms`, `budget_ms`, `over_budget`, and `onnx` (the file name, beside the weights)
    when the timing exported a deployable model (ONNX Runtime: what `yolo export format=onnx` writes)."""
    with torch.no_grad():
        predicted = model.ms().item()
    measured, deployed = model.backend.time_export(weights, imgsz)
    record = {
        "backend": model.table.backend,
        "supernet_measured_ms": model.table.measured_full_ms,
        "predicted_ms": predicted,
        "measured_ms": measured,
        "fit_measured_ms": fit_ms,
        "budget_ms": budget_ms,
        "over_budget": measured > budget_ms * (1 + 1e-9),
    }
    if deployed is not None:
        record["onnx"] = Path(deployed).name
    (LOGGER.warning if record["over_budget"] else LOGGER.info)(latency_line(record))
    return record


def latency_line(record: dict) -> str:
    """`final_latency`'s record in one line; one over the budget says by how much and what to do."""
    predicted, measured, budget = record["predicted_ms"], record["measured_ms"], record["budget_ms"]
    line = (f"{colorstr('DMS:')} latency of pruned.pt ({record['backend']}): predicted {predicted:.3f} ms, measured "
            f"{measured:.3f} ms, budget {budget:.3f} ms")
    if not record["over_budget"]:
        return line
    fit = record.get("fit_measured_ms")
    at_fit = f" (the fit measured {fit:.3f} ms at this structure)" if fit is not None else ""
    return (f"{line}: measured {measured / budget - 1:+.1%} over the budget{at_fit}. Timings on a busy machine run "
            "slow: time it again on a quiet machine, or search again under a lower latency= budget")


def resource_model(
    supernet: Supernet,
    imgsz: int | tuple[int, int],
    resource: str = "gflops",
    backend: LatencyBackend | None = None,
    refresh: bool = False,
) -> ResourceModel:
    """The resource model of `supernet`, with its latency model attached when the budget is in milliseconds
    (on `backend`, by default ONNX Runtime on the CPU; `refresh` measures its table again)."""
    resources = ResourceModel(supernet, imgsz)
    if RESOURCES[resource].measured:
        attach_latency(resources, backend or OnnxRuntimeCPU(), refresh=refresh)
    return resources

