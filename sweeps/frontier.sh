#!/usr/bin/env bash
# The L0 / loss-recovered frontier of each SAE architecture at three kinds of site (as the paper
# does: residual stream, attention output, MLP output), on data no run repeats, evaluated with
# 95 % intervals on the same held-out windows for every SAE of a site; then `gsae report`.
#
# Usage (from the repository root; every variable below can be set in the environment):
#   sweeps/frontier.sh                      # harvest, the whole sweep, the doubled-token check, report
#   HOOKS=blocks.12.hook_resid_pre COEFFS="0.05 0.1" sweeps/frontier.sh
#   EXTRA="device=cuda train.autocast=bf16 train.compile=true" sweeps/frontier.sh
#   sweeps/frontier.sh --list               # print the members with their indices
#
# What it runs:
#   1. one harvest pass writing a store per hook, HARVEST_TOKENS rows each (default 2 x
#      TRAIN_TOKENS, so that even the doubled-token runs read every row at most once);
#   2. every (hook, architecture, λ) at TRAIN_TOKENS, then, with DOUBLE=1 (the default), the
#      λ of DOUBLE_COEFFS again at 2 x TRAIN_TOKENS from the same store: the convergence check
#      (does doubling the tokens move the L0 ratio beyond its interval?);
#   3. the λ of DOUBLE_COEFFS at TRAIN_TOKENS (and, with DOUBLE=1, at 2 x TRAIN_TOKENS) again with
#      each further training seed of SEEDS (train.seed: initialisation, which rows of the store a
#      run reads, their order): the run-to-run spread of the ratio at both lengths, which the
#      eval-window intervals do not see;
#   4. `gsae report` over everything.
#
# Safe to rerun: finished harvests, trainings and evaluations are reused, so a second run only
# does what is missing (a killed run resumes where it stopped). JOBS=N runs N members at once,
# each with 1/N of the cores (GSAE_LOCAL_PROCS=N; `threads=K` in EXTRA overrides); gsae locks
# each artifact, so members that need the same relu baseline wait for each other.
#
# SLURM: one array task per member; each task runs only its member and skips the report.
#   n=$(sweeps/frontier.sh --count)
#   sbatch --array=0-$((n - 1)) --gres=gpu:1 --wrap "EXTRA=device=cuda sweeps/frontier.sh"
#   # when all tasks are done:
#   .venv/bin/gsae report out_dir=outputs
# Members are ordered hook-major (a stopped sweep leaves whole sites), then token count, then
# architecture, then the further seeds. --list shows them (hook, tokens, architecture, λ or k,
# train.lr, train.seed).
#
# Exit status: 0 if every member succeeded (and the report was written), 1 if any failed,
# 2 on bad arguments, 130 if interrupted.

set -u

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${GSAE:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/gsae" ]]; then GSAE="$repo_root/.venv/bin/gsae"; else GSAE=gsae; fi
fi
MODEL=${MODEL:-smollm2-135m}
# The residual stream mid-model; the attention output (taken before W_O, the heads' concatenated
# outputs, as the paper does) and the MLP output at block 24: the block (of 2-27) whose two sublayers
# both matter most to the loss (sweeps/site_scan.py). Zero-ablating block 12's attention output
# costs only 0.04 nats of CE, too little for loss recovered to resolve SAEs (docs/results/round4.md).
HOOKS=${HOOKS:-"blocks.12.hook_resid_pre blocks.24.attn.hook_z blocks.24.hook_mlp_out"}
TRAIN_TOKENS=${TRAIN_TOKENS:-2000000}  # the convergence check doubles it: 4M rows, which the default corpus (v3) holds unrepeated
HARVEST_TOKENS=${HARVEST_TOKENS:-$((2 * TRAIN_TOKENS))}
DOUBLE=${DOUBLE:-1}       # 1: also train every member on 2 x TRAIN_TOKENS (the convergence check)
EVAL_TOKENS=${EVAL_TOKENS:-32512}   # 256 held-out windows of 128, the same for every SAE of a site
# Architectures; an item "arch:key=value:key=value" is that architecture with overrides of its
# own, a series of its own in the report: "relu:sae.expansion_factor=6" is the paper's
# equal-compute baseline beside 4x gated, "gated:sae.tie_weights=false" one of its ablations.
ARCHS=${ARCHS:-"relu gated rescale_shift"}
# λ acts on activations normalised to E||x||^2 = 1, so one list roughly transfers across sites:
# on SmolLM2-135M it spans loss recovered from about 0.8 to 0.99 for relu and gated at the residual
# stream. A "hook:λ,λ,..." item gives one site its own list (it replaces the plain items there):
# the block-24 MLP output is hard to reconstruct (relu at λ 0.02 recovers only 0.89 of its loss at
# L0 508), so its list reaches lower (docs/results/round4.md).
given=" ${COEFFS+COEFFS} ${DOUBLE_COEFFS+DOUBLE_COEFFS} "  # (a default's items for sites not run are fine)
COEFFS=${COEFFS-"0.02 0.04 0.08 0.16 0.32 blocks.24.hook_mlp_out:0.005,0.01,0.02,0.04,0.08,0.16"}
# the mid-frontier λ the doubled-token check and the further seeds repeat (same syntax; "" runs
# neither)
DOUBLE_COEFFS=${DOUBLE_COEFFS-"0.04 0.08 0.16 blocks.24.hook_mlp_out:0.01,0.02,0.04"}
# An architecture whose sparsity setting means something else has its own list at every site,
# "arch=v,v,...": JumpReLU's λ weighs an L0 penalty, and TopK and BatchTopK sweep k (sae.k), not λ.
ARCH_COEFFS=${ARCH_COEFFS-"jumprelu=0.001,0.003,0.01,0.03 topk=8,16,32,64,128 batchtopk=8,16,32,64,128"}
DOUBLE_ARCH_COEFFS=${DOUBLE_ARCH_COEFFS-"jumprelu=0.003,0.01 topk=16,32,64 batchtopk=16,32,64"}
SEEDS=${SEEDS:-"0 1 2"}   # train.seed of the spread runs (DOUBLE_COEFFS at both lengths); "0" turns them off
                          # (so EXTRA must not set train.seed)
# Learning rates (train.lr): "arch=lr" for an architecture at every site, "hook:arch=lr" for one
# site (it wins over arch=lr there); the others keep their sae.lr, which sweeps/lr_sweep.sh chose
# for every architecture by the same criterion (docs/choices.md). A rescale_shift's relu
# baseline trains at the rescale_shift's train.lr, so give both the same rate at a site.
# At block 24 the residual stream's 3e-3 diverges part-way through low-λ runs (relu and gated),
# and 1e-3 trains every λ cleanly (docs/choices.md); rescale_shift follows its relu.
LRS=${LRS-"blocks.24.attn.hook_z:relu=1e-3 blocks.24.attn.hook_z:gated=1e-3 blocks.24.attn.hook_z:rescale_shift=1e-3
  blocks.24.hook_mlp_out:relu=1e-3 blocks.24.hook_mlp_out:gated=1e-3 blocks.24.hook_mlp_out:rescale_shift=1e-3"}
EXTRA=${EXTRA:-}          # more overrides for every member, space-separated (no spaces inside one)
OUT_DIR=${OUT_DIR:-outputs}
REPORT_DIR=${REPORT_DIR:-report}
REPORT=${REPORT:-1}       # 0: skip `gsae report` at the end (when several processes share the sweep)
EVIDENCE=${EVIDENCE:-}    # a folder: the report also keeps its evidence there (gsae report --evidence)
JOBS=${JOBS:-1}           # members run at once, each on its share of the cores
if ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
    echo "frontier.sh: JOBS=$JOBS is not a positive integer" >&2
    exit 2
fi

set -f  # no glob expansion of the lists below (COEFFS="*" is an error, not a file list)
read -r -a hooks <<< "$HOOKS"
read -r -a archs <<< "$ARCHS"
for a in ${archs[@]+"${archs[@]}"}; do
    if ! [[ "$a" =~ ^[a-z_]+(:[A-Za-z0-9_.]+=[^:=[:space:]]+)*$ ]]; then
        echo "frontier.sh: ARCHS item '$a' is not arch or arch:key=value:... (e.g. ARCHS=\"gated relu relu:sae.expansion_factor=6\")" >&2
        exit 2
    fi
done
coeffs_of() {  # "list" hook -> the λ for that hook: its own "hook:λ,λ" item, else the plain items
    local item plain=()
    for item in $1; do
        if [[ "$item" == *:* ]]; then
            [[ "${item%%:*}" == "$2" ]] && { echo "${item#*:}" | tr , ' '; return; }
        else
            plain+=("$item")
        fi
    done
    echo ${plain[@]+"${plain[@]}"}
}
# shellcheck source=sweeps/items.sh
source "$repo_root/sweeps/items.sh"  # arch_coeffs_of, setting_key
num='([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?'
for var in COEFFS DOUBLE_COEFFS; do
    seen=" "
    for item in ${!var}; do
        if ! [[ "$item" =~ ^$num$ || "$item" =~ ^[A-Za-z0-9_.]+:$num(,$num)*$ ]]; then
            echo "frontier.sh: $var item '$item' is not λ or hook:λ,λ,... (e.g. COEFFS=\"0.02 0.04 blocks.24.hook_mlp_out:0.005,0.01\")" >&2
            exit 2
        fi
        [[ "$item" != *:* ]] && continue
        h=${item%%:*}
        if [[ ( " $HOOKS " != *" $h "* && "$given" == *" $var "* ) || "$seen" == *" $h "* ]]; then
            echo "frontier.sh: $var item '$item' names $h, which is $([[ "$seen" == *" $h "* ]] && echo "given twice" || echo "not one of HOOKS ($HOOKS)"); give each site of HOOKS at most one hook:λ,... item" >&2
            exit 2
        fi
        seen+="$h "
    done
done
for var in ARCH_COEFFS DOUBLE_ARCH_COEFFS; do
    for item in ${!var}; do
        if ! [[ "$item" =~ ^[a-z_]+=$num(,$num)*$ ]]; then
            echo "frontier.sh: $var item '$item' is not arch=v,v,... (e.g. ARCH_COEFFS=\"topk=8,32,128\")" >&2
            exit 2
        fi
    done
done
read -r -a seed_items <<< "$SEEDS"
seeds=()
for s in ${seed_items[@]+"${seed_items[@]}"}; do
    if ! [[ "$s" =~ ^[0-9]+$ ]]; then
        echo "frontier.sh: SEEDS item '$s' is not a non-negative integer (e.g. SEEDS=\"0 1 2\")" >&2
        exit 2
    fi
    s=$((10#$s))  # "08" is 8, not an octal error; "01" and "1" are one seed
    [[ " ${seeds[*]-} " == *" $s "* ]] || seeds+=("$s")
done
read -r -d '' -a lrs <<< "$LRS" || true  # (-d '': the whole value, newlines included; it ends at EOF)
read -r -a extra <<< "$EXTRA"
token_counts=("$TRAIN_TOKENS")
[[ "$DOUBLE" != 0 ]] && token_counts+=("$((2 * TRAIN_TOKENS))")
for t in "${token_counts[@]}"; do
    if (( t > HARVEST_TOKENS )); then
        echo "frontier.sh: a run of $t tokens would repeat data from a store of HARVEST_TOKENS=$HARVEST_TOKENS; raise HARVEST_TOKENS" >&2
        exit 2
    fi
done

lr_of() {  # hook arch -> its train.lr from LRS (hook:arch=lr, else arch=lr), or "-" for its own sae.lr
    local kv found=-
    for kv in ${lrs[@]+"${lrs[@]}"}; do
        [[ "${kv%%=*}" == "$1:$2" ]] && { echo "${kv#*=}"; return; }
        [[ "${kv%%=*}" == "$2" ]] && found=${kv#*=}
    done
    echo "$found"
}
for kv in ${lrs[@]+"${lrs[@]}"}; do
    if ! [[ "$kv" =~ ^([A-Za-z0-9_.]+:)?[a-z_]+=[0-9.eE+-]+$ ]]; then
        echo "frontier.sh: LRS item '$kv' is not arch=lr or hook:arch=lr (e.g. LRS=\"gated=3e-3 blocks.24.attn.hook_z:relu=1e-3\")" >&2
        exit 2
    fi
done

members=()
for hook in "${hooks[@]}"; do  # site by site, so a sweep stopped midway leaves whole sites
    read -r -a coeffs <<< "$(coeffs_of "$COEFFS" "$hook")"
    read -r -a double_coeffs <<< "$(coeffs_of "$DOUBLE_COEFFS" "$hook")"
    if (( ${#coeffs[@]} == 0 )); then
        echo "frontier.sh: COEFFS gives no λ for $hook (COEFFS='$COEFFS'): add plain λ items or a $hook:λ,... item" >&2
        exit 2
    fi
    for t in "${token_counts[@]}"; do
        cs=(${coeffs[@]+"${coeffs[@]}"})
        (( t != TRAIN_TOKENS )) && cs=(${double_coeffs[@]+"${double_coeffs[@]}"})
        for arch in "${archs[@]}"; do
            own=$ARCH_COEFFS
            (( t != TRAIN_TOKENS )) && own=$DOUBLE_ARCH_COEFFS
            for c in $(arch_coeffs_of "$own" "${arch%%:*}" ${cs[@]+"${cs[@]}"}); do
                members+=("$hook $t $arch $c $(lr_of "$hook" "${arch%%:*}") 0")
            done
        done
    done
    for s in ${seeds[@]+"${seeds[@]}"}; do  # at both lengths: the seed spread is known at T and 2T
        (( s == 0 )) && continue
        for t in "${token_counts[@]}"; do
            for arch in "${archs[@]}"; do
                for c in $(arch_coeffs_of "$DOUBLE_ARCH_COEFFS" "${arch%%:*}" ${double_coeffs[@]+"${double_coeffs[@]}"}); do
                    members+=("$hook $t $arch $c $(lr_of "$hook" "${arch%%:*}") $s")
                done
            done
        done
    done
done
n=${#members[@]}
if (( n == 0 )); then
    echo "frontier.sh: no members (HOOKS='$HOOKS', ARCHS='$ARCHS', COEFFS='$COEFFS')" >&2
    exit 2
fi
common=("model=$MODEL" "harvest.n_tokens=$HARVEST_TOKENS" "eval.n_tokens=$EVAL_TOKENS" "out_dir=$OUT_DIR")

case "${1:-}" in
    --count) echo "$n"; exit 0 ;;
    --list) for i in "${!members[@]}"; do echo "$i ${members[$i]}"; done; exit 0 ;;
    "") ;;
    *) echo "frontier.sh: unknown argument '$1' (use --list, --count, or environment variables; see the header)" >&2; exit 2 ;;
esac

run_member() {  # hook tokens arch[:key=value...] coeff lr ("-": the architecture's own) seed
    local lr=() own=()
    [[ "$5" != - ]] && lr=("train.lr=$5")
    [[ "$6" != 0 ]] && lr+=("train.seed=$6")
    [[ "$3" == *:* ]] && IFS=: read -r -a own <<< "${3#*:}"
    "$GSAE" eval "${common[@]}" "hook=$1" "train.n_tokens=$2" "sae=${3%%:*}" "$(setting_key "${3%%:*}")=$4" \
        ${own[@]+"${own[@]}"} ${lr[@]+"${lr[@]}"} ${extra[@]+"${extra[@]}"}
}

harvest_all() {  # one forward pass fills every site's store
    local list
    list=$(IFS=,; echo "${hooks[*]}")
    "$GSAE" harvest "${common[@]}" "hooks=[$list]" ${extra[@]+"${extra[@]}"}
}

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    i=$SLURM_ARRAY_TASK_ID
    if ! [[ "$i" =~ ^[0-9]+$ ]] || (( i >= n )); then
        echo "frontier.sh: SLURM_ARRAY_TASK_ID=$i but the sweep has $n members; submit with --array=0-$((n - 1))" >&2
        exit 2
    fi
    read -r hook t arch c lr seed <<< "${members[$i]}"
    echo "[task $i of $n] hook=$hook train.n_tokens=$t sae=$arch $(setting_key "${arch%%:*}")=$c train.lr=$lr train.seed=$seed" >&2
    run_member "$hook" "$t" "$arch" "$c" "$lr" "$seed"
    exit $?
fi

trap 'echo "frontier.sh: interrupted; rerun to resume (finished members are reused)." >&2; exit 130' INT

harvest_all
rc=$?
if (( rc != 0 )); then
    echo "frontier.sh: the harvest failed (exit $rc); nothing else can run." >&2
    exit "$rc"
fi

status_dir=$(mktemp -d)
# (each job is a subshell whose gsae is its child: stop both, or the gsae runs on holding its lock)
trap 'for j in $(jobs -p); do pkill -TERM -P "$j"; kill "$j"; done 2>/dev/null; rm -rf "$status_dir"; echo "frontier.sh: interrupted; rerun to resume (finished members are reused)." >&2; exit 130' INT TERM

one_member() {  # index member: runs it, records "exit-code description" in $status_dir/index
    local hook t arch c lr seed start=$SECONDS rc
    read -r hook t arch c lr seed <<< "$2"
    local what="hook=$hook train.n_tokens=$t sae=${arch//:/ } $(setting_key "${arch%%:*}")=$c train.lr=$lr"
    [[ "$seed" != 0 ]] && what+=" train.seed=$seed"
    echo "[$1/$n] $what" >&2
    GSAE_LOCAL_PROCS=$JOBS run_member "$hook" "$t" "$arch" "$c" "$lr" "$seed"
    rc=$?
    echo "[$1/$n] took $((SECONDS - start))s" >&2
    echo "$rc $what" > "$status_dir/$1"
    return "$rc"
}

i=0
for m in "${members[@]}"; do
    i=$((i + 1))
    if (( JOBS == 1 )); then
        one_member "$i" "$m"
        if (( $? == 130 )); then  # Ctrl-C: stop the sweep, not just this member
            echo "frontier.sh: interrupted; rerun to resume (finished members are reused)." >&2
            exit 130
        fi
    else
        while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
        one_member "$i" "$m" &
    fi
done
wait

failed=()
for k in $(ls "$status_dir" | sort -n); do  # in member order
    read -r rc what < "$status_dir/$k"
    (( rc != 0 )) && failed+=("$what (exit $rc)")
done
rm -rf "$status_dir"

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
    # Only this sweep's sites and store size: out_dir may also hold other rounds' evaluations.
    hook_list=$(IFS=,; echo "${hooks[*]}")
    keep=()
    [[ -n "$EVIDENCE" ]] && keep=(--evidence "$EVIDENCE")
    "$GSAE" report "out_dir=$OUT_DIR" --report-dir "$REPORT_DIR" --where "model=$MODEL" \
        --where "hook=$hook_list" --where "harvest.n_tokens=$HARVEST_TOKENS" ${keep[@]+"${keep[@]}"} || status=1
fi
exit "$status"
