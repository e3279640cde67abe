"""The search's own record: a per-step trace (`search.csv`), per-epoch columns for `results.csv`, and plots.

`search.png` shows GFLOPs against the scheduled target over the run; `structure.png` shows every layer's
width and every C2f's depth in the supernet and in the searched model.
"""

from __future__ import annotations

import csv
from pathlib import Path

from yolo_dms.core.masks import DepthMask, WidthMask
from yolo_dms.core.supernet import Supernet


class SearchLog:
    """Collects (iteration, epoch, resource, target, resource loss) rows and writes them out once per epoch.

    The resource column is named after the budget: `gflops`, or `params` in millions.
    """

    def __init__(self, save_dir: str | Path, resource: str = "gflops", every: int = 1) -> None:
        self.path = Path(save_dir) / "search.csv"
        self.columns = ("iteration", "epoch", resource, "target", "resource_loss")
        self.every = max(1, every)
        self.pending: list[tuple] = []
        self.epoch_losses: list[float] = []

    def record(self, iteration: int, epoch: int, value: float, target: float, resource_loss: float) -> None:
        """Keep every `every`-th step for the trace, and every step for the epoch mean."""
        self.epoch_losses.append(resource_loss)
        if iteration % self.every == 0:
            self.pending.append((iteration, epoch + 1, round(value, 6), round(target, 6), round(resource_loss, 6)))

    def end_epoch(self) -> float:
        """Append this epoch's rows to `search.csv`; returns the epoch's mean resource loss."""
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
    """Per-epoch `results.csv` columns: kept blocks of every C2f stage."""
    return {
        f"dms/depth_{name.removesuffix('_depth')}": float(mask.hard_count())
        for name, mask in supernet.masks.items()
        if isinstance(mask, DepthMask)
    }


def plot_search(csv_path: str | Path, out: str | Path, budget: float) -> Path:
    """The searched resource of the hard structure and the scheduled target over the search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        reader = csv.DictReader(f)
        resource = reader.fieldnames[2]
        rows = list(reader)
    unit = "GFLOPs" if resource == "gflops" else "parameters (M)"
    steps = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), tight_layout=True)
    ax.plot(steps, [float(r[resource]) for r in rows], label="searched structure (hard masks)")
    ax.plot(steps, [float(r["target"]) for r in rows], "--", label="scheduled target")
    ax.axhline(budget, color="gray", linewidth=0.8, label=f"budget {budget:.3g}")
    ax.set(xlabel="iteration", ylabel=unit, title="DMS search: resources over the run (flat end: refine phase)")
    ax.legend()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return Path(out)


def plot_structure(supernet: Supernet, out: str | Path) -> Path:
    """Widths of every layer and depths of every C2f: supernet against searched model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = supernet.hard_channel_counts()
    widths = [(n, m.size, counts[n]) for n, m in supernet.masks.items() if isinstance(m, WidthMask)]
    depths = [(n, m.size, m.hard_count()) for n, m in supernet.masks.items() if isinstance(m, DepthMask)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(widths) * 0.35), 8), tight_layout=True)
    for ax, items, what in ((top, widths, "channels"), (bottom, depths, "blocks")):
        x = range(len(items))
        ax.bar(x, [full for _, full, _ in items], color="lightgray", label="supernet")
        ax.bar(x, [kept for _, _, kept in items], color="tab:blue", label="searched")
        ax.set_xticks(list(x), [name for name, _, _ in items], rotation=90, fontsize=7)
        ax.set_ylabel(what)
        ax.legend()
    top.set_title("Widths (output and C2f hidden) per layer")
    bottom.set_title("Depth per C2f stage")
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return Path(out)
