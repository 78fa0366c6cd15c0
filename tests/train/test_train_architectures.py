"""`gsae train` for JumpReLU, TopK, BatchTopK and the scaled ReLU on the tiny model: what each
logs, that only the resampling architectures resample, AuxK's dead window, JumpReLU's λ warm-up,
BatchTopK's inference threshold in the saved SAE, and kill-and-resume to identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILL_AFTER_CHECKPOINT, gsae, tiny
from safetensors.torch import load_file

from gsae_cli.config import compose_config, train_dir
from gsae_cli.saes.io import load_sae
from gsae_cli.train.schedule import aux_dead_steps, sparsity_warmup_steps

NEW = ["jumprelu", "topk", "batchtopk", "scaled_relu"]
TERMS = {
    "jumprelu": {"recon", "sparsity"},
    "topk": {"recon", "aux"},
    "batchtopk": {"recon", "aux"},
    "scaled_relu": {"recon", "sparsity", "aux"},
}


def metrics(directory: Path) -> list[dict]:
    return [json.loads(ln) for ln in (directory / "metrics.jsonl").read_text().splitlines()]


def test_sparsity_warmup_and_aux_dead_window_by_hand():
    cfg = compose_config(["sae=jumprelu"])
    assert sparsity_warmup_steps(cfg.sae, cfg.train, 244) == 25  # ceil(24.4) < 10,000
    assert sparsity_warmup_steps(cfg.sae, cfg.train, 300_000) == 10_000  # the paper's
    relu = compose_config(["sae=relu", "train.l1_warmup_steps=7"])
    assert sparsity_warmup_steps(relu.sae, relu.train, 244) == 7
    topk = compose_config(["sae=topk"])
    assert aux_dead_steps(topk.sae, topk.train, 244) == 12  # 5 % of the run < 10M / 4096 = 2,442
    assert aux_dead_steps(topk.sae, topk.train, 300_000) == 2442  # the paper's 10M tokens
    assert aux_dead_steps(topk.sae, topk.train, 10) == 1


@pytest.mark.parametrize("arch", NEW)
def test_each_architecture_trains_through_the_cli(out, arch):
    args = tiny(out, f"sae={arch}", "sae.k=8", "train.resample_dead_window=0.125")
    summary = json.loads(gsae("train", *args, "--json", check=True).stdout)
    path = train_dir(compose_config(args))
    rows = metrics(path)
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    assert TERMS[arch] <= set(rows[-1]) and not ({"recon", "sparsity", "aux"} - TERMS[arch]) & set(rows[-1])
    assert summary["architecture"] == arch
    if arch in ("jumprelu", "topk", "batchtopk"):  # their papers do not resample
        assert summary["resample_schedule"] is None and summary["resamples"] == []
        assert all(r["resampled"] == 0 for r in rows)
    else:
        assert summary["resample_schedule"] is not None
    if arch in ("topk", "batchtopk"):
        assert summary["k"] == 8 and summary["l1_coefficient"] is None
        assert all(r["l1_coefficient"] == 0.0 for r in rows)  # no λ
        assert all(7.0 < r["l0"] <= 8.0 + 1e-6 for r in rows)  # k per token (on average for batchtopk)
    if arch == "jumprelu":  # λ warms up over ceil(0.1 * 16) = 2 steps, so every logged row has it in full
        assert all(r["l1_coefficient"] == pytest.approx(compose_config(args).sae.l1_coefficient) for r in rows)
    sae = load_sae(path)
    x = torch.randn(32, 64)
    with torch.no_grad():
        assert sae.encode(x).shape == (32, 4 * 64) and torch.isfinite(sae(x)).all()
    if arch == "batchtopk":
        # θ: the mean of the last round(0.1 * 16) = 2 batches' smallest kept activations, in raw units
        assert int(sae.threshold_count) == 2 and float(sae.threshold) > 0
        with torch.no_grad():  # inference: one row's features do not depend on the rest of the batch
            one, all_ = sae.encode(x[:1]), sae.encode(x)[:1]  # (a matmul of 1 row vs 32: float rounding)
            assert torch.equal(one > 0, all_ > 0) and torch.allclose(one, all_, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_trains_latents_silent_for_the_dead_window(out, arch):
    """1,024 latents, k = 1: a batch of 512 rows fires at most 512 of them, so with a dead window
    of min(10M tokens, 12.5 % of 16 steps) = 2 steps some are dead at every step after the first
    two, and AuxK's term is positive exactly from then on."""
    args = tiny(out, f"sae={arch}", "sae.k=1", "sae.expansion_factor=16", "train.log_every=1")
    args += ["train.resample_dead_window=0.125"]
    gsae("train", *args, check=True)
    rows = metrics(train_dir(compose_config(args)))
    assert [r["aux"] for r in rows[:2]] == [0.0, 0.0]
    assert all(r["aux"] > 0 for r in rows[2:])


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW)
def test_killed_training_resumes_to_identical_weights(out, tmp_path, arch):
    args = tiny(
        out, f"sae={arch}", "sae.k=8", "train.n_tokens=40960", "train.checkpoint_every=3", "train.log_every=1"
    )  # 80 steps: batchtopk's window is steps 72-79, the kill after the checkpoint at 72
    args.append(f"store_url={out / 'harvest'}")  # the fresh run below reads the same store
    gsae("harvest", *args, check=True)
    directory = train_dir(compose_config(args))
    env = dict(os.environ, HF_HUB_OFFLINE="1", GSAE_TEST_ARM="72")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHECKPOINT, *args], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (directory / "checkpoint.pt").exists() and not (directory / "COMPLETE").exists()
    resumed = gsae("train", *args, check=True)
    assert "resuming training at step 72" in resumed.stderr
    fresh_args = [a if not a.startswith("out_dir=") else f"out_dir={tmp_path / 'fresh'}" for a in args]
    fresh = Path(gsae("train", *fresh_args, check=True).stdout.strip())
    a, b = load_file(str(directory / "sae.safetensors")), load_file(str(fresh / "sae.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in metrics(directory)] == [r["loss"] for r in metrics(fresh)]
