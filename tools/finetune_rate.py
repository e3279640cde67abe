"""How the fine-tuning rate after a search changes the benchmark's arms: each seed's `pruned.pt` of a finished
`yolo-dms benchmark` run fine-tuned again with `optimizer=AdamW lr0=<lr0>` (everything else as the benchmark
trains), scored by the benchmark's own `validate`, beside the same arm's stock fine-tuning from `benchmark.csv`.

    python tools/finetune_rate.py benchmark=runs/dms/benchmark model=best.pt data=data.yaml epochs=20 \
        search_epochs=8 imgsz=256 batch=16 lr0=0.0002 seeds=0,1,2

Arms: `dms` (the search's `pruned.pt`, fine-tuned `epochs - search_epochs`), `taylor_uniform` (the frozen-structure
search's) and `reference` (`model` itself, fine-tuned `epochs`). Stock `optimizer=auto` picks AdamW at
`0.002 * 5 / (4 + nc)` for runs under 10,000 iterations: 0.002 for one class, 0.000714 for ten. Writes
`finetune_rate.csv` (one row per arm and seed) and `finetune_rate.md` in `out`; a rerun keeps the rows it has.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from ultralytics import YOLO

from yolo_dms.cli import listed, script_arguments
from yolo_dms.tools.evaluation import validate

DEFAULTS = {"benchmark": "", "model": "", "data": "", "epochs": 20, "search_epochs": 8, "imgsz": 128, "batch": 16,
            "lr0": 0.0002, "seeds": "0,1,2", "arms": "dms,taylor_uniform,reference", "workers": 0, "device": "cpu",
            "out": "runs/dms/finetune_rate"}
SEARCH_OF = {"dms": "search", "taylor_uniform": "search_taylor"}  # arm -> the benchmark's search run it starts from


def fine_tune(arm: str, seed: int, args: dict) -> dict:
    """Fine-tune one arm's starting weights at `lr0` and score its last weights as the benchmark does."""
    if arm == "reference":
        weights, epochs = Path(args["model"]), args["epochs"]
    else:
        weights = Path(args["benchmark"]) / f"seed{seed}" / SEARCH_OF[arm] / "pruned.pt"
        epochs = args["epochs"] - args["search_epochs"]
    name, out = f"{arm}_s{seed}", Path(args["out"])
    YOLO(str(weights)).train(data=args["data"], epochs=epochs, imgsz=args["imgsz"], batch=args["batch"], seed=seed,
                             workers=args["workers"], device=args["device"], plots=False, val=False,
                             optimizer="AdamW", lr0=args["lr0"], project=str(out), name=name, exist_ok=True)
    scores, _ = validate(out / name / "weights" / "last.pt", Path(args["data"]), args["imgsz"], args["device"])
    return {"arm": arm, "seed": seed, "lr0": args["lr0"], "map50_95": scores["map50_95"], "map50": scores["map50"]}


def stock_scores(benchmark: Path) -> dict[tuple[str, int], float]:
    """mAP50-95 of each (arm, seed) in the benchmark's own CSV: its stock fine-tuning."""
    with open(benchmark / "benchmark.csv", newline="") as f:
        return {(row["arm"], int(row["seed"])): float(row["map50_95"]) for row in csv.DictReader(f)}


def summarize(rows: list[dict], stock: dict[tuple[str, int], float]) -> str:
    """Per arm: each seed at `lr0`, mean ± population std, and the stock fine-tuning's mean ± std."""
    seeds = sorted({row["seed"] for row in rows})
    lines = [f"| arm | {' | '.join(f'seed {s}' for s in seeds)} | mean ± std | with stock fine-tuning |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for arm in dict.fromkeys(row["arm"] for row in rows):
        maps = {row["seed"]: row["map50_95"] for row in rows if row["arm"] == arm}
        stocks = [stock[(arm, s)] for s in maps if (arm, s) in stock]
        cells = " | ".join(f"{maps[s]:.4f}" if s in maps else "-" for s in seeds)
        before = f"{statistics.mean(stocks):.4f} ± {statistics.pstdev(stocks):.4f}" if stocks else "-"
        lines.append(f"| {arm} | {cells} | {statistics.mean(maps.values()):.4f} ± "
                     f"{statistics.pstdev(maps.values()):.4f} | {before} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    args = script_arguments(argv, DEFAULTS, {"benchmark": "a finished benchmark's out", "model": "its starting .pt",
                                             "data": "data.yaml"})
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    table = out / "finetune_rate.csv"
    rows = []
    if table.is_file():
        with open(table, newline="") as f:
            rows = [{**row, "seed": int(row["seed"]), **{k: float(row[k]) for k in ("lr0", "map50_95", "map50")}}
                    for row in csv.DictReader(f)]
    for seed in (int(s) for s in listed(args["seeds"])):
        for arm in listed(args["arms"]):
            if not any(row["arm"] == arm and row["seed"] == seed for row in rows):
                rows.append(fine_tune(arm, seed, args))
                with open(table, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
    summary = summarize(rows, stock_scores(Path(args["benchmark"])))
    (out / "finetune_rate.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main(sys.argv[1:])
