"""Exporting a supernet's searched architecture: `searched.yaml` and `pruned.pt` for stock Ultralytics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from yolo_dms.core.model_io import write_checkpoint, write_model_yaml
from yolo_dms.core.prune import prune, searched_yaml
from yolo_dms.core.resources import deployed_gflops, deployed_params
from yolo_dms.core.supernet import Supernet

YAML_HEADER = """Searched by yolo-dms (Differentiable Model Scaling). A standard Ultralytics model YAML:
  yolo train model=searched.yaml data=...   retrains from scratch without yolo-dms installed."""


@dataclass(frozen=True)
class ExportResult:
    """Where the searched model went, and what it costs as deployed (`resources.deployed_model`)."""

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
    return ExportResult(yaml_path, weights_path, deployed_gflops(pruned, imgsz), deployed_params(pruned))
