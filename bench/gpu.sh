#!/usr/bin/env bash
# The accelerator machine's check (issue 23), one prepared script, run once whenever the
# device tool's `status` says a machine can be had:
#
#   here:   bash bench/gpu_wheels.sh          (the wheels the machine's image lacks, in .whl/)
#   there:  bash bench/gpu.sh                 (device run, carry [".whl"], timeout_s 590)
#
# It installs the project without dependencies over the machine's own CUDA torch, then
#   1. bench/loss.py --device cuda                           every loss, forward + backward
#   2. bench/train_step.py --device cuda --preset r50-fpn --amp
#                                        a training iteration, against torchvision's own
#                                        Mask R-CNN R50-FPN on the same batches
#   3. gumbel reproduce --only table3 --seeds 3 --jobs N --device cuda, for what is left of
#      GPU_BUDGET_S (default 480 s; killed runs resume on a later machine only if OUT is kept)
# and prints one summary. Logs and JSON go to $OUT (the device tool's folder) or /tmp/gpu-out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
BUDGET=${GPU_BUDGET_S:-480}
JOBS=${GPU_JOBS:-6}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
export PYTHONUNBUFFERED=1

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"

timeout 90 python3 bench/loss.py --device cuda --json > "$OUT/loss.json" 2> "$OUT/loss.err"
echo "loss bench: rc=$?"
timeout 150 python3 bench/train_step.py --device cuda --preset r50-fpn --amp --rounds 10 \
    --json > "$OUT/train_step.json" 2> "$OUT/train_step.err"
echo "train_step bench: rc=$?"

REPRO=/tmp/gpu-reproduce
t0=$(date +%s)
timeout "$(left)" gumbel reproduce --out "$REPRO" --only table3 --seeds 3 --jobs "$JOBS" \
    --device cuda --no-progress --json > "$OUT/reproduce.json" 2> "$OUT/reproduce.err"
rc=$?
echo "reproduce: rc=$rc after $(( $(date +%s) - t0 )) s (124: stopped at the budget)"
cp "$REPRO/timings.json" "$OUT/timings.json" 2>/dev/null
cp "$REPRO/tables/table3.md" "$OUT/table3.md" 2>/dev/null

python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
print("== summary ==")
print((out / "gpu.txt").read_text().strip())
loss = load("loss.json")
if loss:
    print("loss bench:", json.dumps(loss)[:1500])
step = load("train_step.json")
if step:
    for name, s in step["seconds_per_iter"].items():
        print(f"train step {name:12s} {s:.4f} s/iter  {step['images_per_second'][name]:.1f} img/s"
              f"  x{step['ratio_to_softmax'][name]:.3f} of softmax")
timings = load("timings.json") or {}
print(f"reproduce: {len(timings)} runs finished:", json.dumps(timings))
table = out / "table3.md"
if table.exists():
    print(table.read_text())
PY
tail -3 "$OUT/reproduce.err" "$OUT/loss.err" "$OUT/train_step.err" 2>/dev/null
