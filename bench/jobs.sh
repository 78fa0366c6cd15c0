#!/usr/bin/env bash
# Does running sweep members at once pay on this machine? The same small sweep through
# sweeps/frontier.sh with JOBS=1 (one member after another, each on every core) and JOBS=N (N at
# once, each on 1/N of the cores), timed end to end; prints both wall times and their ratio.
# Members reuse the harvest store and eval set already in SRC_OUT (linked, never written), so
# what is timed is training and evaluation only.
#
#   bench/jobs.sh                  # JOBS=2, 4 members (relu and gated at 2 λ) on the default site
#   N=2 TRAIN_TOKENS=262144 bench/jobs.sh
#
# Target (issue 10): JOBS=N not slower in total than JOBS=1. Run it alone on the machine.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC_OUT=$(cd "${SRC_OUT:-$repo_root/outputs}" && pwd)
N=${N:-2}
export HOOKS=${HOOKS:-blocks.12.hook_resid_pre} ARCHS=${ARCHS:-"relu gated"} COEFFS=${COEFFS:-"0.05 0.1"}
export TRAIN_TOKENS=${TRAIN_TOKENS:-131072} HARVEST_TOKENS=${HARVEST_TOKENS:-2000000}
export EVAL_TOKENS=${EVAL_TOKENS:-16256} DOUBLE=0 REPORT=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
declare -A wall
for jobs in 1 "$N"; do
    out="$tmp/jobs$jobs"
    mkdir -p "$out"
    ln -s "$SRC_OUT/harvest" "$out/harvest"
    ln -s "$SRC_OUT/evalset" "$out/evalset"
    start=$(date +%s.%N)
    OUT_DIR="$out" JOBS=$jobs "$repo_root/sweeps/frontier.sh" > "$tmp/log$jobs" 2>&1 || { tail -20 "$tmp/log$jobs"; exit 1; }
    wall[$jobs]=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
    echo "JOBS=$jobs: ${wall[$jobs]} s for $(grep -c took "$tmp/log$jobs") members"
done
python3 -c "print(f'JOBS=$N / JOBS=1 wall time: {${wall[$N]} / ${wall[1]}:.2f}  (target <= 1)')"
