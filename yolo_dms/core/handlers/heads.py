"""`HeadMask` at the path search checkpoints record it under: a checkpoint pickles its supernet, masks
included, and unpickling imports each class from its recorded module. It is defined in `core/masks.py`.
"""

from yolo_dms.core.masks import HeadMask

__all__ = ["HeadMask"]
