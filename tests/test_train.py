"""`gsae train` end to end on the tiny model: outputs, the saved SAE on raw activations, the
training recipe's invariants, and kill-and-resume to identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import GSAE, gsae, tiny
from gsae_cli import store
from gsae_cli.config import compose_config, train_dir
from gsae_cli.sae_io import load_sae
from gsae_cli.train import drop_outliers, input_scale, lr_factor, run_train


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_train_writes_the_sae_directory(out, arch):
    proc = gsae("train", *tiny(out, f"sae={arch}"), "--json", check=True)
    summary = json.loads(proc.stdout)
    path = train_dir(compose_config(tiny(out, f"sae={arch}")))
    for name in ("sae.safetensors", "sae.json", "config.yaml", "summary.json", "metrics.jsonl", "COMPLETE"):
        assert (path / name).exists(), name
    assert not (path / "checkpoint.pt").exists()
    rows = [json.loads(ln) for ln in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    for key in ("recon", "sparsity", "l0", "frac_dead", "lr", "loss"):
        assert key in rows[-1]
    if arch == "gated":
        assert "aux" in rows[-1]
    assert rows[-1]["lr"] == pytest.approx(1e-3)  # warm-up over
    assert summary["architecture"] == arch and summary["d_sae"] == 4 * 64
    again = gsae("train", *tiny(out, f"sae={arch}"), check=True)
    assert "reusing" in again.stderr and again.stdout.strip() == str(path)


def test_saved_sae_works_on_raw_activations_and_has_unit_decoder_rows(out):
    cfg = compose_config(tiny(out, "train.lr=0.01", "train.n_tokens=32768", "sae.l1_coefficient=0.01"))
    result = run_train(cfg)
    sae = load_sae(result.path)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5)
    s = store.open_store(result.summary["store"])
    x = s.read_rows(0, 512).float()
    x_hat = sae(x)
    # on raw activations, the reconstruction is far better than predicting the mean
    mse = (x - x_hat).pow(2).sum(1).mean()
    var = (x - x.mean(0)).pow(2).sum(1).mean()
    assert mse < 0.5 * var
    # and it equals scale * (the SAE in normalised units)(x / scale)
    scale = result.summary["input_scale_folded"]
    norm_sae = load_sae(result.path)
    norm_sae.fold_input_scale_(1 / scale)
    assert torch.allclose(scale * norm_sae(x / scale), x_hat, atol=1e-4, rtol=1e-4)


def test_rescale_shift_reuses_the_relu_sae_of_the_same_config(out):
    relu = run_train(compose_config(tiny(out, "sae=relu")))
    rs = run_train(compose_config(tiny(out, "sae=rescale_shift")))
    relu_w = load_file(str(relu.path / "sae.safetensors"))
    rs_w = load_file(str(rs.path / "sae.safetensors"))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(relu_w[name], rs_w[name]), name  # frozen
    assert not torch.equal(rs_w["r_mag"], torch.zeros_like(rs_w["r_mag"]))  # trained


def test_lr_warmup_is_linear_then_constant():
    assert [lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0


def test_killed_training_resumes_to_identical_weights(out, tmp_path):
    args = tiny(out, "train.n_tokens=40960", "train.checkpoint_every=3", "train.log_every=1")
    gsae("harvest", *args, check=True)  # harvest first so the kill lands in training
    directory = train_dir(compose_config(args))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([*GSAE, "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (directory / "checkpoint.pt").exists():
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (directory / "checkpoint.pt").exists() and not (directory / "COMPLETE").exists()
    resumed = gsae("train", *args, check=True)
    assert "resuming training" in resumed.stderr
    fresh_args = [a if not a.startswith("out_dir=") else f"out_dir={tmp_path / 'fresh'}" for a in args]
    fresh = gsae("train", *fresh_args, check=True)
    a = load_file(str(directory / "sae.safetensors"))
    b = load_file(os.path.join(fresh.stdout.strip(), "sae.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(ln)["step"] for ln in (directory / "metrics.jsonl").read_text().splitlines()]
    assert log == list(range(1, 81))  # no duplicated or missing log lines after the resume


def test_train_on_a_missing_sae_path_is_a_clear_error(out):
    proc = gsae("train", *tiny(out), f"sae.path={out}/nowhere")
    assert proc.returncode == 2 and "not a gsae SAE directory" in proc.stderr and "Traceback" not in proc.stderr


def test_input_scale_leaves_out_attention_sink_outliers():
    # norms 1, 2, 2, 3 and one sink of norm 100: median 2, threshold 10 x 2 = 20
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 3.0], [100.0, 0.0]])
    scale, threshold = input_scale(x, 10.0)
    assert threshold == 20.0
    assert scale == pytest.approx(((1 + 4 + 4 + 9) / 4) ** 0.5)
    assert drop_outliers(x, threshold).shape[0] == 4
    scale_all, threshold_all = input_scale(x, 0.0)
    assert threshold_all == float("inf") and scale_all == pytest.approx(((18 + 10000) / 5) ** 0.5)
    assert drop_outliers(x, threshold_all).shape[0] == 5
