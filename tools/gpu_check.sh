#!/usr/bin/env bash
# The GPU check of issue 24, in one call on a bare machine with one NVIDIA GPU (under 8 minutes on an H200):
#   bash tools/gpu_check.sh              install, search-vs-plain step timing, two end-to-end searches, stock val
#   bash tools/gpu_check.sh --tensorrt   then TensorRT FP16 engines of the supernet and of pruned.pt at 50% GFLOPs
#                                        (divisor 8 and 32), timed at batch 1 and 32, speed-up beside GFLOPs ratio
#   bash tools/gpu_check.sh --your-model issue 26's "your model" at 640 px: the third party's YOLOv8s
#                                        (python tools/real_data.py first) fine-tuned on DATA= (default: generated
#                                        data), then pruned to 50% by every arm of the benchmark, one seed
#   bash tools/gpu_check.sh --cpu-smoke  the same steps at tiny sizes on the CPU, to check the script itself
#                                        (with --your-model as a second argument: that protocol at tiny sizes)
# Every figure is one line starting with 'GPU_CHECK'; the lines are also written to $OUT/gpu_check.txt (or
# ./gpu_check.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
REPORT="${OUT:-.}/gpu_check.txt"
: > "$REPORT"
say() { echo "GPU_CHECK $*" | tee -a "$REPORT"; }

if [[ "$MODE" == "--cpu-smoke" ]]; then
    DEVICE=cpu AMP=False SIZE=64 S_BATCH=4 N_BATCH=8 ITERS=3 EPOCHS=1 TRAIN=32 VAL=8 BACKEND=onnxruntime
else
    DEVICE=0 AMP=True SIZE=640 S_BATCH=16 N_BATCH=64 ITERS=20 EPOCHS=2 TRAIN=256 VAL=64 BACKEND=torch
fi

if [[ ! -x .venv/bin/yolo-dms ]]; then
    start=$SECONDS
    bash setup.sh
    say "install: $((SECONDS - start)) s"
fi
PY=.venv/bin/python
YD=.venv/bin/yolo-dms
YOLO=.venv/bin/yolo
$PY -c "import torch; print('GPU_CHECK device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')" \
    | tee -a "$REPORT"
WORK="$(mktemp -d)"
DATA="${DATA:-$($PY tools/make_demo_data.py root="$WORK/data" n_train=$TRAIN n_val=$VAL imgsz=$SIZE | tail -1)}"

# "Your model": start from a model trained on the data, prune it to 50% with every arm (the fine-tune and each arm
# get YM_EPOCHS epochs; the searching arms fix their structure after YM_SEARCH of them)
if [[ "$MODE" == "--your-model" || "${2:-}" == "--your-model" ]]; then
    [[ "$MODE" == "--cpu-smoke" ]] && YM_EPOCHS=2 YM_SEARCH=1 || YM_EPOCHS=${YM_EPOCHS:-20} YM_SEARCH=${YM_SEARCH:-5}
    start=$SECONDS
    $YOLO train model=datasets/real/fall_yolov8s.pt data="$DATA" epochs=$YM_EPOCHS imgsz=$SIZE batch=$S_BATCH \
        device=$DEVICE amp=$AMP workers=4 seed=0 plots=False project="$WORK/runs" name=start > "$WORK/start.log" 2>&1 \
        || { tail -20 "$WORK/start.log"; say "your model: starting fine-tune FAILED"; exit 1; }
    say "your model: starting model fine-tuned in $((SECONDS - start)) s: $(grep -E '^\s+all ' "$WORK/start.log" | tail -1)"
    start=$SECONDS
    $YD benchmark model="$WORK/runs/start/weights/best.pt" data="$DATA" target=0.5 epochs=$YM_EPOCHS \
        search_epochs=$YM_SEARCH imgsz=$SIZE batch=$S_BATCH seeds=0 device=$DEVICE workers=4 latency_runs=0 \
        overhead=False arms=reference,dms,dms_kd,taylor_uniform,magnitude_uniform out="$WORK/your_model" \
        > "$WORK/your_model.log" 2>&1 || { tail -20 "$WORK/your_model.log"; say "your model: benchmark FAILED"; exit 1; }
    say "your model: benchmark in $((SECONDS - start)) s"
    grep -E '^\| ' "$WORK/your_model/benchmark.md" | tee -a "$REPORT"
    say "done"
    exit 0
fi

# 1. One search step against one plain step of the same supernet, interleaved (median of ITERS)
for args in "model=yolov8s.yaml batch=$S_BATCH" "model=yolov8n.yaml batch=$N_BATCH"; do
    # shellcheck disable=SC2086
    line="$($PY tools/search_overhead.py $args imgsz=$SIZE iters=$ITERS warmup=5 device=$DEVICE amp=$AMP keep=0.5 \
            | tail -1)"
    say "step timing: $line"
done

# 2. End-to-end searches: GFLOPs budget with AMP, then a latency budget timed on the training device
common="data=$DATA epochs=$EPOCHS imgsz=$SIZE batch=$S_BATCH device=$DEVICE amp=$AMP workers=2 plots=False"
search() {  # name, extra arguments...
    local name=$1; shift
    local start=$SECONDS
    # shellcheck disable=SC2086
    $YD search model=yolov8s.yaml $common project="$WORK/runs" name="$name" "$@" > "$WORK/$name.log" 2>&1 \
        || { tail -20 "$WORK/$name.log"; say "search $name: FAILED"; return 1; }
    say "search $name: $((SECONDS - start)) s; $($PY -c "
import json, sys
s = json.load(open('$WORK/runs/$name/search.json'))
lat = s.get('latency') or {}
print(f\"{s['final']['gflops']:.4g} GFLOPs for a budget of {s['budget']['value']:.4g} {s['budget']['unit']}, fit factor \"
      f\"{s['fit_factor']:.4f}\" + (f\", latency predicted {lat['predicted_ms']:.3f} ms, measured {lat['measured_ms']:.3f} ms\"
      if lat else ''))")"
    local val
    val="$($YOLO val model="$WORK/runs/$name/pruned.pt" data="$DATA" imgsz=$SIZE device=$DEVICE plots=False \
           project="$WORK/val" name="$name" 2>&1 | grep -E '^\s+all ' | tail -1)"
    say "stock val of $name/pruned.pt: $val"
}
search gflops target=0.5
search latency resource=latency latency_backend=$BACKEND target=0.7

# 3. TensorRT FP16: measured speed-up of pruned.pt against the supernet, beside their GFLOPs ratio
if [[ "$MODE" == "--tensorrt" ]]; then
    .venv/bin/pip install -q tensorrt
    for divisor in 8 32; do
        $YD search model=yolov8s.yaml $common project="$WORK/runs" name="trt$divisor" target=0.5 divisor=$divisor \
            > "$WORK/trt$divisor.log" 2>&1 || { tail -20 "$WORK/trt$divisor.log"; exit 1; }
    done
    $PY - "$WORK" "$SIZE" <<'EOF' | tee -a "$REPORT"
import sys, time
from pathlib import Path

import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

work, size = Path(sys.argv[1]), int(sys.argv[2])
supernet = work / "supernet.pt"
torch.save({"model": DetectionModel("yolov8s.yaml", nc=5, verbose=False).half(), "train_args": {}}, supernet)


def engine_ms(weights: Path, batch: int) -> float:
    engine = YOLO(str(weights)).export(format="engine", half=True, imgsz=size, batch=batch, device=0)
    model = YOLO(engine, task="detect")
    x = torch.rand(batch, 3, size, size, device="cuda")
    for _ in range(10):
        model(x, verbose=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(50):
        model(x, verbose=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / 50 * 1000


base_gflops = get_flops(YOLO(str(supernet)).model, size)
for divisor in (8, 32):
    pruned = work / "runs" / f"trt{divisor}" / "pruned.pt"
    ratio = base_gflops / get_flops(YOLO(str(pruned)).model, size)
    for batch in (1, 32):
        full, small = engine_ms(supernet, batch), engine_ms(pruned, batch)
        print(f"GPU_CHECK TensorRT FP16 divisor={divisor} batch={batch}: supernet {full:.3f} ms, pruned {small:.3f} ms, "
              f"speed-up {full / small:.2f}x for a GFLOPs ratio of {ratio:.2f}x (end to end, with pre/postprocess)")
EOF
fi
say "done"
