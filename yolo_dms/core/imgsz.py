"""Image sizes as Ultralytics' trainer makes them: each side rounded up to a multiple of the model's largest stride
(at least one stride), with its warning; a size that is not positive, or not a size at all, is a user mistake."""

from __future__ import annotations

import ast

from ultralytics.utils.checks import check_imgsz

from yolo_dms.core.errors import DMSError, first_line


def model_stride(model) -> int:
    """The stride sizes are rounded to, as `BaseTrainer` takes it: the model's largest, and at least 32."""
    stride = getattr(model, "stride", None)
    return max(int(stride.max()) if stride is not None else 32, 32)


def checked_imgsz(imgsz, stride: int, square: bool = True) -> int | list[int]:
    """`imgsz` (a side, an [h, w] pair, or either as a string) rounded up as `yolo train` rounds it: one side, the
    longer, when `square` (training sizes), else [h, w]. Non-positive or malformed sizes raise `DMSError`."""
    given = imgsz
    if isinstance(imgsz, str):  # read here, not by check_imgsz: 8.4.0 lets literal_eval's own error through
        try:
            imgsz = ast.literal_eval(imgsz.strip())
        except (ValueError, SyntaxError):
            pass
    sides = imgsz if isinstance(imgsz, list | tuple) else [imgsz]
    if not sides or not all(isinstance(side, int | float) for side in sides):
        raise DMSError(f"imgsz={given} is not a valid image size: give a side in pixels, e.g. imgsz=640, or [h, w]")
    if any(isinstance(side, bool) or side <= 0 for side in sides):
        raise DMSError(f"imgsz={imgsz} is not an image size: give a positive side in pixels, e.g. imgsz=640")
    try:
        size = check_imgsz(imgsz, stride=stride, min_dim=1 if square else 2, max_dim=1 if square else 2, floor=stride)
    except (TypeError, ValueError) as e:
        raise DMSError(first_line(e)) from None
    return size
