#!/usr/bin/env bash
# The short learning-rate sweep behind every architecture's default rate (conf/sae/*.yaml; its
# figures: docs/evidence/lr_sweep.csv) and behind the per-site rates of sweeps/frontier.sh's LRS.
# The paper's 3e-4 for gated is meant for runs of hundreds of thousands of steps.
# Each architecture is trained at one mid-frontier λ (or k) with each LR on the same store; the
# criterion is the training objective itself, the median of its logged 10-step means over the
# last quarter of the run (the data is never repeated, so it is a held-out loss; the median,
# because a rare attention-sink row left in a batch makes that batch's loss spike): lower is
# better at the same λ.
#
#   sweeps/lr_sweep.sh                       # relu and rescale_shift, LRs 3e-4 1e-3 3e-3
#   ARCHS=gated LRS="3e-4 1e-3 3e-3" sweeps/lr_sweep.sh
#   HOOK=blocks.24.attn.hook_z ARCHS="relu topk" LRS="3e-4 1e-3 3e-3 topk=1e-3,3e-3,1e-2" \
#     COEFF="0.02 topk=32" CSV=lr.csv sweeps/lr_sweep.sh
#
# LRS and COEFF take plain items (every architecture) and "arch=v,v" items (that architecture's
# own list, which replaces the plain items for it); TopK's and BatchTopK's COEFF is k (sae.k),
# JumpReLU's the weight of its L0 penalty. CSV=FILE appends one row per run (site, sae, setting:
# the λ or k it trained at, lr, objective, l0, baseline_lr, diverged_step: the step where training
# recorded a divergence, train/divergence.py, else empty). The last line printed is each architecture's best rate among
# this invocation's runs, as sweeps/frontier.sh LRS items, "hook:arch=lr"; a diverged run is never
# picked (a grid extended by a second invocation is read from the CSV as a whole).
#
# rescale_shift is swept with its own sae.lr, on the relu SAE trained at relu's default LR.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GSAE=${GSAE:-$repo_root/.venv/bin/gsae}
PY=${PY:-$repo_root/.venv/bin/python}
ARCHS=${ARCHS:-"relu rescale_shift"}
LRS=${LRS:-"3e-4 1e-3 3e-3"}
COEFF=${COEFF:-0.08}
HOOK=${HOOK:-}
TRAIN_TOKENS=${TRAIN_TOKENS:-1000000}
HARVEST_TOKENS=${HARVEST_TOKENS:-2000000}
EXTRA=${EXTRA:-}
OUT_DIR=${OUT_DIR:-outputs}
CSV=${CSV:-}
read -r -a extra <<< "$EXTRA"
site=(); [[ -n "$HOOK" ]] && site=("hook=$HOOK")

# shellcheck source=sweeps/items.sh
source "$repo_root/sweeps/items.sh"  # arch_coeffs_of, setting_key
values_for() {  # LIST arch -> that architecture's values (its "arch=v,v" item, else the plain items)
    local item plain=()
    for item in $1; do [[ "$item" != *=* ]] && plain+=("$item"); done
    arch_coeffs_of "$1" "$2" ${plain[@]+"${plain[@]}"}
}

rows=$(mktemp); trap 'rm -f "$rows"' EXIT
printf '%-14s %-8s %-10s %-10s %-8s\n' sae lr objective recon l0
for arch in $ARCHS; do
    read -r -a coeff <<< "$(values_for "$COEFF" "$arch")"
    if (( ${#coeff[@]} != 1 )); then
        echo "lr_sweep.sh: COEFF must give $arch one value (got '${coeff[*]}'): a plain item or $arch=v" >&2
        exit 2
    fi
    for lr in $(values_for "$LRS" "$arch"); do
        dir=$("$GSAE" train "sae=$arch" "sae.lr=$lr" "$(setting_key "$arch")=${coeff[0]}" ${site[@]+"${site[@]}"} \
              "train.n_tokens=$TRAIN_TOKENS" "harvest.n_tokens=$HARVEST_TOKENS" "out_dir=$OUT_DIR" \
              ${extra[@]+"${extra[@]}"} | tail -1)
        "$PY" - "$dir" "$arch" "$lr" "$rows" "$(setting_key "$arch")" <<'PY'
import json, sys
from pathlib import Path
from omegaconf import OmegaConf
from gsae_cli.config import baseline_config, effective_lr
d, arch, lr, rows_file, setting_key = Path(sys.argv[1]), *sys.argv[2:6]
rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l]
tail = rows[-max(1, len(rows) // 4):]
median = lambda k: sorted(r.get(k, 0.0) for r in tail)[len(tail) // 2]
diverged = (json.loads((d / "summary.json").read_text()).get("divergence") or {}).get("step", "")
note = f"  diverged at step {diverged}" if diverged != "" else ""
print(f"{arch:<14} {lr:<8} {median('loss'):<10.5f} {median('recon'):<10.5f} {median('l0'):<8.1f}{note}")
cfg = OmegaConf.load(d / "config.yaml")
setting = OmegaConf.select(cfg, setting_key)  # as trained (an EXTRA override wins over COEFF)
base_lr = f"{effective_lr(baseline_config(cfg)):g}" if arch == "rescale_shift" else ""
with open(rows_file, "a") as f:
    f.write(f"{cfg.hook},{arch},{setting},{lr},{median('loss'):.5f},{median('l0'):.1f},{base_lr},{diverged}\n")
PY
    done
done
if [[ -n "$CSV" ]]; then
    header="site,sae,setting,lr,objective,l0,baseline_lr,diverged_step"
    [[ -s "$CSV" ]] || echo "$header" > "$CSV"
    if [[ "$(head -1 "$CSV")" != "$header" ]]; then
        echo "lr_sweep.sh: $CSV has other columns than $header; give CSV a new file" >&2
        exit 2
    fi
    cat "$rows" >> "$CSV"
fi
"$PY" - "$rows" <<'PY'
import csv, math, sys
best = {}
for site, arch, _setting, lr, objective, _l0, _base, diverged in csv.reader(open(sys.argv[1])):
    if diverged == "" and math.isfinite(float(objective)) and ((site, arch) not in best or float(objective) < best[(site, arch)][1]):
        best[(site, arch)] = (lr, float(objective))
print(" ".join(f"{site}:{arch}={lr}" for (site, arch), (lr, _) in best.items()))
PY
