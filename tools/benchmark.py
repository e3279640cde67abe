"""DMS against uniform scaling and magnitude pruning at equal GFLOPs; same as `yolo-dms benchmark`.

    python tools/benchmark.py model=yolov8n.yaml epochs=20 search_epochs=10 imgsz=128 seeds=0,1 n_train=256
"""

import sys

from yolo_dms.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
