"""One fit rule everywhere, fits that say when they give up or when the search did not reach its budget, and a
latency calibration checked before it is used or cached. Timings are computed by `CountedBackend`, not measured,
so every figure is deterministic and a busy machine can be staged."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.utils import LOGGER

import yolo_dms.core.latency as latency
from yolo_dms import Supernet
from yolo_dms.core.budget import figure_range, hard_figure, hard_gflops, resolve_budget, step_cost, structure_as
from yolo_dms.core.fit import Fit, fit_structure
from yolo_dms.core.errors import DMSError
from yolo_dms.core.latency_backends import LatencyBackend
from yolo_dms.core.resources import ResourceModel, deployed_gflops
from yolo_dms.search.settings import SearchSettings
from yolo_dms.core.model_io import load_supernet

IMGSZ = 64
OVERHEAD_MS = 0.2  # what a whole model costs besides its convolutions (the calibration's offset)
CURVE = 40.0  # ms per GFLOP squared a whole model adds: a curve the calibrated line predicts too low for small
# structures, so a fit on the prediction alone measures over a budget of 40% (a latency fit holds the measured one)


class CountedBackend(LatencyBackend):
    """A backend whose timings are counted: a convolution costs its MACs, a whole model its deployed GFLOPs plus
    `OVERHEAD_MS`, `CURVE` and `extra` (so the calibrated prediction is close but not exact). Whole-model timings
    for which `busy(call)` holds are four times slower, as on a machine busy with other work."""

    name = "counted"

    def __init__(self, busy=lambda call: False, extra: float = 0.0) -> None:
        self.busy, self.extra, self.model_calls = busy, extra, 0

    def identity(self) -> list[str]:
        return [self.name]

    def time_conv(self, geometry, runs: int = 0) -> float:
        return geometry.features()[1] * 1e-7

    def time_model(self, model, imgsz, runs: int = 0) -> float:
        return self._counted(deployed_gflops(model, imgsz))

    def time_supernet(self, supernet: Supernet, imgsz) -> float:
        """`time_model` of the supernet's pruned structure without pruning it: the resource model's GFLOPs are
        the pruned model's (the exactness contract)."""
        return self._counted(hard_gflops(ResourceModel(supernet, imgsz)))

    def _counted(self, gflops: float) -> float:
        ms = OVERHEAD_MS + gflops * 10 + CURVE * gflops**2 + self.extra
        self.model_calls += 1
        return ms * 4 if self.busy(self.model_calls - 1) else ms


CALIBRATION_CALLS = latency.CALIBRATION_ROUNDS * (2 + latency.CALIBRATION_RANDOM)  # whole models per measurement


def busy_after_the_full_model(measurements: int):
    """The first `measurements` calibrations time the full model idle and every other structure busy."""
    return lambda call: call < measurements * CALIBRATION_CALLS and call % (CALIBRATION_CALLS // 2) != 0


def logged(level: int):
    """Messages Ultralytics' LOGGER writes at `level` or above during the test."""
    records: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: records.append(record.getMessage())
    LOGGER.addHandler(handler)
    yield records
    LOGGER.removeHandler(handler)


@pytest.fixture
def warnings():
    yield from logged(logging.WARNING)


@pytest.fixture
def messages():
    yield from logged(logging.INFO)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty latency cache, no table remembered from another test, and structures timed by `CountedBackend`
    without pruning them."""
    monkeypatch.setattr(latency, "CACHE_DIR", tmp_path / "latency")
    monkeypatch.setattr(latency, "_TABLES", {})
    monkeypatch.setattr(latency, "time_structure", lambda net, imgsz, backend: backend.time_supernet(net, imgsz))
    return tmp_path / "latency"


def supernet_and_resources(divisor: int = 8) -> tuple[Supernet, ResourceModel]:
    supernet = load_supernet("yolov8n.yaml", nc=3, divisor=divisor, hidden_divisor=divisor)
    return supernet, ResourceModel(supernet, IMGSZ)


def test_a_disturbed_calibration_is_measured_again_and_only_the_good_table_is_cached(cache, warnings):
    _, resources = supernet_and_resources()
    backend = CountedBackend(busy_after_the_full_model(1))
    model = latency.attach_latency(resources, backend)
    assert backend.model_calls == 2 * CALIBRATION_CALLS  # measured twice
    assert len(warnings) == 1 and "busy machine" in warnings[0] and "Measuring it again" in warnings[0], warnings
    assert abs(model.calibration_error()) <= latency.CALIBRATION_TOLERANCE
    (cached,) = cache.glob("*.json")
    assert latency.LatencyTable(**json.loads(cached.read_text())) == model.table


def test_one_measurement_and_one_announcement_per_table_and_process(cache, messages):
    """A search's preflight and its trainer both attach the latency model: measured once, announced once."""
    supernet, resources = supernet_and_resources()
    backend = CountedBackend()
    latency.attach_latency(resources, backend)
    latency.attach_latency(ResourceModel(supernet, IMGSZ), backend)
    assert backend.model_calls == CALIBRATION_CALLS
    assert sum("budgets in ms" in m for m in messages) == 1, messages
    assert any("convolutions timed in" in m and "whole models (calibration) in" in m for m in messages), messages


def test_a_calibration_disturbed_every_time_is_refused_and_not_cached(cache):
    _, resources = supernet_and_resources()
    with pytest.raises(DMSError, match=r"busy machine.*latency_refresh=True"):
        latency.attach_latency(resources, CountedBackend(busy_after_the_full_model(latency.MEASURE_TRIES)))
    assert not list(cache.glob("*.json"))


def test_a_disturbed_cached_table_is_measured_again_and_refresh_always_measures(cache, warnings, monkeypatch):
    supernet, resources = supernet_and_resources()
    good = latency.attach_latency(resources, CountedBackend()).table
    (cached,) = cache.glob("*.json")
    cached.write_text(json.dumps({**json.loads(cached.read_text()), "alpha": 0.0, "beta": good.beta * 3}))
    monkeypatch.setattr(latency, "_TABLES", {})  # a new process
    backend = CountedBackend()
    assert latency.attach_latency(ResourceModel(supernet, IMGSZ), backend).table == good
    assert backend.model_calls == CALIBRATION_CALLS and "cached table" in warnings[0], warnings
    assert json.loads(cached.read_text())["beta"] == good.beta
    monkeypatch.setattr(latency, "_TABLES", {})
    refreshed = CountedBackend()
    latency.attach_latency(ResourceModel(supernet, IMGSZ), refreshed, refresh=True)
    assert refreshed.model_calls == CALIBRATION_CALLS


def test_target_is_a_fraction_of_the_measured_supernet(cache):
    supernet, resources = supernet_and_resources()
    model = latency.attach_latency(resources, CountedBackend())
    model.table.alpha += 0.1 * model.table.measured_full_ms  # a prediction 10% off what was measured
    settings = SearchSettings.from_arguments({"resource": "latency", "target": 0.7})
    budget = resolve_budget(supernet, resources, settings.resource, settings.budget)[2]
    assert budget == pytest.approx(0.7 * model.table.measured_full_ms)
    assert budget != pytest.approx(0.7 * figure_range(supernet, resources, "latency")[1])


def test_info_shares_of_latency_sum_to_the_predicted_total(cache):
    from yolo_dms.core.report import layer_table

    supernet, _ = supernet_and_resources()
    with structure_as(supernet, dict.fromkeys(supernet.keep_ratio_masks(), 0.6)):
        table = layer_table(supernet, IMGSZ, latency=CountedBackend())
    rows, total = table.splitlines()[1:-1], table.splitlines()[-1]
    layers = sum(float(row.split()[-1]) for row in rows)
    predicted = float(re.search(r"([0-9.]+) ms predicted", total).group(1))
    assert layers == pytest.approx(predicted, abs=0.002 * len(rows)), table  # rounded to 3 decimals per row
    assert predicted > OVERHEAD_MS  # the offset is in the total, so the shares hold it too


def test_a_fit_that_gives_up_over_its_budget_warns(cache, warnings):
    supernet, resources = supernet_and_resources()
    smallest, _ = figure_range(supernet, resources)
    fit = fit_structure(supernet, resources, smallest * 0.9)
    assert fit.over_budget
    fit.log()
    assert any("gave up" in w and "over the budget" in w for w in warnings), warnings

    backend = CountedBackend()
    latency.attach_latency(resources, backend)
    budget = 0.6 * resources.latency.table.measured_full_ms
    backend.extra = budget  # from now on no structure measures under the budget
    fit = fit_structure(supernet, resources, budget, "latency")
    assert fit.over_budget and fit.measured_ms > budget
    fit.log()
    assert any("still measured above it" in w for w in warnings), warnings


def test_the_rescale_warning_allows_one_divisor_step_of_the_costliest_layer():
    """divisor=32 moves the structure in coarse steps: a search 1.8% off its budget reached it, whatever factor
    the fit needed; one 50% off did not."""
    supernet, resources = supernet_and_resources(divisor=32)
    step = step_cost(supernet, resources)
    assert step > step_cost(*supernet_and_resources(divisor=8))
    masks = supernet.keep_ratio_masks()  # the gradient estimate is one real step of some layer
    full = hard_figure(resources)
    moves = []
    for name, mask in masks.items():
        if mask.divisor == 32 and mask.size > 32:
            with structure_as(supernet, {**dict.fromkeys(masks, 1.0), name: (mask.size - 32) / mask.size}):
                moves.append(full - hard_figure(resources))
    assert max(moves) == pytest.approx(step, rel=0.3)
    budget = full * 0.5
    assert not Fit("gflops", budget, budget * 1.018, 0.93, budget * 0.99, step).warnings()
    assert "uniform rescale" in Fit("gflops", budget, budget * 1.5, 0.7, budget * 0.99, step).warnings()[0]


def _search(tmp_path: Path, name: str, epochs: int, settings: dict, monkeypatch, stop_after: int | None = None):
    """A latency search in this process on `CountedBackend`, stopped after `stop_after` epochs if given."""
    import yolo_dms.search.session as session_module
    import yolo_dms.search.trainer as trainer_module
    from yolo_dms.tools.demo_data import make_dataset

    backend = CountedBackend()
    monkeypatch.setattr(session_module, "latency_backend", lambda *_: backend)  # every search session's backend
    data = make_dataset(tmp_path / "data", n_train=16, n_val=8, imgsz=IMGSZ, seed=7)
    overrides = {"model": "yolov8n.yaml", "data": str(data), "epochs": epochs, "imgsz": IMGSZ, "batch": 8,
                 "workers": 0, "device": "cpu", "plots": False, "seed": 0, "project": str(tmp_path / "runs"),
                 "name": name}
    trainer = trainer_module.DMSTrainer(
        overrides=overrides, settings=SearchSettings.from_arguments({"resource": "latency", **settings})
    )
    if stop_after:
        trainer.add_callback("on_fit_epoch_end", lambda t: setattr(t, "stop", t.epoch + 1 >= stop_after))
    trainer.train()
    return trainer, tmp_path / "runs" / name


def _same_pruned_model(a: Path, b: Path) -> None:
    """Two pruned.pt files hold the same architecture and the same weights."""
    from yolo_dms.core.model_io import load_checkpoint_model

    first, second = load_checkpoint_model(a).state_dict(), load_checkpoint_model(b).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_search_stopped_early_is_fitted_by_the_one_rule_and_says_so(tmp_path, cache, warnings, monkeypatch):
    """Stopped after one of two epochs, before its refine phase: the export fits the EMA structure (the fit
    recorded in search.json, with the rescale warning), and the fit of `yolo-dms export` and of the trainer's
    refine phase give the same structure."""
    from yolo_dms.core.export import export_searched
    from yolo_dms.search.export import export_checkpoint
    from yolo_dms.core.latency import same_resources
    from yolo_dms.core.model_io import load_checkpoint_model

    trainer, run = _search(tmp_path, "stopped", 2, {"target": 0.4}, monkeypatch, stop_after=1)
    summary = json.loads((run / "search.json").read_text())
    batches = len(trainer.train_loader)
    assert summary["fit_iteration"] == trainer.session.iteration == batches  # fitted at export, after epoch 1
    assert summary["fit_factor"] == trainer.session.fit["factor"] < 1 and summary["before_fit"] is not None, summary
    assert summary["latency"]["predicted_ms"] == pytest.approx(trainer.session.fit["after"])  # of pruned.pt, as fitted
    assert any("uniform rescale" in w for w in warnings), warnings
    searched = yaml.safe_load((run / "searched.yaml").read_text())

    export_checkpoint(run / "weights" / "last.pt", out=tmp_path / "exported")  # `yolo-dms export`
    assert yaml.safe_load((tmp_path / "exported" / "searched.yaml").read_text()) == searched
    _same_pruned_model(run / "pruned.pt", tmp_path / "exported" / "pruned.pt")

    supernet = load_checkpoint_model(run / "weights" / "last.pt")  # the refine phase's fit of the same structure
    trainer.session.fit_structure(supernet, same_resources(trainer.session.resources, supernet))
    export_searched(supernet, tmp_path / "refit", IMGSZ)
    _same_pruned_model(run / "pruned.pt", tmp_path / "refit" / "pruned.pt")


def test_export_of_a_fitted_search_reproduces_its_pruned_model(tmp_path, cache, monkeypatch):
    """A search that fitted and froze its structure is exported as it is: `yolo-dms export` writes its
    pruned.pt again, weight for weight, with no second fit."""
    from yolo_dms.search.export import export_checkpoint

    trainer, run = _search(tmp_path, "frozen", 2, {"target": 0.4, "refine": 0.4}, monkeypatch)
    fit = trainer.session.fit
    assert fit and fit["iteration"] < trainer.session.iteration  # fitted in the refine phase
    export_checkpoint(run / "weights" / "last.pt", out=tmp_path / "exported")
    _same_pruned_model(run / "pruned.pt", tmp_path / "exported" / "pruned.pt")
