"""Search settings: DMS's own knobs, with defaults in `cfg/default.yaml`, validated with clear errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from yolo_dms.errors import DMSError

DEFAULTS_FILE = Path(__file__).parent / "cfg" / "default.yaml"


class SettingsError(DMSError):
    """A search setting is missing, malformed or out of range."""


def load_defaults() -> dict:
    """The packaged defaults: {'dms': {...}, 'train': {...}}."""
    return yaml.safe_load(DEFAULTS_FILE.read_text())


@dataclass
class SearchSettings:
    """What DMS needs beyond Ultralytics' train arguments. Travels with the supernet, so resume and DDP keep it."""

    target: float | None = 0.5
    gflops: float | None = None
    resource_weight: float = 1.0
    structure_lr: float | None = None  # None: sized to the run (schedule.SearchSchedule.auto_structure_lr)
    target_schedule: float = 0.6
    refine: float = 0.2
    width_lam: float = 1.0
    depth_lam: float = 4.0
    importance_decay: float = 0.99

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_arguments(cls, arguments: dict) -> SearchSettings:
        """Defaults from `cfg/default.yaml` overridden by the user's values; `gflops` replaces `target`."""
        values = {**load_defaults()["dms"], **arguments}
        if arguments.get("gflops") is not None and arguments.get("target") is not None:
            raise SettingsError("give either target= (a fraction of the supernet's GFLOPs) or gflops=, not both")
        if arguments.get("gflops") is not None:
            values["target"] = None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values the search cannot work with, naming the setting."""
        if self.gflops is None and self.target is None:
            raise SettingsError("give a budget: target= (fraction of the supernet's GFLOPs) or gflops=")
        if self.target is not None and not (0 < self.target <= 1) or _nan(self.target):
            raise SettingsError(f"target must lie in (0, 1] (a fraction of the supernet's GFLOPs), got {self.target}")
        if self.gflops is not None and (not self.gflops > 0 or _nan(self.gflops)):
            raise SettingsError(f"gflops must be positive, got {self.gflops}")
        for name in ("resource_weight", "width_lam", "depth_lam"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.structure_lr is not None and not self.structure_lr >= 0:
            raise SettingsError(f"structure_lr must be 0 (structure frozen) or positive, got {self.structure_lr}")
        if not 0 < self.target_schedule <= 1:
            raise SettingsError(f"target_schedule must lie in (0, 1], got {self.target_schedule}")
        if not 0 <= self.refine < 1 or self.target_schedule + self.refine > 1:
            raise SettingsError(
                f"refine must lie in [0, 1) and leave room for the target schedule (target_schedule + refine <= 1), "
                f"got refine={self.refine}, target_schedule={self.target_schedule}"
            )
        if not 0 < self.importance_decay < 1:
            raise SettingsError(f"importance_decay must lie in (0, 1), got {self.importance_decay}")

    def final_gflops(self, supernet_gflops: float) -> float:
        """The budget in GFLOPs: `gflops`, or `target` times the supernet's GFLOPs."""
        return self.gflops if self.gflops is not None else self.target * supernet_gflops


def _nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)
