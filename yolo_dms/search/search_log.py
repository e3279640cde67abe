"""The search's own record: a per-step trace (`search.csv`), per-epoch columns for `results.csv`, and plots.

`search.png` shows the searched resource against the scheduled target over the run (under a latency budget, the
predicted milliseconds, and the measured ones as points: the fit's measurement and `pruned.pt`'s, from
`search.json`); `structure.png` shows every layer's width and every CSP layer's depth in the supernet and in the
searched model.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch

from yolo_dms.core.handlers.registry import stock_type
from yolo_dms.core.masks import DepthMask, WidthMask
from yolo_dms.core.resource_registry import RESOURCES
from yolo_dms.core.supernet import Supernet


FLUSH_ROWS = 64  # device rows copied to the host in one transfer this often (and at every epoch end)


class SearchLog:
    """Collects (iteration, epoch, resource, target, resource loss) rows and writes them out once per epoch.

    The resource column is named after the budget (`gflops`, `params`, `latency`); it and the target are in the
    resource's file unit (`Resource.unit`): GFLOPs, parameters (not millions), ms.

    A structure step's figures are device tensors: `record` keeps them on the device (no read, which on a GPU would
    wait for the queue to drain every batch) and every `FLUSH_ROWS` steps, and before an epoch's rows are written,
    copies all kept ones to the host in one transfer. A step recorded as not `valid` (an overflow: skipped) leaves
    no row, as a skipped step never did.
    """

    def __init__(self, save_dir: str | Path, resource: str = "gflops", every: int = 1,
                 flush_rows: int = FLUSH_ROWS) -> None:
        self.path = Path(save_dir) / "search.csv"
        self.columns = ("iteration", "epoch", resource, "target", "resource_loss")
        self.unit = RESOURCES[resource]
        self.every = max(1, every)
        self.flush_rows = max(1, flush_rows)
        self.pending: list[tuple] = []
        self.epoch_losses: list[float] = []
        self._queued: list[tuple] = []  # (iteration, epoch, target, figures): floats, or a device tensor to read

    def record(self, iteration: int, epoch: int, value, target: float, resource_loss, valid=True) -> None:
        """Keep every `every`-th step for the trace, and every step for the epoch mean; `value` and `target` in the
        budget's unit. `value`, `resource_loss` and `valid` may be (0-d) device tensors, read later in a batch."""
        if all(not isinstance(x, torch.Tensor) for x in (value, resource_loss, valid)):
            figures = (float(value), float(resource_loss), float(bool(valid)))
        else:
            parts = [x if isinstance(x, torch.Tensor) else None for x in (value, resource_loss, valid)]
            device = next(p for p in parts if p is not None).device
            figures = torch.stack([
                (x if isinstance(x, torch.Tensor) else torch.tensor(float(x), device=device)).detach().double()
                for x in (value, resource_loss, valid)
            ])
        self._queued.append((iteration, epoch, target, figures))
        if len(self._queued) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Copy the queued rows to the host (one transfer for all of their device figures) and keep them."""
        queued, self._queued = self._queued, []
        tensors = [f for *_, f in queued if isinstance(f, torch.Tensor)]
        read = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist()) if tensors else iter(())
        for iteration, epoch, target, figures in queued:
            value, resource_loss, valid = next(read) if isinstance(figures, torch.Tensor) else figures
            if not valid:
                continue
            self.epoch_losses.append(resource_loss)
            if iteration % self.every == 0:
                value, target = self.unit.absolute(value), self.unit.absolute(target)
                self.pending.append((iteration, epoch + 1, round(value, 6), round(target, 6), round(resource_loss, 6)))

    def end_epoch(self) -> float:
        """Append this epoch's rows to `search.csv`; returns the epoch's mean resource loss."""
        self.flush()
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.columns)
            writer.writerows(self.pending)
        mean = sum(self.epoch_losses) / max(1, len(self.epoch_losses))
        self.pending, self.epoch_losses = [], []
        return mean


def structure_columns(supernet: Supernet) -> dict[str, float]:
    """Per-epoch `results.csv` columns: kept blocks of every CSP stage."""
    return {
        f"dms/blocks_layer{layer_index(name)}": float(mask.hard_count())
        for name, mask in supernet.masks.items()
        if isinstance(mask, DepthMask)
    }


def measured_points(summary: dict, last_iteration: int) -> list[tuple[int, float, str]]:
    """The measured latencies `search.json`'s `summary` holds, as (iteration, ms, label) points: the fitted
    structure as the fit timed it (at the fit's iteration) and `pruned.pt` timed after the search (at the end)."""
    latency = summary.get("latency") or {}
    points = []
    if latency.get("fit_measured_ms") is not None and summary.get("fit_iteration") is not None:
        points.append((int(summary["fit_iteration"]), float(latency["fit_measured_ms"]), "measured at the fit"))
    if latency.get("measured_ms") is not None:
        backend = f" ({latency['backend']})" if latency.get("backend") else ""
        points.append((last_iteration, float(latency["measured_ms"]), f"measured, pruned.pt{backend}"))
    return points


def plot_search(
    csv_path: str | Path, out: str | Path, budget: float, measured: list[tuple[int, float, str]] | None = None
) -> Path:
    """The searched resource of the hard structure and the scheduled target over the search, on an axis in the
    budget's unit (`budget` is in it), labelled by the resource `search.csv` names. Under a latency budget the
    measured milliseconds are points beside the predicted curve: `measured` (iteration, ms, label), by default
    `measured_points` of the `search.json` beside `search.csv`, if there is one. Iterations are whole numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    csv_path = Path(csv_path)
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        resource = reader.fieldnames[2]
        rows = list(reader)
    unit = RESOURCES[resource]
    steps = [int(r["iteration"]) for r in rows]
    if measured is None:
        summary = csv_path.with_name("search.json")
        found = unit.measured and summary.is_file()
        measured = measured_points(json.loads(summary.read_text()), max(steps, default=0)) if found else []
    fig, ax = plt.subplots(figsize=(8, 4.5), tight_layout=True)
    predicted = ", predicted" if unit.measured else ""
    ax.plot(steps, [float(r[resource]) / unit.scale for r in rows], label=f"searched structure (hard masks{predicted})")
    ax.plot(steps, [float(r["target"]) / unit.scale for r in rows], "--", label="scheduled target")
    ax.axhline(budget, color="gray", linewidth=0.8, label=f"budget {budget:.3g}")
    for (iteration, value, label), marker in zip(measured, "os^v"):
        ax.plot([iteration], [value / unit.scale], marker, linestyle="none", markersize=7, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations: a short run gets no fractional ticks
    ax.set(xlabel="iteration", ylabel=unit.axis, title="DMS search: resources over the run (flat end: refine phase)")
    ax.legend()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return Path(out)


def layer_index(mask_name: str) -> int:
    """The index of the layer a mask belongs to: masks are named `l<layer index>`, then `_<part>` inside it."""
    return int(re.match(r"l(\d+)", mask_name)[1])


def layer_type_name(supernet: Supernet, mask_name: str) -> str:
    """The stock type of the layer a mask belongs to (`C3k2`, `C2PSA`, ...)."""
    return stock_type(supernet.model[layer_index(mask_name)]).__name__


def mask_label(supernet: Supernet, mask_name: str) -> str:
    """A mask in words for plots: `l2_hidden` is 'layer 2 C2f hidden', `l0` 'layer 0 Conv'."""
    part = mask_name.partition("_")[2].removesuffix("depth")
    return f"layer {layer_index(mask_name)} {layer_type_name(supernet, mask_name)} {part}".strip()


def plot_structure(supernet: Supernet, out: str | Path) -> Path:
    """Widths of every layer and depths of every CSP layer: supernet against searched model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    counts = supernet.hard_channel_counts()
    widths = [(n, m.size, counts[n]) for n, m in supernet.masks.items() if isinstance(m, WidthMask)]
    depths = [(n, m.size, m.hard_count()) for n, m in supernet.masks.items() if isinstance(m, DepthMask)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(widths) * 0.35), 8), tight_layout=True)
    for ax, items, what in ((top, widths, "channels"), (bottom, depths, "blocks")):
        x = range(len(items))
        ax.bar(x, [full for _, full, _ in items], color="lightgray", label="supernet")
        ax.bar(x, [kept for _, _, kept in items], color="tab:blue", label="searched")
        labels = [mask_label(supernet, name) for name, _, _ in items]
        ax.set_xticks(list(x), labels, rotation=90, fontsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole channels and blocks
        ax.set_ylabel(what)
        ax.legend()
    csp_types = " / ".join(dict.fromkeys(layer_type_name(supernet, name) for name, _, _ in depths))
    top.set_title("Width per layer (output, and hidden widths of CSP layers)")
    bottom.set_title(f"Depth per CSP layer ({csp_types})" if csp_types else "Depth per CSP layer (none searched)")
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return Path(out)
