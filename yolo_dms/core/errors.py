"""Errors that describe a user mistake; the CLI prints them as one line instead of a traceback."""

from __future__ import annotations

import shlex
from pathlib import Path


class DMSError(Exception):
    """Base class for problems the user can fix: bad files, bad arguments, unsupported models."""


class ModelSourceError(DMSError):
    """A model path that does not exist, cannot be read, or holds no YOLO detection model."""


class UnsupportedModelError(DMSError):
    """The model has a layer or setting the supernet cannot search or prune exactly."""


def first_line(error: BaseException) -> str:
    """An exception's first non-empty line: Ultralytics' messages often go on with hints over several lines."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search, knowing where its last checkpoint is: the command line prints one line saying so
    and how to continue, instead of the interrupt's traceback (Python callers get a `KeyboardInterrupt`)."""

    def __init__(self, save_dir: str | Path, last: str | Path) -> None:
        self.save_dir, self.last = Path(save_dir), Path(last)
        super().__init__(self.message())

    def message(self) -> str:
        if not self.last.is_file():
            return f"search interrupted before its first checkpoint: nothing to resume in {self.save_dir}"
        last = shlex.quote(str(self.last))
        return (f"search interrupted; its last checkpoint is {self.last}. Continue it: yolo-dms search resume={last}"
                f"  (or export what it has found so far: yolo-dms export model={last})")
