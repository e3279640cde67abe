"""The benchmark, same as `yolo-dms benchmark`; `merge` joins runs made in parallel into one table.

    python tools/benchmark.py model=yolov8n.yaml epochs=20 search_epochs=10 imgsz=128 seeds=0,1 n_train=256
    python tools/benchmark.py merge out=runs/dms/benchmark   # every */**/benchmark.csv under out
"""

import sys

from yolo_dms.cli import main, parse_arguments

if __name__ == "__main__":
    if sys.argv[1:2] == ["merge"]:
        from yolo_dms.tools.benchmark import merge_results

        print(merge_results(**parse_arguments(sys.argv[2:], {"out"})))
        sys.exit(0)
    sys.exit(main(["benchmark", *sys.argv[1:]]))
