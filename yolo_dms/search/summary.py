"""What a search found, for the user: `search.json`, `structure.png` and `search.png` in its run directory. The
search writes them at its end; `yolo-dms export` of a search checkpoint (finished or stopped) writes them again.

Units are named in the file: the budget and the figure before the fit in `budget.unit` (for a parameter budget a
count of parameters, like every `params`), `gflops` in GFLOPs, `*_ms` in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from yolo_dms.core.budget import hard_figure, hard_gflops, structure_as
from yolo_dms.core.export import ExportResult
from yolo_dms.core.latency import final_latency
from yolo_dms.core.resource_registry import RESOURCES
from yolo_dms.core.resources import ResourceModel
from yolo_dms.core.supernet import Supernet
from yolo_dms.search.search_log import plot_search, plot_structure
from yolo_dms.search.settings import SearchSettings


def final_figures(resources: ResourceModel, result: ExportResult) -> dict:
    """The exported structure's GFLOPs and parameters as deployed, counted on pruned.pt (`counted_as` says which
    figure: the fused model where `fuse()` drops training-only layers, as for YOLO26, else pruned.pt as stock
    `get_flops` counts it), and pruned.pt's own figures as saved (`*_training_graph`, equal where nothing is
    fused)."""
    saved_gflops, saved_params = resources.training_graph()
    return {
        "gflops": result.gflops,
        "params": result.params,
        "counted_as": resources.counted_as,
        "gflops_training_graph": saved_gflops,
        "params_training_graph": saved_params,
    }


def read_summary(save_dir: str | Path) -> dict:
    """The `search.json` of the search whose run directory is `save_dir`."""
    return json.loads((Path(save_dir) / "search.json").read_text())


def recommended_finetune(summary: dict) -> dict[str, object]:
    """The `yolo train` arguments a search's `summary` recommends for fine-tuning its pruned.pt (`finetune`);
    none for a search.json written by `yolo-dms export` or before they were recorded."""
    return summary.get("finetune") or {}


def write_search_outputs(
    save_dir: str | Path,
    supernet: Supernet,
    resources: ResourceModel,
    settings: SearchSettings,
    budget: float,
    result: ExportResult,
    fit: dict,
    source: str,
    total_iterations: int | None = None,
    structure_lr: float | None = None,
    finetune: dict | None = None,
) -> dict:
    """Write `search.json` (returned as a dict) and the plots for the exported structure of `supernet` (its
    current one, at `resources`' image size): `budget` in the resource's unit, `fit` the fit's record (its factor
    and the figure before it; empty when the search reached the budget without one). `search.png` needs the
    search's `search.csv` in `save_dir`. `finetune`: the `yolo train` arguments recommended for fine-tuning
    pruned.pt (the search's optimizer at a tenth of its rate), null when not known (`yolo-dms export` of a
    checkpoint)."""
    save_dir = Path(save_dir)
    unit = RESOURCES[settings.resource]
    with structure_as(supernet, dict.fromkeys(supernet.keep_ratio_masks(), 1.0)):
        full = {"gflops": hard_gflops(resources), "params": round(hard_figure(resources, "params") * 1e6)}
    before = fit.get("before")
    summary = {
        "units": {"gflops": "GFLOPs", "params": "parameters", "*_ms": "milliseconds"},  # the figures' keys
        "budget": {"resource": settings.resource, "value": unit.absolute(budget), "unit": unit.unit,
                   "imgsz": resources.imgsz[0]},
        "supernet": full,
        "final": final_figures(resources, result),
        "before_fit": None if before is None else unit.absolute(before),
        "fit_factor": fit.get("factor", 1.0),
        "fit_iteration": fit.get("iteration"),
        "total_iterations": total_iterations,
        "structure_lr": structure_lr,
        "source": source,
        "finetune": finetune or None,
    }
    if resources.latency is not None:  # pruned.pt timed end to end (a warning when over the budget)
        summary["latency"] = final_latency(resources.latency, result.weights_path, resources.imgsz, budget,
                                           fit.get("measured_ms"))
    (save_dir / "search.json").write_text(json.dumps(summary, indent=2))
    plot_structure(supernet, save_dir / "structure.png")
    if (save_dir / "search.csv").exists():  # with the measured latency points of the search.json just written
        plot_search(save_dir / "search.csv", save_dir / "search.png", budget)
    return summary
