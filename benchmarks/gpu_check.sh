#!/usr/bin/env bash
# The GPU measurements of docs/PERFORMANCE.md in one go, for a lent GPU machine (torch + Triton
# present, no internet). Steps run in the order given, each bounded by its own timeout; logs go
# to $OUT (or /tmp/gpu_check). Packages the machine lacks travel as wheels in .whl/ (see the
# device notes); the repository is used from the working tree (PYTHONPATH), not installed.
#
#     bash benchmarks/gpu_check.sh bg:compile_tests kernels eager sampling      # then: compiled
#     bash benchmarks/gpu_check.sh scaleout                   # DDP vs FSDP2 via the CLI, SD-1.5 size
#     bash benchmarks/gpu_check.sh memory                     # peak training memory per configuration
#
# A step written bg:NAME runs in the background (correctness tests only: they compete for the
# host); the next timed step (eager, sampling, compiled) waits for it first.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader
python3 -c "import torch, triton, diffusers; print('torch', torch.__version__, 'triton', triton.__version__,
'diffusers', diffusers.__version__, torch.cuda.get_device_name())"

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -vE "Warning|warn\(|^\s*$" "$OUT/$name.log" | tail -25
  echo "=== $name: rc $rc in $((SECONDS - start)) s"
}

BENCH="--device cuda --dtype bfloat16"
run() {  # run NAME: one named step
  case $1 in
    kernels) step kernels 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_shift.py ;;
    eager) step eager 90 python3 benchmarks/shift_overhead.py $BENCH --reps 12 --clips 1,4 ;;
    sampling) step sampling 300 python3 benchmarks/sample_speed.py --model sd15 $BENCH --reps 5 --compile ;;
    compiled) step compiled 300 python3 benchmarks/shift_overhead.py $BENCH --reps 12 --skip-toy --modes compiled \
      --compile-clips 4 --compile-passes fwd_bwd ;;
    scaleout) step scaleout 420 python3 benchmarks/scaleout.py --size sd15 --steps 20 --out "$OUT" ;;
    memory) step memory 560 python3 benchmarks/memory.py --size sd15 --steps 12 --limit-s 120 --out "$OUT/memory" ;;
    compile_tests) step compile_tests 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_compile.py ;;
    *) echo "unknown step $1" ;;
  esac
}

for name in "$@"; do
  case $name in
    bg:*) run "${name#bg:}" > "$OUT/${name#bg:}.bg" 2>&1 & ;;
    eager|sampling|compiled|scaleout|memory) wait; run "$name" ;;
    *) run "$name" ;;
  esac
done
wait
cat "$OUT"/*.bg 2>/dev/null
echo "=== summary"
grep -hE "ratio|seconds_per_video|warm-up|passed|failed|error|^(ddp|fsdp) " "$OUT"/*.log | grep -v Warning | tail -40
