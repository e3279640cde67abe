"""Search settings: DMS's own knobs, with defaults in `cfg/default.yaml`, validated with clear errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_args, get_type_hints

import yaml

from yolo_dms.core.errors import DMSError
from yolo_dms.core.handlers.base import default_hidden_divisor
from yolo_dms.core.latency_backends import BACKENDS
from yolo_dms.core.resource_registry import RESOURCES

DEFAULTS_FILE = Path(__file__).parents[1] / "cfg" / "default.yaml"
RECIPES_DIR = DEFAULTS_FILE.parent / "search"  # packaged recipes, taken by name: cfg=pretrained-short


ACCEPTED = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}  # a type: the values it takes
A_TYPE = {float: "a number", int: "an integer", str: "a word", bool: "True or False"}


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
    params: float | None = None
    latency: float | None = None
    resource: str = "gflops"
    latency_backend: str = "auto"
    latency_refresh: bool = False  # measure the latency table again instead of reading its cache
    divisor: int = 8
    resource_weight: float = 1.0
    structure_lr: float | None = None  # None: sized to the run (schedule.SearchSchedule.auto_structure_lr)
    structure_optimizer: str = "adam"
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
        """Defaults from `cfg/default.yaml` overridden by the user's values; one budget, relative or absolute.

        `target=` is a fraction of the supernet's figure of `resource`; `gflops=` or `params=` is an absolute
        budget that also names the resource. Two budgets, or an absolute budget of another resource than
        `resource=`, are contradictions.
        """
        unknown = sorted(set(arguments) - cls.names())
        if unknown:
            raise SettingsError(f"unknown DMS setting '{unknown[0]}'; valid: {', '.join(sorted(cls.names()))}")
        values = {**load_defaults()["dms"], **arguments}
        absolute = [k for k in RESOURCES if arguments.get(k) is not None]
        if len(absolute) > 1 or (absolute and arguments.get("target") is not None):
            given = [f"{k}=" for k in ("target", *RESOURCES) if arguments.get(k) is not None]
            raise SettingsError(f"give one budget, not {' and '.join(given)}")
        if absolute:
            if arguments.get("resource", absolute[0]) != absolute[0]:
                raise SettingsError(f"resource={arguments['resource']} contradicts the budget {absolute[0]}=")
            values["target"], values["resource"] = None, absolute[0]
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values the search cannot work with, naming the setting."""
        self.check_types()
        if self.resource not in RESOURCES:
            raise SettingsError(f"resource must be one of {', '.join(RESOURCES)}, got {self.resource}")
        if self.target is None and getattr(self, self.resource) is None:
            raise SettingsError(
                "give a budget: target= (a fraction of the supernet's figure) or one of "
                + ", ".join(f"{name}=" for name in RESOURCES)
            )
        if self.target is not None and not (0 < self.target <= 1) or _nan(self.target):
            raise SettingsError(
                f"target must lie in (0, 1] (a fraction of the supernet's {self.resource}), got {self.target}"
            )
        for name in RESOURCES:
            value = getattr(self, name)
            if value is not None and (not value > 0 or _nan(value)):
                raise SettingsError(f"{name} must be positive, got {value}")
        for name in ("resource_weight", "width_lam", "depth_lam"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.structure_lr is not None and not self.structure_lr >= 0:
            raise SettingsError(f"structure_lr must be 0 (structure frozen) or positive, got {self.structure_lr}")
        if not isinstance(self.divisor, int) or self.divisor < 8 or self.divisor % 8:
            raise SettingsError(
                "divisor must be a multiple of 8 (parse_model rounds layer widths up to multiples of 8), "
                f"got {self.divisor}"
            )
        if self.latency_backend not in BACKENDS:
            raise SettingsError(f"latency_backend must be one of {', '.join(BACKENDS)}, got {self.latency_backend}")
        if self.structure_optimizer not in ("adam", "sgd"):
            raise SettingsError(f"structure_optimizer must be adam or sgd, got {self.structure_optimizer}")
        if not 0 < self.target_schedule <= 1:
            raise SettingsError(f"target_schedule must lie in (0, 1], got {self.target_schedule}")
        if not 0 <= self.refine < 1 or self.target_schedule + self.refine > 1:
            raise SettingsError(
                f"refine must lie in [0, 1) and leave room for the target schedule (target_schedule + refine <= 1), "
                f"got refine={self.refine}, target_schedule={self.target_schedule}"
            )
        if not 0 < self.importance_decay < 1:
            raise SettingsError(f"importance_decay must lie in (0, 1), got {self.importance_decay}")

    def check_types(self) -> None:
        """Refuse a value of the wrong type (`target=abc`, `divisor=8.0`) before any range check compares it."""
        for name, hint in get_type_hints(type(self)).items():
            allowed, value = get_args(hint) or (hint,), getattr(self, name)
            if value is None and type(None) in allowed:
                continue
            expected = next(t for t in allowed if t is not type(None))
            if isinstance(value, bool) is not (expected is bool) or not isinstance(value, ACCEPTED[expected]):
                raise SettingsError(f"{name} must be {A_TYPE[expected]}, got {value!r}")

    @property
    def hidden_divisor(self) -> int:
        """The multiple CSP hidden widths keep: the divisor under a latency budget or a divisor above 8 (runtimes
        lay channels out in blocks, and an unaligned width measures slower than its FLOPs say), else 1 (a
        GFLOPs or parameter search settles on its budget in finer steps)."""
        return self.divisor if RESOURCES[self.resource].measured else default_hidden_divisor(self.divisor)

    def budget(self, supernet_figure: float) -> float:
        """The budget in the unit of `budget.figure` (GFLOPs, millions of parameters, ms): the absolute budget, or
        `target` times the supernet's figure."""
        if self.target is not None:
            return self.target * supernet_figure
        return RESOURCES[self.resource].from_setting(getattr(self, self.resource))


def _nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)
