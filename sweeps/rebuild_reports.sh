#!/usr/bin/env bash
# Rebuild every published report from the evidence committed beside it, byte for byte:
# each docs/results/<study>/evidence (written by `gsae report ... --evidence`) gives
# docs/results/<study>/{results.md, results.csv, ratios.json, convergence.json, seeds.json, *.png}.
#   sweeps/rebuild_reports.sh            # every study
#   sweeps/rebuild_reports.sh STUDY ...  # some (folder names under docs/results)
set -euo pipefail
cd "$(dirname "$0")/.."
GSAE=${GSAE:-.venv/bin/gsae}
studies=("$@")
if (( ${#studies[@]} == 0 )); then
    for d in docs/results/*/evidence; do [[ -d "$d" ]] && studies+=("$(basename "$(dirname "$d")")"); done
fi
for s in "${studies[@]}"; do
    if [[ ! -d "docs/results/$s/evidence" ]]; then
        echo "rebuild_reports.sh: docs/results/$s/evidence does not exist (studies: $(ls docs/results))" >&2
        exit 2
    fi
    "$GSAE" report "docs/results/$s/evidence" --report-dir "docs/results/$s" >/dev/null
    echo "rebuilt docs/results/$s" >&2
done
