"""The DMS paper's YOLO claim in miniature: a supernet larger than YOLOv8n, searched from random initialization
to a stock model's GFLOPs, its `searched.yaml` retrained from scratch, against that stock model from scratch.

    python tools/paper_claim.py data=/work/fashion128/data.yaml imgsz=128 epochs=30 search_epochs=15 seeds=0,1

Arms, per seed and per stock model (`stocks`, default yolov8n and yolo11n):
- `searched`: `yolo-dms expand` of `supernet` (width x`width`, depth x`depth`), `yolo-dms search` from scratch
  under `gflops=` the stock model's GFLOPs at `imgsz` for `search_epochs`, then `searched.yaml` trained from
  scratch for `epochs` (the paper's protocol: the same retraining epochs as the stock model);
- `stock`: the stock YAML from scratch for `epochs`;
- `stock_long`: the stock YAML from scratch for `epochs + search_epochs` (equal total training epochs);
- `finetuned`: the search's own `pruned.pt` (its supernet weights at the searched structure) fine-tuned for
  `epochs` by `yolo train`: what `yolo-dms` hands a user, at the same total epochs as `stock_long`.

Every model is scored by stock Ultralytics validation of its final weights on the data's val split. Writes
`paper_claim.csv` (one row per arm, stock model and seed) and `paper_claim.md` (mean and std over seeds) in `out`.
Rerun with the same `out` to go on after an interruption: a finished search and the arms already in a seed's
`paper_claim_s<seed>.csv` are kept, not run again.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from ultralytics import YOLO

from yolo_dms import DMS
from yolo_dms.cli import listed, script_arguments
from yolo_dms.core.data import resolve_data
from yolo_dms.core.expand import expanded_yaml
from yolo_dms.core.model_io import build_task_model, write_model_yaml
from yolo_dms.core.resources import deployed_gflops

DEFAULTS = {"data": "", "imgsz": 128, "epochs": 30, "search_epochs": 15, "seeds": "0,1", "batch": 32,
            "supernet": "yolov8n.yaml", "width": 1.5, "depth": 2.0, "stocks": "yolov8n,yolo11n", "workers": 1,
            "device": "cpu", "out": "runs/dms/paper_claim"}


def train(model: str, epochs: int, seed: int, args: dict, name: str) -> dict:
    """Train `model` as `yolo train` does (a YAML from scratch, a .pt from its weights) and score its last
    weights: GFLOPs and mAP50-95."""
    yolo = YOLO(model)
    yolo.train(data=args["data"], epochs=epochs, imgsz=args["imgsz"], batch=args["batch"], seed=seed,
               workers=args["workers"], device=args["device"], project=args["out"], name=name, exist_ok=True,
               plots=False, pretrained=model.endswith(".pt"), val=False)  # only the last weights are scored
    return score(Path(args["out"]) / name / "weights" / "last.pt", args, name)


def score(weights: Path, args: dict, name: str) -> dict:
    """GFLOPs at `imgsz` and stock validation's mAP50-95 and mAP50 of `weights` on the data's val split."""
    last = YOLO(str(weights))
    metrics = last.val(data=args["data"], imgsz=args["imgsz"], batch=args["batch"], device=args["device"],
                       plots=False, project=args["out"], name=f"{name}_val", exist_ok=True)
    return {"gflops": deployed_gflops(last.model, args["imgsz"]), "map50_95": metrics.box.map,
            "map50": metrics.box.map50}


def run_seed(seed: int, args: dict) -> list[dict]:
    """Every arm of one seed, for every stock model."""
    out = Path(args["out"])
    supernet = write_model_yaml(expanded_yaml(args["supernet"], args["width"], args["depth"]),
                                out / "supernet.yaml", f"{args['supernet']} x{args['width']} wide, x{args['depth']} deep")
    rows, nc = read_rows(out / f"paper_claim_s{seed}.csv"), resolve_data(args["data"], "detect")["nc"]
    for stock in listed(args["stocks"]):
        search = out / f"search_{stock}_s{seed}"
        if not (search / "pruned.pt").is_file():
            budget = deployed_gflops(build_task_model(f"{stock}.yaml", nc), args["imgsz"])  # at the data's classes
            DMS(str(supernet)).search(
                data=args["data"], gflops=budget, epochs=args["search_epochs"], imgsz=args["imgsz"],
                batch=args["batch"], seed=seed, workers=args["workers"], device=args["device"], project=str(out),
                name=search.name, exist_ok=True, plots=False, val=False)
        arms = {
            "searched": (str(search / "searched.yaml"), args["epochs"]),
            "stock": (f"{stock}.yaml", args["epochs"]),
            "stock_long": (f"{stock}.yaml", args["epochs"] + args["search_epochs"]),
            "finetuned": (str(search / "pruned.pt"), args["epochs"]),
        }
        done = {row["arm"] for row in rows if row["stock"] == stock}
        for arm, (model, epochs) in arms.items():
            if arm not in done:
                scores = train(model, epochs, seed, args, f"{arm}_{stock}_s{seed}")
                rows.append({"arm": arm, "stock": stock, "seed": seed, "epochs": epochs, **scores})
                write_rows(rows, out / f"paper_claim_s{seed}.csv")
    return rows


def read_rows(path: Path) -> list[dict]:
    """A seed's rows written before an interruption, numbers as numbers."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{**row, "seed": int(row["seed"]), "epochs": int(row["epochs"]),
                 **{key: float(row[key]) for key in ("gflops", "map50_95", "map50")}} for row in csv.DictReader(f)]


def write_rows(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[dict]) -> str:
    """Mean and population std of mAP50-95 over seeds, per stock model and arm."""
    lines = ["| stock model | arm | GFLOPs | mAP50-95 (mean ± std) | seeds |", "|---|---|---|---|---|"]
    for stock in dict.fromkeys(r["stock"] for r in rows):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            group = [r for r in rows if r["stock"] == stock and r["arm"] == arm]
            if group:
                maps = [r["map50_95"] for r in group]
                lines.append(f"| {stock} | {arm} | {statistics.mean(r['gflops'] for r in group):.4g} | "
                             f"{statistics.mean(maps):.4f} ± {statistics.pstdev(maps):.4f} | {len(group)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    args = script_arguments(argv, DEFAULTS, {"data": "data.yaml"})
    Path(args["out"]).mkdir(parents=True, exist_ok=True)
    rows = [row for seed in listed(args["seeds"]) for row in run_seed(int(seed), args)]
    write_rows(rows, Path(args["out"]) / "paper_claim.csv")
    (Path(args["out"]) / "paper_claim.md").write_text(summarize(rows))
    print(summarize(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
