#!/usr/bin/env bash
# The GPU check of rsgh, in one call on a machine with one CUDA GPU (under 8 minutes there):
#   1. tests/test_cuda.py on the GPU: lock-step groups against lone runs, determinism, resume, the
#      compiled step (CUDA graphs) against the eager one;
#   2. benchmarks/train_throughput.py on the GPU: groups of 1 to 384 models (eager), 2 and 128 compiled;
#   3. one E2 run at 64 bits at the patents' settings (SGH + R-SGH as one lock-step group, 200
#      epochs, compiled step), end to end (decoding, GIST, training, evaluations), with its wall time;
#   4. one retrieval page of the book re-executed as `make reproduce DEVICE=cuda` executes it
#      (benchmarks/reproduction_speed.py: MNIST pixels, the quick profile at 4 epochs), on the GPU and
#      then on the CPU (16 workers), with both wall times and their ratio;
#   5. a 4-trial study (benchmarks/study_speed.py: R-SGH on MNIST, 3 epochs a trial, 4 workers) on the GPU
#      and then on the CPU, with both wall times and their ratio.
# Each step has its own time limit, writes its log beside the others, and the summary (key=value
# lines) goes to summary.txt and stdout. Results go under $OUT (when set) or a new temporary folder.
# STEPS (default 1,2,3,4,5) picks the steps to run, e.g. STEPS=4,5 to run the page and the study again.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU at toy sizes (the E2 step on MNIST
#                                            # pixels, 60 steps; the page, 40 steps a model, and the study,
#                                            # 2 trials of one epoch, once each, on the CPU, eager)
#
# The E2 run needs CIFAR-10 under $RSGH_DATA (cifar-10-python.tar.gz or the JPEG copy
# cifar10-jpeg.tar.gz, 19 MB); without it that step is reported as skipped and the exit status is 3.
# Exit status: 0 when every step passed, 1 when one failed or ran out of time, 3 when the E2 run had
# no data. PYTHON (default .venv/bin/python, else python3) is the interpreter.
set -u
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
RESULTS=${OUT:-$(mktemp -d)}/gpu_check
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.txt
: > "$SUMMARY"
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, for the determinism test
export PYTHONUNBUFFERED=1
STATUS=0

STEPS=",${STEPS:-1,2,3,4,5},"
wanted() { case "$STEPS" in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
if [ $DRY = 1 ]; then
  DEVICE=cpu; T_TESTS=170; T_BENCH=60; T_E2=170; T_PAGE=240; T_STUDY=240
  BENCH=(--seconds 0.3 --sizes 1,2,6 --compiled-sizes "")
  # toy sizes: MNIST pixels instead of CIFAR-10 GIST (GIST of 60,000 images alone takes minutes on a CPU)
  E2=(--set iterations=60 --set eval_every=30 --set compile_step=false --set dataset=mnist --set features=pixels
      --set feature_scaling=none)
  # the page: 40 steps of each model at 8 bits (its data, baselines, test-query reports and figures as they
  # are); the study: 2 trials of one epoch, eager, a sampler seed whose first two trials need no feature scaling
  PAGE=(--epochs 1 --set "bits=[8]" --set compile_step=false --workers 2
        --set "overrides={dataset: mnist, features: pixels, feature_scaling: none, iterations: 40, eval_every: 20}")
  STUDY=(--trials 2 --max-epochs 1 --workers 2 --eager --seed 44)
  COMPARE=()  # on the CPU only: the step once
else
  DEVICE=cuda; T_TESTS=90; T_BENCH=150; T_E2=220; T_PAGE=240; T_STUDY=240
  BENCH=(--seconds 1 --sizes 1,2,8,32,128,384 --compiled-sizes 2,128)
  E2=(--set compile_step=true)
  PAGE=(--epochs 4 --workers "$(nproc)")
  STUDY=(--trials 4 --max-epochs 3 --workers 4)
  COMPARE=(cpu)  # then again on the CPU, in this call
fi

note() { echo "$1" | tee -a "$SUMMARY"; }

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it with its log, note its status and seconds
  local name=$1 limit=$2; shift 2
  local start end rc
  start=$(date +%s.%N)
  timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local secs; secs=$(echo "$end - $start" | bc)
  if [ $rc = 0 ]; then note "${name}=passed"; elif [ $rc = 124 ]; then note "${name}=timeout (${limit} s)"; STATUS=1;
  else note "${name}=failed (exit $rc, see $RESULTS/$name.log)"; STATUS=1; fi
  note "${name}_wall_s=$(printf '%.1f' "$secs")"
  return $rc
}

note "device=$DEVICE dry_run=$DRY results=$RESULTS"
"$PY" - > "$RESULTS/environment.log" 2>&1 <<'PYEOF'
import platform, torch
print("torch", torch.__version__, "python", platform.python_version())
print("cuda_available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "cuda", torch.version.cuda)
PYEOF
note "environment: $(tr '\n' ' ' < "$RESULTS/environment.log")"
if [ $DEVICE = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  note "no CUDA device here: run with --dry-run, or on a GPU machine"
  exit 1
fi

# 1. the device path's tests
if wanted 1; then
step tests "$T_TESTS" env RSGH_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
grep -E "passed|failed|skipped|error" "$RESULTS/tests.log" | tail -1 | sed 's/^/  /' | tee -a "$SUMMARY"
fi

# 2. throughput of groups on the device
if wanted 2; then
step throughput "$T_BENCH" "$PY" benchmarks/train_throughput.py --device $DEVICE "${BENCH[@]}"
grep -E "model-steps/s|=" "$RESULTS/throughput.log" | sed 's/^/  /' | tee -a "$SUMMARY"
fi

# 3. one E2 run at 64 bits, end to end
DATA=${RSGH_DATA:-$( [ -d ../shared/data ] && echo ../shared/data || echo data/cache)}
if [ $DRY = 1 ]; then
  HAVE_DATA=$([ -d "$DATA/MNIST" ] && echo 1)
else
  HAVE_DATA=$( { [ -e "$DATA/cifar-10-python.tar.gz" ] || [ -e "$DATA/cifar10-jpeg.tar.gz" ] \
                 || [ -d "$DATA/cifar-10-batches-py" ]; } && echo 1)
fi
if ! wanted 3; then
  :
elif [ -n "$HAVE_DATA" ]; then
  E2_OUT=$RESULTS/e2-k64
  rm -rf "$E2_OUT"
  step e2_k64 "$T_E2" env RSGH_DATA="$DATA" "$PY" -m rsgh train --config e2-sgh e2-rsgh --set bits=64 \
    --set device=$DEVICE "${E2[@]}" --out "$E2_OUT/sgh" "$E2_OUT/rsgh" --quiet
  "$PY" - "$E2_OUT" 2>&1 <<'PYEOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
for run in ("sgh", "rsgh"):
    s, r = Path(sys.argv[1]) / run / "summary.json", Path(sys.argv[1]) / run / "retrieval.json"
    if s.exists():
        s = json.loads(s.read_text())
        rate = s.get("steps_per_second")
        print(f"  e2_k64_{run}: {s['iterations']} steps, training {s['wall_time_s']:.1f} s, "
              f"{rate:.0f} steps/s of the group, device {s['device']}, group {s['group_size']}"
              + (f", test mAP {json.loads(r.read_text())['map']:.4f}" if r.exists() else ""))
    else:
        print(f"  e2_k64_{run}: no summary (the run did not finish)")
PYEOF
else
  note "e2_k64=skipped (no CIFAR-10 (MNIST for --dry-run) under $DATA: set RSGH_DATA)"
  [ $STATUS = 0 ] && STATUS=3
fi

# 4 and 5. a page of the book and a small study, on the device and then on the CPU: wall times and their ratio
HAVE_MNIST=$([ -d "$DATA/MNIST" ] && echo 1)
compare() {  # compare NAME LIMIT KEY COMMAND...: the command on $DEVICE, then (on a GPU) on the CPU
  local name=$1 limit=$2 key=$3; shift 3
  local dev secs=()
  for dev in $DEVICE "${COMPARE[@]}"; do
    step "${name}_$dev" "$limit" env RSGH_DATA="$DATA" "$@" --device "$dev" --no-record
    local v; v=$(grep -E "^$key=" "$RESULTS/${name}_$dev.log" | tail -1 | cut -d= -f2)
    note "${name}_${dev}_s=${v:-none}"
    secs+=("${v:-}")
  done
  if [ ${#secs[@]} = 2 ] && [ -n "${secs[0]}" ] && [ -n "${secs[1]}" ]; then
    note "${name}_cpu_over_${DEVICE}=$(echo "scale=2; ${secs[1]} / ${secs[0]}" | bc)"
  fi
}
if [ -z "$HAVE_MNIST" ]; then
  { wanted 4 || wanted 5; } && note "page=skipped, study=skipped (no MNIST under $DATA: set RSGH_DATA)"
  { wanted 4 || wanted 5; } && [ $STATUS = 0 ] && STATUS=3
else
  wanted 4 && compare page "$T_PAGE" page_wall_s "$PY" benchmarks/reproduction_speed.py --page mnist_pixels \
    --profile quick "${PAGE[@]}"
  wanted 5 && compare study "$T_STUDY" study_wall_s "$PY" benchmarks/study_speed.py --arm rsgh --dataset mnist "${STUDY[@]}"
fi

note "gpu_check_status=$STATUS"
exit $STATUS
