#!/usr/bin/env bash
# The CUDA path end to end on a GPU box, with the benchmarks, in one pass that prints its figures:
#   1. the real pipeline: harvest -> train gated (bf16 autocast, compile) -> eval, on the default
#      model and hook, printing the SAE's metrics so they can be checked against a CPU eval;
#   2. the SAE step (bench/train.py, synthetic store): gated and relu with bf16 autocast and
#      torch.compile, and gated in plain fp32;
#   3. harvest next to the bare forward pass (bench/harvest.py);
#   4. the eval bench (bench/eval.py).
#
#   bench/cuda.sh                     # on a machine with CUDA; figures on stdout, logs in $LOGS
#   DEVICE=cpu SCALE=0.01 bench/cuda.sh   # a dry run of the script's plumbing on a CPU
#   ONLY='harvest|train$' bench/cuda.sh    # only the steps whose names match the regex
#
# Each step runs under its own timeout and the script goes on after a failure, so one broken step
# does not hide the others' figures; the exit status is the number of failed steps.
set -uo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-1}          # multiplies every token count (a CPU dry run uses 0.01)
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
LOGS=${LOGS:-$OUT_DIR/logs}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
mkdir -p "$LOGS"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
n() { $PY -c "print(max(4096, int($1 * $SCALE) // 4096 * 4096))"; }
failed=0
step() {  # step NAME CMD...: run with a timeout, keep the log, print its tail
    local name=$1; shift
    [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && return 0
    local t0=$SECONDS
    echo "=== $name"
    if timeout "$STEP_TIMEOUT" "$@" >"$LOGS/$name.log" 2>&1; then
        tail -n 14 "$LOGS/$name.log"
        echo "--- $name: ok in $((SECONDS - t0)) s"
    else
        local rc=$?
        tail -n 25 "$LOGS/$name.log"
        echo "--- $name: FAILED (exit $rc) after $((SECONDS - t0)) s"
        failed=$((failed + 1))
    fi
}
gsae=("$PY" -m gsae_cli)

cd "$repo_root"
step env bash -c "nvidia-smi -L 2>/dev/null; $PY -c 'import torch, transformers, transformer_lens, zarr
print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")
print(\"transformers\", transformers.__version__, \"zarr\", zarr.__version__)'"

common=("device=$DEVICE" "out_dir=$OUT_DIR")
fast=("train.autocast=bf16" "train.compile=true")
[ "$DEVICE" = cpu ] && fast=()

# The real pipeline at the reproduction's mid-frontier point (gated, λ=0.08, lr 3e-3, 1M tokens).
pipe=("${common[@]}" "harvest.n_tokens=$(n 2000000)" "train.n_tokens=$(n 1000000)" sae=gated
      sae.l1_coefficient=0.08 sae.lr=3e-3)
step harvest "${gsae[@]}" harvest "${pipe[@]}" harvest.batch_size=64
step train "${gsae[@]}" train "${pipe[@]}" "${fast[@]}"
step eval "${gsae[@]}" eval "${pipe[@]}" "${fast[@]}"

# The benches (bench/train.py and bench/harvest.py write to their own temporary folders).
bench_tokens=$(n 20480000)
step train_gated_bf16_compile $PY bench/train.py sae=gated "train.n_tokens=$bench_tokens" "device=$DEVICE" "${fast[@]}"
step train_relu_bf16_compile $PY bench/train.py sae=relu "train.n_tokens=$bench_tokens" "device=$DEVICE" "${fast[@]}"
step train_gated_fp32 $PY bench/train.py sae=gated "train.n_tokens=$(n 8192000)" "device=$DEVICE"
step harvest_bench $PY bench/harvest.py "$(n 524288)" "device=$DEVICE" harvest.batch_size=64
step eval_bench $PY bench/eval.py --n-tokens "$(n 16256)" "${common[@]}"
echo "failed steps: $failed   (outputs in $OUT_DIR, logs in $LOGS)"
exit "$failed"
