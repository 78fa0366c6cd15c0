#!/usr/bin/env bash
# The short learning-rate sweep behind every architecture's default rate (conf/sae/*.yaml; its
# figures: docs/evidence/lr_sweep.csv). The paper's 3e-4 for gated is meant for runs of hundreds
# of thousands of steps.
# Each architecture is trained at one mid-frontier λ with each LR on the same store; the
# criterion is the training objective itself, the median of its logged 10-step means over the
# last quarter of the run (the data is never repeated, so it is a held-out loss; the median,
# because a rare attention-sink row left in a batch makes that batch's loss spike): lower is
# better at the same λ.
#
#   sweeps/lr_sweep.sh                       # relu and rescale_shift, LRs 3e-4 1e-3 3e-3
#   ARCHS=gated LRS="3e-4 1e-3 3e-3" sweeps/lr_sweep.sh
#
# rescale_shift is swept with its own sae.lr, on the relu SAE trained at relu's default LR.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GSAE=${GSAE:-$repo_root/.venv/bin/gsae}
PY=${PY:-$repo_root/.venv/bin/python}
ARCHS=${ARCHS:-"relu rescale_shift"}
LRS=${LRS:-"3e-4 1e-3 3e-3"}
COEFF=${COEFF:-0.08}
TRAIN_TOKENS=${TRAIN_TOKENS:-1000000}
HARVEST_TOKENS=${HARVEST_TOKENS:-2000000}
EXTRA=${EXTRA:-}
OUT_DIR=${OUT_DIR:-outputs}
read -r -a extra <<< "$EXTRA"

printf '%-14s %-8s %-10s %-10s %-8s\n' sae lr objective recon l0
for arch in $ARCHS; do
    for lr in $LRS; do
        dir=$("$GSAE" train "sae=$arch" "sae.lr=$lr" "sae.l1_coefficient=$COEFF" \
              "train.n_tokens=$TRAIN_TOKENS" "harvest.n_tokens=$HARVEST_TOKENS" "out_dir=$OUT_DIR" \
              ${extra[@]+"${extra[@]}"} | tail -1)
        "$PY" - "$dir" "$arch" "$lr" <<'PY'
import json, sys
from pathlib import Path
d, arch, lr = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l]
tail = rows[-max(1, len(rows) // 4):]
median = lambda k: sorted(r.get(k, 0.0) for r in tail)[len(tail) // 2]
print(f"{arch:<14} {lr:<8} {median('loss'):<10.5f} {median('recon'):<10.5f} {median('l0'):<8.1f}")
PY
    done
done
