"""A latency table is checked for plausibility before it is used or cached: timings disturbed by a busy machine
(the full model at 10.8 ms, half width at 1.2 ms, a fit that predicts the smallest structure below zero) are timed
again, then refused in one line, and never cached; the final measurement over the budget is a warning, a field of
`search.json` and a point on `search.png`. Whole models are timed by a staged backend, not measured."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.ticker import MaxNLocator
from ultralytics.utils import LOGGER

import yolo_dms.core.latency as latency
from yolo_dms import Supernet
from yolo_dms.core.budget import hard_gflops, keep_ratios, structure_as
from yolo_dms.core.errors import DMSError
from yolo_dms.core.latency_backends import LatencyBackend
from yolo_dms.core.resources import ResourceModel
from yolo_dms.search.search_log import SearchLog, plot_search
from yolo_dms.core.model_io import load_supernet

IMGSZ = 64
CALLS = latency.CALIBRATION_ROUNDS * (2 + latency.CALIBRATION_RANDOM)  # whole-model timings per table


class StagedBackend(LatencyBackend):
    """A convolution costs its MACs; a whole model `OVERHEAD + 10 * GFLOPs` ms, unless `disturb(call, uniform
    keep ratio or None, clean ms)` says otherwise (a busy machine)."""

    name = "staged"

    def __init__(self, disturb=None, exported_ms: float = 1.0) -> None:
        self.disturb, self.exported_ms, self.model_calls = disturb, exported_ms, 0

    def identity(self) -> list[str]:
        return [self.name]

    def time_conv(self, geometry, runs: int = 0) -> float:
        return geometry.features()[1] * 1e-7

    def time_supernet(self, supernet: Supernet, imgsz) -> float:
        ratios = set(keep_ratios(supernet).values())
        uniform = ratios.pop() if len(ratios) == 1 else None
        clean = 0.2 + 10 * hard_gflops(ResourceModel(supernet, imgsz))
        call, self.model_calls = self.model_calls, self.model_calls + 1
        return self.disturb(call, uniform, clean) if self.disturb else clean

    def time_export(self, weights, imgsz, runs: int = 0):
        return self.exported_ms, None


def reported(call: int, uniform: float | None, clean: float) -> float:
    """The timings of the report: the full model at 10.8 ms and half width at 1.2 ms, the rest undisturbed."""
    return {1.0: 10.8, 0.5: 1.2}.get(uniform, clean)


def first_table(disturb):
    """`disturb` while the first table is timed, clean timings after it."""
    return lambda call, uniform, clean: disturb(call, uniform, clean) if call < CALLS else clean


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(latency, "CACHE_DIR", tmp_path / "latency")
    monkeypatch.setattr(latency, "_TABLES", {})
    monkeypatch.setattr(latency, "time_structure", lambda net, imgsz, backend: backend.time_supernet(net, imgsz))
    return tmp_path / "latency"


@pytest.fixture
def warnings():
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    LOGGER.addHandler(handler)
    yield records
    LOGGER.removeHandler(handler)


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    return load_supernet("yolov8n.yaml", nc=3, hidden_divisor=8)


def predictions(model: latency.LatencyModel) -> dict[str, float]:
    """Predicted ms at the smallest structure, uniform widths and the calibration structures."""
    names = list(model.resources.supernet.keep_ratio_masks())
    structures = {"smallest": dict.fromkeys(names, 0.0), **{f"{r}": dict.fromkeys(names, r) for r in (0.25, 0.75)}}
    structures.update({f"calibration {i}": s for i, s in enumerate(latency.calibration_structures(names))})
    out = {}
    with torch.no_grad():
        for label, ratios in structures.items():
            with structure_as(model.resources.supernet, ratios):
                out[label] = model.ms().item()
    return out


def test_the_reported_timings_fit_a_negative_smallest_structure_and_are_refused_uncached(cache, supernet):
    resources = ResourceModel(supernet, IMGSZ)
    geometries = latency.conv_geometries(supernet, resources.imgsz)
    unchecked = latency.measure_table(resources, geometries, "k", StagedBackend(reported))
    assert predictions(latency.LatencyModel(resources, unchecked, StagedBackend()))["smallest"] < 0  # as reported

    backend = StagedBackend(reported)
    with pytest.raises(DMSError) as refused:
        latency.attach_latency(resources, backend)
    message = str(refused.value)
    assert "\n" not in message and "too busy to time latency reliably" in message, message
    assert "quiet machine" in message and "resource=gflops" in message and "latency_refresh=True" in message
    assert "smallest structure" in message, message  # the plausibility rule, not the full-model error, caught it
    assert backend.model_calls == latency.MEASURE_TRIES * CALLS  # timed again before refusing
    assert not list(cache.glob("*.json")) and not latency._TABLES  # never cached
    assert resources.latency is None  # nor left attached


def test_disturbed_timings_are_timed_again_and_the_accepted_table_predicts_positive(cache, supernet, warnings):
    resources = ResourceModel(supernet, IMGSZ)
    backend = StagedBackend(first_table(reported))
    model = latency.attach_latency(resources, backend)
    assert backend.model_calls == 2 * CALLS
    assert len(warnings) == 1 and "not used" in warnings[0] and "smallest structure" in warnings[0], warnings
    figures = predictions(model)
    assert all(ms > 0 for ms in figures.values()), figures
    assert figures["smallest"] < figures["0.25"] < figures["0.75"] < figures["calibration 0"]
    (cached,) = cache.glob("*.json")
    assert latency.LatencyTable(**json.loads(cached.read_text())) == model.table
    assert len(model.table.calibration) == 2 + latency.CALIBRATION_RANDOM
    assert all(len(t) == latency.CALIBRATION_ROUNDS for t in model.table.calibration)


def test_repeat_timings_that_disagree_are_timed_again(cache, supernet, warnings):
    """The first round of the first table runs 4 times slower: its repeat timings differ by 120% of their median
    (the kept lowest figures would fit well: the spread alone rejects it)."""
    slow_round = first_table(lambda call, uniform, clean: clean * 4 if call < CALLS // 2 else clean)
    backend = StagedBackend(slow_round)
    model = latency.attach_latency(ResourceModel(supernet, IMGSZ), backend)
    assert backend.model_calls == 2 * CALLS
    assert len(warnings) == 1 and "repeat timings of the calibration's full model differ by 120%" in warnings[0]
    assert latency._implausible(model, latency.conv_geometries(supernet, (IMGSZ, IMGSZ))) is None


def test_noise_that_persists_in_the_spread_is_refused(cache, supernet):
    backend = StagedBackend(lambda call, uniform, clean: clean * (4 if (call // (CALLS // 2)) % 2 == 0 else 1.0))
    with pytest.raises(DMSError, match=r"^DMS latency: the machine is too busy.*repeat timings.*re-times\)$"):
        latency.attach_latency(ResourceModel(supernet, IMGSZ), backend)
    assert not list(cache.glob("*.json"))


def implausible_variants(model: latency.LatencyModel, geometries) -> dict[str, dict]:
    """Cached tables a busy machine could have left, each with what `_implausible` must name."""
    table = model.table
    names = list(model.resources.supernet.keep_ratio_masks())
    with torch.no_grad():
        raw_full = model.raw().item()
        with structure_as(model.resources.supernet, dict.fromkeys(names, 0.0)):
            raw_small = model.raw().item()
    full = table.alpha + table.beta * raw_full  # the full model kept where it is, the smallest sent to -0.1 ms
    q = raw_small / raw_full
    alpha = (-0.1 - full * q) / (1 - q)
    stem = 0  # the first convolution, in every structure
    macs = geometries[stem].features()[1]
    falling = [list(c) for c in table.coefficients]  # the stem slower at lower width, dominating the sum
    falling[stem] = [10 * raw_full, -10 * raw_full / (2 * macs), 0.0]
    zeroed = [list(c) for c in table.coefficients]
    zeroed[stem] = [0.0, 0.0, 0.0]
    return {
        "not physical": {"beta": -table.beta},
        "smallest structure": {"alpha": alpha, "beta": (full - alpha) / raw_full},
        "repeat timings": {"calibration": [[1.0, 4.0]] + table.calibration[1:]},
        f"convolution {model.resources.supernet.sites[stem].path} is fitted at 0 ms": {"coefficients": zeroed},
        "does not grow": {"coefficients": falling},
        "predicts the full model at": {"alpha": table.alpha + table.measured_full_ms * 0.5},
    }


def test_every_implausible_cached_table_is_named_and_timed_again(cache, supernet, warnings, monkeypatch):
    resources = ResourceModel(supernet, IMGSZ)
    good = latency.attach_latency(resources, StagedBackend())
    geometries = latency.conv_geometries(supernet, (IMGSZ, IMGSZ))
    assert latency._implausible(good, geometries) is None
    (cached,) = cache.glob("*.json")
    for reason, change in implausible_variants(good, geometries).items():
        bad = latency.LatencyModel(resources, latency.LatencyTable(**{**json.loads(cached.read_text()), **change}),
                                   good.backend)
        problem = latency._implausible(bad, geometries)
        assert problem and reason in problem and "\n" not in problem, (reason, problem)
        if reason == "smallest structure":
            assert abs(bad.calibration_error()) < latency.CALIBRATION_TOLERANCE  # the old check let it through
        cached.write_text(json.dumps({**json.loads(cached.read_text()), **change}))
        monkeypatch.setattr(latency, "_TABLES", {})  # a new process
        backend = StagedBackend()
        again = latency.attach_latency(ResourceModel(supernet, IMGSZ), backend)
        assert backend.model_calls == CALLS and reason in warnings[-1] and "cached table" in warnings[-1]
        assert again.table == good.table and latency.LatencyTable(**json.loads(cached.read_text())) == good.table


def test_a_table_cached_before_its_timings_were_kept_is_still_read(cache, supernet):
    resources = ResourceModel(supernet, IMGSZ)
    good = latency.attach_latency(resources, StagedBackend())
    (cached,) = cache.glob("*.json")
    old = {k: v for k, v in json.loads(cached.read_text()).items() if k != "calibration"}
    cached.write_text(json.dumps(old))
    latency._TABLES.clear()
    backend = StagedBackend()
    table = latency.attach_latency(ResourceModel(supernet, IMGSZ), backend).table
    assert backend.model_calls == 0 and table.calibration == [] and table.coefficients == good.table.coefficients


def test_a_final_measurement_over_the_budget_warns_and_is_recorded_and_plotted(cache, supernet, warnings, tmp_path,
                                                                               figures):
    """As reported: predicted about 5.49 ms, measured 9.29 ms, budget 6.50 ms."""
    resources = ResourceModel(supernet, IMGSZ)
    model = latency.attach_latency(resources, StagedBackend(exported_ms=9.29))
    record = latency.final_latency(model, tmp_path / "pruned.pt", (IMGSZ, IMGSZ), 6.5, fit_ms=6.2)
    assert record["over_budget"] is True and record["measured_ms"] == 9.29 and record["budget_ms"] == 6.5
    assert record["fit_measured_ms"] == 6.2 and "onnx" not in record
    assert len(warnings) == 1 and "measured 9.290 ms, budget 6.500 ms" in warnings[0], warnings
    assert "+42.9% over the budget" in warnings[0] and "fit measured 6.200 ms" in warnings[0], warnings
    json.dumps(record)  # search.json's latency record

    under = latency.final_latency(model, tmp_path / "pruned.pt", (IMGSZ, IMGSZ), 10.0)
    assert under["over_budget"] is False and len(warnings) == 1

    log = SearchLog(tmp_path, "latency")
    for step, value in enumerate((8.0, 7.0, 5.49)):
        log.record(step, 0, value, 6.5, 0.1)
    log.end_epoch()
    (tmp_path / "search.json").write_text(json.dumps({"fit_iteration": 1, "latency": record}))
    plot_search(log.path, tmp_path / "search.png", 6.5)
    ax = figures[-1].axes[0]
    points = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert points["measured, pruned.pt (staged)"] == ([2], [9.29]) and points["measured at the fit"] == ([1], [6.2])
    assert "searched structure (hard masks, predicted)" in points
    locator = ax.xaxis.get_major_locator()
    assert isinstance(locator, MaxNLocator) and all(float(t).is_integer() for t in locator.tick_values(0, 2))
    assert np.all(np.isfinite(ax.get_lines()[0].get_ydata()))
