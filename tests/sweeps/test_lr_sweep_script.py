"""sweeps/lr_sweep.sh: each architecture's own rates and sparsity setting, its CSV rows, and the
rate it picks (the lowest objective of the runs that did not diverge); then one real run on the
tiny model, so the overrides it passes are ones gsae accepts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

from conftest import TINY_HOOK, tiny

REPO = Path(__file__).resolve().parents[2]
# Stands in for `gsae train`: records its arguments and prints a prepared run folder named for
# the architecture and rate.
FAKE = """#!/usr/bin/env bash
echo "$*" >> "$LOG"
arch=""; lr=""
for a in "$@"; do case "$a" in sae=*) arch=${a#sae=} ;; sae.lr=*) lr=${a#sae.lr=} ;; esac; done
echo "$RUNS/$arch-$lr"
"""


def _run_folder(runs: Path, arch: str, lr: str, losses: list[float], diverged_at: int | None = None) -> None:
    d = runs / f"{arch}-{lr}"
    d.mkdir(parents=True)
    rows = [{"step": 10 * i, "loss": v, "recon": v / 2, "l0": 20.0 + i} for i, v in enumerate(losses)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    divergence = {"step": diverged_at} if diverged_at is not None else None
    (d / "summary.json").write_text(json.dumps({"divergence": divergence}))
    (d / "config.yaml").write_text(
        f"hook: blocks.24.attn.hook_z\nsae:\n  name: {arch}\n  lr: {lr}\n  l1_coefficient: 0.02\n  k: 32\n"
        "train:\n  lr: null\n"
    )


def sweep(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "GSAE_LOCAL_PROCS"}
    return subprocess.run(
        [str(REPO / "sweeps" / "lr_sweep.sh")], env={**full, **env}, capture_output=True, text=True, timeout=300
    )


def test_own_lists_csv_rows_and_the_pick_skips_diverged_runs(tmp_path):
    fake, runs, log, table = tmp_path / "gsae", tmp_path / "runs", tmp_path / "log", tmp_path / "lr.csv"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    # the last quarter of 8 logged means: medians 0.30 (relu 1e-3), 0.20 (relu 3e-3, diverged),
    # 0.50 (topk 3e-3), 0.40 (topk 1e-2)
    _run_folder(runs, "relu", "1e-3", [1.0] * 6 + [0.30, 0.31])
    _run_folder(runs, "relu", "3e-3", [1.0] * 6 + [0.20, 0.21], diverged_at=60)
    _run_folder(runs, "topk", "3e-3", [1.0] * 6 + [0.50, 0.51])
    _run_folder(runs, "topk", "1e-2", [1.0] * 6 + [0.40, 0.41])
    proc = sweep(
        tmp_path,
        GSAE=str(fake),
        LOG=str(log),
        RUNS=str(runs),
        HOOK="blocks.24.attn.hook_z",
        ARCHS="relu topk",
        LRS="1e-3 3e-3 topk=3e-3,1e-2",
        COEFF="0.02 topk=32",
        CSV=str(table),
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 4
    assert all("hook=blocks.24.attn.hook_z" in c for c in calls)
    assert "sae.l1_coefficient=0.02" in calls[0] and "sae.k=32" in calls[2] and "sae.l1_coefficient" not in calls[2]
    assert "diverged at step 60" in proc.stdout
    rows = list(csv.DictReader(table.open()))
    assert [(r["sae"], r["setting"], r["lr"], r["objective"], r["diverged_step"]) for r in rows] == [
        ("relu", "0.02", "1e-3", "0.31000", ""),
        ("relu", "0.02", "3e-3", "0.21000", "60"),
        ("topk", "32", "3e-3", "0.51000", ""),
        ("topk", "32", "1e-2", "0.41000", ""),
    ]
    # the diverged run has the lower objective but is not picked
    assert proc.stdout.strip().splitlines()[-1] == "blocks.24.attn.hook_z:relu=1e-3 blocks.24.attn.hook_z:topk=1e-2"
    # a second sweep appends to the same file; one whose columns differ is refused
    assert (
        sweep(
            tmp_path, GSAE=str(fake), LOG=str(log), RUNS=str(runs), ARCHS="relu", LRS="1e-3", CSV=str(table)
        ).returncode
        == 0
    )
    assert len(list(csv.DictReader(table.open()))) == 5
    other = tmp_path / "other.csv"
    other.write_text("site,sae,lr,objective,l0,baseline_lr,diverged_step\n")  # before the setting column
    refused = sweep(tmp_path, GSAE=str(fake), LOG=str(log), RUNS=str(runs), ARCHS="relu", LRS="1e-3", CSV=str(other))
    assert refused.returncode == 2 and "other columns" in refused.stderr


def test_two_values_for_one_architecture_are_refused(tmp_path):
    proc = sweep(tmp_path, GSAE="false", ARCHS="relu", COEFF="0.02 0.04")
    assert proc.returncode == 2 and "COEFF must give relu one value" in proc.stderr


def test_a_real_run_on_the_tiny_model(tmp_path):
    extra = [
        o for o in tiny(tmp_path / "out") if not o.startswith(("harvest.n_tokens", "train.n_tokens", "out_dir", "hook"))
    ]
    proc = sweep(
        tmp_path,
        HOOK=TINY_HOOK,
        ARCHS="topk",
        LRS="1e-3",
        COEFF="topk=8",
        TRAIN_TOKENS="8192",
        HARVEST_TOKENS="4064",
        OUT_DIR=str(tmp_path / "out"),
        EXTRA=" ".join(extra),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{TINY_HOOK}:topk=1e-3"
    assert "8.0" in proc.stdout.splitlines()[1]  # L0 = k
