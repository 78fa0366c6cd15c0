#!/usr/bin/env bash
# `gsae export --format saelens` checked by SAELens itself: SAELens in its own virtualenv (its pins
# are not gsae's; torch from the same local CPU build), then interop/check_saelens.py. Exit 75 if
# SAELens cannot be installed (no network): the check did not run, which is not a disagreement.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SAELENS_VENV:-.venv-saelens}
SAELENS_VERSION=${SAELENS_VERSION:-6.54.12}
if ! "$VENV/bin/python" -c "import sae_lens" >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  if ! { "$VENV/bin/pip" install -q torch==2.13.0 && "$VENV/bin/pip" install -q "sae-lens==$SAELENS_VERSION"; }; then
    echo "interop/saelens.sh: could not install sae-lens==$SAELENS_VERSION into $VENV; the check did not run" >&2
    exit 75
  fi
fi
.venv/bin/python interop/check_saelens.py "$VENV/bin/python"
