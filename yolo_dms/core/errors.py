"""Errors that describe a user mistake; the CLI prints them as one line instead of a traceback."""


class DMSError(Exception):
    """Base class for problems the user can fix: bad files, bad arguments, unsupported models."""


class ModelSourceError(DMSError):
    """A model path that does not exist, cannot be read, or holds no YOLO detection model."""


class UnsupportedModelError(DMSError):
    """The model has a layer or setting the supernet cannot search or prune exactly."""


def first_line(error: BaseException) -> str:
    """An exception's first non-empty line: Ultralytics' messages often go on with hints over several lines."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
