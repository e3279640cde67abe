"""A benchmark's arms against the stock family's curve from `tools/paper_claim.py`: the stock models trained from
scratch on the same data and image size, one point per stock model at its own GFLOPs (mean over seeds).

    python tools/plot_against_stock.py benchmark=docs/benchmark_fashion_yourmodel.csv \
        paper_claim=runs/dms/paper_claim/paper_claim.csv arm=stock_long out=docs/map_vs_gflops_fashion_stock.png

`arm` picks which of the paper claim's stock arms draws the curve (`stock`: its retraining epochs; `stock_long`:
those plus the search's). Drawn by the benchmark's own `plot`, so the arms look as in `map_vs_gflops.png`.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from yolo_dms.cli import script_arguments
from yolo_dms.tools.benchmark import plot

DEFAULTS = {"benchmark": "", "paper_claim": "", "arm": "stock_long", "out": "map_vs_gflops_stock.png"}


def stock_rows(paper_claim: Path, arm: str) -> list[dict]:
    """The paper claim's `arm` rows as the benchmark's `stock_<model>` rows (no ONNX timing)."""
    with open(paper_claim, newline="") as f:
        return [{"arm": f"stock_{row['stock']}", "target": 1.0, "seed": row["seed"], "task": "detect",
                 "gflops": row["gflops"], "map50_95": row["map50_95"], "onnx_ms": math.nan}
                for row in csv.DictReader(f) if row["arm"] == arm]


def main(argv: list[str]) -> None:
    args = script_arguments(argv, DEFAULTS, {"benchmark": "benchmark.csv", "paper_claim": "paper_claim.csv"})
    with open(args["benchmark"], newline="") as f:
        rows = [{**row, "onnx_ms": math.nan} for row in csv.DictReader(f)]  # on GFLOPs only: no stock timing
    stock = stock_rows(Path(args["paper_claim"]), args["arm"])
    if not stock:
        sys.exit(f"no '{args['arm']}' rows in {args['paper_claim']}")
    plot(rows + stock, Path(args["out"]))
    print(f"wrote {args['out']}")


if __name__ == "__main__":
    main(sys.argv[1:])
