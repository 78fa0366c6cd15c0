#!/usr/bin/env bash
# The L0 / loss-recovered frontier of each SAE architecture (spec §6): evaluate every
# (architecture, sparsity coefficient) pair, then collect everything with `gsae report`.
#
# Usage (from the repository root; every variable below can be set in the environment):
#   sweeps/frontier.sh                                   # the whole sweep, then the report
#   MODEL=pythia-70m HOOK=blocks.3.hook_resid_pre sweeps/frontier.sh
#   COEFFS="0.05 0.1 0.2" EXTRA="device=cuda train.batch_size=8192" sweeps/frontier.sh
#   sweeps/frontier.sh --list                            # print the members with their indices
#
# Safe to rerun: finished harvests, trainings and evaluations are reused, so a second run only
# does what is missing (a killed run resumes where it stopped).
#
# Safe to run as several processes at once: gsae locks each artifact, so two processes never
# build the same one; the second waits and then reuses it. One process per architecture:
#   REPORT=0 ARCHS=relu          sweeps/frontier.sh &
#   REPORT=0 ARCHS=gated         sweeps/frontier.sh &
#   REPORT=0 ARCHS=rescale_shift sweeps/frontier.sh &
#   wait; .venv/bin/gsae report --where model=smollm2-135m
# (rescale_shift fits a scale and shift on the relu SAE of the same coefficient, training it
# if needed; if the relu process is already training it, rescale_shift waits and reuses it.)
#
# SLURM: one array task per member; each task runs only its member and skips the report.
#   n=$(sweeps/frontier.sh --count)
#   sbatch --array=0-$((n - 1)) --gres=gpu:1 --wrap "EXTRA=device=cuda sweeps/frontier.sh"
#   # when all tasks are done:
#   .venv/bin/gsae report
# Members are ordered architecture-major (all of relu, then gated, ...), as --list shows.
#
# Exit status: 0 if every member succeeded (and the report was written), 1 if any failed,
# 130 if interrupted.

set -u

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${GSAE:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/gsae" ]]; then GSAE="$repo_root/.venv/bin/gsae"; else GSAE=gsae; fi
fi
MODEL=${MODEL:-smollm2-135m}
HOOK=${HOOK:-blocks.12.hook_resid_pre}
TRAIN_TOKENS=${TRAIN_TOKENS:-1000000}
ARCHS=${ARCHS:-"relu gated rescale_shift"}
# Calibrated on SmolLM2-135M blocks.12.hook_resid_pre (1M training tokens): L0 spans about
# 10-150 for relu and gated (larger coefficient -> sparser SAE -> smaller L0). λ acts on
# activations normalised to E||x||^2 = 1, so the values roughly transfer across models/sites.
COEFFS=${COEFFS:-"0.05 0.1 0.2 0.4 0.8"}
EXTRA=${EXTRA:-}          # more overrides for every member, space-separated (no spaces inside one)
OUT_DIR=${OUT_DIR:-outputs}
REPORT_DIR=${REPORT_DIR:-report}
REPORT=${REPORT:-1}       # 0: skip `gsae report` at the end (when several processes share the sweep)

read -r -a archs <<< "$ARCHS"
read -r -a coeffs <<< "$COEFFS"
read -r -a extra <<< "$EXTRA"

members=()
for arch in "${archs[@]}"; do
    for c in "${coeffs[@]}"; do
        members+=("$arch $c")
    done
done
n=${#members[@]}
if (( n == 0 )); then
    echo "frontier.sh: no members (ARCHS='$ARCHS', COEFFS='$COEFFS')" >&2
    exit 2
fi

case "${1:-}" in
    --count) echo "$n"; exit 0 ;;
    --list) for i in "${!members[@]}"; do echo "$i ${members[$i]}"; done; exit 0 ;;
    "") ;;
    *) echo "frontier.sh: unknown argument '$1' (use --list, --count, or environment variables; see the header)" >&2; exit 2 ;;
esac

run_member() {  # arch coeff
    "$GSAE" eval "model=$MODEL" "hook=$HOOK" "sae=$1" "sae.l1_coefficient=$2" \
        "train.n_tokens=$TRAIN_TOKENS" "out_dir=$OUT_DIR" ${extra[@]+"${extra[@]}"}
}

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    i=$SLURM_ARRAY_TASK_ID
    if ! [[ "$i" =~ ^[0-9]+$ ]] || (( i >= n )); then
        echo "frontier.sh: SLURM_ARRAY_TASK_ID=$i but the sweep has $n members; submit with --array=0-$((n - 1))" >&2
        exit 2
    fi
    read -r arch c <<< "${members[$i]}"
    echo "[task $i of $n] sae=$arch sae.l1_coefficient=$c" >&2
    run_member "$arch" "$c"
    exit $?
fi

trap 'echo "frontier.sh: interrupted; rerun to resume (finished members are reused)." >&2; exit 130' INT

failed=()
i=0
for m in "${members[@]}"; do
    i=$((i + 1))
    read -r arch c <<< "$m"
    echo "[$i/$n] sae=$arch sae.l1_coefficient=$c" >&2
    run_member "$arch" "$c"
    rc=$?
    if (( rc == 130 )); then  # Ctrl-C: stop the sweep, not just this member
        echo "frontier.sh: interrupted; rerun to resume (finished members are reused)." >&2
        exit 130
    fi
    if (( rc != 0 )); then
        failed+=("sae=$arch sae.l1_coefficient=$c (exit $rc)")
    fi
done

status=0
if (( ${#failed[@]} )); then
    echo "frontier.sh: ${#failed[@]} of $n members failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    status=1
else
    echo "frontier.sh: all $n members done." >&2
fi

if [[ "$REPORT" != 0 ]]; then
    # Report on whatever finished, even after failures: the frontier of the rest is still useful.
    "$GSAE" report --out-dir "$OUT_DIR" --report-dir "$REPORT_DIR" --where "model=$MODEL" --where "hook=$HOOK" || status=1
fi
exit "$status"
