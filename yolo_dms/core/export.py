"""Exporting a supernet's searched architecture: `searched.yaml` and `pruned.pt` for stock Ultralytics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ultralytics.utils.checks import check_imgsz

from yolo_dms.core.budget import fit_structure, resolve_budget
from yolo_dms.core.errors import DMSError, first_line
from yolo_dms.core.latency import resource_model
from yolo_dms.core.latency_backends import latency_backend
from yolo_dms.core.model_io import load_search_checkpoint, write_checkpoint, write_model_yaml
from yolo_dms.core.prune import prune, searched_yaml
from yolo_dms.core.resources import deployed_gflops
from yolo_dms.core.supernet import Supernet

YAML_HEADER = """Searched by yolo-dms (Differentiable Model Scaling). A standard Ultralytics model YAML:
  yolo train model=searched.yaml data=...   retrains from scratch without yolo-dms installed."""


@dataclass(frozen=True)
class ExportResult:
    """Where the searched model went, and what it costs."""

    yaml_path: Path
    weights_path: Path
    gflops: float
    params: int


def export_searched(supernet: Supernet, directory: str | Path, imgsz: int = 640) -> ExportResult:
    """Write `searched.yaml` and `pruned.pt` (weights of the kept channels and blocks) into `directory`."""
    directory = Path(directory)
    pruned = prune(supernet).eval()
    yaml_path = write_model_yaml(searched_yaml(supernet), directory / "searched.yaml", YAML_HEADER)
    weights_path = write_checkpoint(pruned, directory / "pruned.pt", {"imgsz": imgsz})
    return ExportResult(
        yaml_path, weights_path, deployed_gflops(pruned, imgsz), sum(p.numel() for p in pruned.parameters())
    )


def export_checkpoint(path: str | Path, out: str | Path | None = None, imgsz: int | None = None) -> ExportResult:
    """Export from any search checkpoint (finished or stopped), fitted under the budget it was searching for.

    A structure the search already fitted is exported as it is (the same pruned.pt the search wrote); one stopped
    before its fit is fitted by the search's own rule (`budget.fit_structure`), and the fit is reported. Output
    goes to `out`, by default the checkpoint's run directory (`runs/detect/dms/<name>/`).
    """
    supernet, _ = load_search_checkpoint(path, "export takes runs/detect/dms/<name>/weights/last.pt of a search")
    args = getattr(supernet, "args", None)
    saved_imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    try:  # one square side, as the search trained at: the longer side of [h, w], a multiple of the stride
        imgsz = check_imgsz(imgsz or saved_imgsz or 640, stride=supernet.stride, min_dim=1, max_dim=1)
    except (TypeError, ValueError) as e:
        raise DMSError(first_line(e)) from None
    supernet.eval()
    settings = supernet.dms_settings
    if not (getattr(supernet, "search_state", None) or {}).get("fit"):
        backend = latency_backend(settings.latency_backend, None)  # the search's backend, on this machine's device
        resources = resource_model(supernet, imgsz, settings.resource, backend)
        budget = resolve_budget(supernet, resources, settings)[2]
        fit_structure(supernet, resources, budget, settings.resource).log()
    path = Path(path)
    directory = Path(out) if out else (path.parent.parent if path.parent.name == "weights" else path.parent)
    return export_searched(supernet, directory, imgsz)
