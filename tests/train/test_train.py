"""`gsae train`: the real Trainer on the tiny model and on small synthetic stores. Outputs, the
saved SAE on raw activations, one hand-computed training step, resampling with its LR drop and
re-warm, rescale_shift against its relu baseline, and kill-and-resume to identical weights."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILL_AFTER_CHECKPOINT, gsae, tiny
from safetensors.torch import load_file

from gsae_cli import store
from gsae_cli.config import compose_config, effective_lr, train_dir
from gsae_cli.errors import StoreError
from gsae_cli.harvest.run import run_harvest
from gsae_cli.saes.io import load_sae
from gsae_cli.store import StoreWriter
from gsae_cli.train.schedule import ResampleSchedule, decay_factor, lr_factor, lr_multiplier
from gsae_cli.train.trainer import Trainer, input_scale, run_train

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def synthetic_store(path: Path, x: torch.Tensor, dtype: str = "float32", chunk_rows: int = 64) -> Path:
    """A complete activation store holding exactly the rows of x."""
    w = StoreWriter.open(path, x.shape[1], x.shape[0], dtype, chunk_rows, {}, fsync=False)
    w.append(x, torch.zeros(x.shape[0], dtype=torch.int32))
    w.finish({})
    w.close()
    return path


def small_cfg(out: Path, *extra: str):
    """A config for the Trainer on a synthetic store (its d_model comes from the store)."""
    return compose_config(
        [
            f"out_dir={out}",
            "device=cpu",
            "train.log_every=1",
            "train.checkpoint_every=1000",
            "train.shuffle_buffer_chunks=2",
            "train.norm_sample_tokens=64",
            "train.geometric_median_tokens=64",
            *extra,
        ]
    )


def metrics(directory: Path) -> list[dict]:
    return [json.loads(ln) for ln in (directory / "metrics.jsonl").read_text().splitlines()]


def sparse_rows(n: int, d: int, n_true: int, seed: int) -> torch.Tensor:
    """Rows that are sparse non-negative combinations of fixed unit directions plus a little
    noise: data an SAE can fit, and on which an L1 penalty visibly shrinks the codes."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(n_true, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n, n_true, generator=g) < 3.0 / n_true
    mags = 1.0 + 2.0 * torch.rand(n, n_true, generator=g)
    return (on * mags) @ dirs + 0.05 * torch.randn(n, d, generator=g) + 0.5


# ---------------------------------------------------------------------------------------------
# the CLI on the tiny model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gated", "relu"])
def test_train_writes_the_sae_directory(out, arch):
    proc = gsae("train", *tiny(out, f"sae={arch}"), "--json", check=True)
    summary = json.loads(proc.stdout)
    cfg = compose_config(tiny(out, f"sae={arch}"))
    path = train_dir(cfg)
    for name in ("sae.safetensors", "sae.json", "config.yaml", "summary.json", "metrics.jsonl", "COMPLETE"):
        assert (path / name).exists(), name
    assert not (path / "checkpoint.pt").exists()
    rows = metrics(path)
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    for key in ("recon", "sparsity", "l0", "frac_dead", "lr", "loss", "resampled"):
        assert key in rows[-1]
    if arch == "gated":
        assert "aux" in rows[-1]
    lr = {"gated": 3e-3, "relu": 3e-3}[arch]  # each architecture's own sae.lr
    assert effective_lr(cfg) == lr and summary["lr"] == lr
    # warm-up and re-warm over; the last update (step 15 of 16) is in the decay over the last
    # round(0.2 * 16) = 3 steps: (16 - 15) / 3 of the rate
    assert rows[-1]["lr"] == pytest.approx(lr / 3)
    assert rows[-2]["lr"] == pytest.approx(lr)  # step 11: before the decay
    # 16 steps: one resampling check, at step 4, logged in the row of steps 5-8
    assert summary["resample_schedule"]["interval_steps"] == 4
    assert all(e["step"] == 4 and e["n"] > 0 for e in summary["resamples"])
    assert [r["resampled"] for r in rows] == [0, sum(e["n"] for e in summary["resamples"]), 0, 0]
    assert summary["architecture"] == arch and summary["d_sae"] == 4 * 64
    assert "outlier_norm_threshold" not in json.loads((path / "sae.json").read_text())
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


def test_train_on_a_missing_sae_path_is_a_clear_error(out):
    proc = gsae("train", *tiny(out), f"sae.path={out}/nowhere")
    assert proc.returncode == 2 and "not a gsae SAE directory" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# pure functions: input scale, LR schedule, resampling schedule
# ---------------------------------------------------------------------------------------------


def test_input_scale_by_hand():
    # squared norms 1, 4, 4, 9, 10000: no row is left out (sinks are excluded at harvest now)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 3.0], [100.0, 0.0]])
    assert input_scale(x) == pytest.approx(((1 + 4 + 4 + 9 + 10000) / 5) ** 0.5, rel=1e-12)


@pytest.mark.parametrize(
    "bad,words",
    [
        (torch.zeros(4, 3), "only zero"),
        (torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), "NaN or infinite"),
        (torch.tensor([[1.0, float("inf")], [1.0, 1.0]]), "NaN or infinite"),
    ],
)
def test_input_scale_refuses_an_unusable_sample(bad, words):
    with pytest.raises(StoreError, match=words) as err:
        input_scale(bad, "The activation store at /somewhere")
    assert "/somewhere" in str(err.value) and "gsae harvest --force" in str(err.value)


def test_lr_warmup_is_linear_then_constant():
    assert [lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0) == 1.0


def test_lr_decays_linearly_to_zero_over_the_last_fraction():
    # 10 steps, last 20 %: steps 8 and 9 at 2/2 and 1/2 of ... (n - step) / 2 = 1.0, 0.5
    assert [decay_factor(s, 10, 0.2) for s in range(10)] == [1.0] * 8 + [1.0, 0.5]
    assert [decay_factor(s, 10, 0.5) for s in range(4, 10)] == [1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert decay_factor(9, 10, 0.0) == 1.0
    tc = compose_config(["train.lr_warmup_steps=0", "train.resample=false", "train.lr_decay_fraction=0.25"]).train
    assert [lr_multiplier(s, [], tc, 8) for s in range(8)] == [1, 1, 1, 1, 1, 1, 1.0, 0.5]
    # a resample's re-warm and the decay multiply
    on = compose_config(["train.lr_warmup_steps=0", "train.lr_decay_fraction=0.5"]).train
    assert lr_multiplier(90, [90], on, 100) == pytest.approx(0.1 * 10 / 50)


def test_resample_schedule_is_relative_to_the_run():
    tc = compose_config([]).train  # interval 0.1, stop 0.5, dead window 0.05, re-warm <= 1000
    s = ResampleSchedule.of(tc, 100)
    assert (s.interval_steps, s.dead_steps, s.rewarm_steps, s.lr_factor) == (10, 5, 5, 0.1)
    assert [k for k in range(101) if s.is_check(k)] == [10, 20, 30, 40]  # not 0, not >= 50
    long = ResampleSchedule.of(tc, 300_000)  # the paper's run length: its 1,000-step re-warm
    assert (long.interval_steps, long.dead_steps, long.rewarm_steps) == (30_000, 15_000, 1000)
    short = ResampleSchedule.of(tc, 3)  # everything at least one step
    assert (short.interval_steps, short.dead_steps, short.rewarm_steps) == (1, 1, 1)
    assert [k for k in range(4) if short.is_check(k)] == [1]
    # the default run (244 steps) and its doubled-token check (488) get the same four checks, at
    # the same fractions of the run, although 0.5 * 244 = 122 > 5 * round(24.4)
    assert ResampleSchedule.of(tc, 244).check_steps == (24, 49, 73, 98)
    assert ResampleSchedule.of(tc, 488).check_steps == (49, 98, 146, 195)


def test_lr_multiplier_drops_then_rewarms_on_a_cosine():
    tc = compose_config(["train.lr_warmup_steps=0"]).train
    # n_steps 100: re-warm over 5 steps. (1 - cos(pi k / 5)) / 2 for k = 1..4 is
    # 0.0954915, 0.3454915, 0.6545085, 0.9045085 (cos 36° = 0.8090170, cos 72° = 0.3090170).
    got = [lr_multiplier(s, [20], tc, 100) for s in range(18, 27)]
    expected = [
        1.0,
        1.0,
        0.1,
        0.1 + 0.9 * 0.0954915,
        0.1 + 0.9 * 0.3454915,
        0.1 + 0.9 * 0.6545085,
        0.1 + 0.9 * 0.9045085,
        1.0,
        1.0,
    ]
    assert got == pytest.approx(expected, abs=1e-7)
    # only the latest resample counts; an unrelated earlier one changes nothing
    assert [lr_multiplier(s, [10, 20], tc, 100) for s in range(18, 27)] == got
    # the linear warm-up multiplies in: step 1 of a 4-step warm-up is at 0.5
    tc4 = compose_config(["train.lr_warmup_steps=4"]).train
    assert lr_multiplier(1, [1], tc4, 100) == pytest.approx(0.5 * 0.1)
    assert lr_multiplier(2, [1], tc4, 100) == pytest.approx(0.75 * (0.1 + 0.9 * 0.0954915))
    off = compose_config(["train.resample=false", "train.lr_warmup_steps=0"]).train
    assert lr_multiplier(20, [20], off, 100) == 1.0


# ---------------------------------------------------------------------------------------------
# the Trainer on synthetic stores
# ---------------------------------------------------------------------------------------------


def _relu_grads(p: dict, x: torch.Tensor, lam: float) -> dict:
    """Gradients of L = mean_b ||x - x_hat||² + λ mean_b Σ_i f_i for the relu SAE, by hand:
    e = x_hat - x; dL/dx_hat = 2e/B; dW_dec = fᵀ(2e/B); dL/df = (2e/B) W_decᵀ + λ/B;
    dpi = dL/df ⊙ 1[pi > 0]; dW_enc = x_cᵀ dpi; db_enc = Σ_b dpi; db_dec = Σ_b 2e/B - Σ_b dpi W_encᵀ."""
    B = x.shape[0]
    xc = x - p["b_dec"]
    pi = xc @ p["W_enc"] + p["b_enc"]
    f = pi.clamp_min(0)
    d_xhat = 2 * (f @ p["W_dec"] + p["b_dec"] - x) / B
    dpi = (d_xhat @ p["W_dec"].T + lam / B) * (pi > 0)
    return {
        "W_enc": xc.T @ dpi,
        "b_enc": dpi.sum(0),
        "W_dec": f.T @ d_xhat,
        "b_dec": d_xhat.sum(0) - dpi.sum(0) @ p["W_enc"].T,
    }


def test_trainer_step_matches_a_hand_computed_two_steps(tmp_path):
    """Two steps of the real Trainer (relu, d_model 4, d_sae 8, one batch = the whole store)
    against the recipe by hand: backward; remove from each W_dec row's gradient its component
    along the row; Adam with betas (0, 0.999) at LR x warm-up; renormalise W_dec's rows. The
    second step tells the betas apart (the first Adam step is lr·g/(|g| + eps) for any betas)."""
    x_raw = sparse_rows(8, 4, 6, seed=1)
    path = synthetic_store(tmp_path / "store", x_raw)
    lr, lam = 0.01, 0.1
    cfg = small_cfg(
        tmp_path / "out",
        "sae=relu",
        "sae.expansion_factor=2",
        f"train.lr={lr}",
        f"sae.l1_coefficient={lam}",
        "train.batch_size=8",
        "train.n_tokens=16",
        "train.lr_warmup_steps=2",
        "train.resample=false",
    )
    trainer = Trainer(cfg, tmp_path / "sae", path, None)
    assert trainer.opt.defaults["betas"] == (0.0, 0.999)
    assert trainer.scale == pytest.approx(float(x_raw.double().pow(2).sum(1).mean().sqrt()), rel=1e-6)
    start = {n: t.detach().double().clone() for n, t in trainer.sae.named_parameters()}
    batches = []  # what the Trainer trained on (the shuffle may mix the two epochs' rows)
    loss = trainer.sae.loss
    trainer.sae.loss = lambda xb, l1, dead=None: (batches.append(xb.detach().double()), loss(xb, l1, dead))[1]
    trainer.fit()
    rows = {tuple(r) for r in (x_raw / trainer.scale).tolist()}
    assert len(batches) == 2 and all(tuple(r) in rows for b in batches for r in b.tolist())

    p = dict(start)
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    b2, eps = 0.999, 1e-8
    for step, warm, x in ((1, 0.5, batches[0]), (2, 1.0, batches[1])):
        g = _relu_grads(p, x, lam)
        W = p["W_dec"]
        g["W_dec"] = g["W_dec"] - (g["W_dec"] * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True) * W
        for n in p:  # beta1 = 0: the first moment is this step's gradient
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            p[n] = p[n] - lr * warm * g[n] / ((v[n] / (1 - b2**step)).sqrt() + eps)
        p["W_dec"] = p["W_dec"] / p["W_dec"].norm(dim=1, keepdim=True)
    saved = load_sae(tmp_path / "sae")
    s = trainer.scale  # the saved SAE has its biases folded into raw units
    expected = {"W_enc": p["W_enc"], "b_enc": p["b_enc"] * s, "W_dec": p["W_dec"], "b_dec": p["b_dec"] * s}
    for n, want in expected.items():
        assert torch.allclose(getattr(saved, n).double(), want, rtol=1e-5, atol=1e-6), n
    # the test is sensitive: the steps moved every tensor by far more than the tolerance
    assert all((p[n] - start[n]).abs().max() > 1e-3 for n in p)
    assert [r["lr"] for r in metrics(tmp_path / "sae")] == [lr * 0.5, lr]


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_trainer_projects_decoder_grads_before_adam_and_renormalises_after(tmp_path, arch):
    path = synthetic_store(tmp_path / "store", sparse_rows(256, 8, 12, seed=2))
    cfg = small_cfg(
        tmp_path / "out",
        f"sae={arch}",
        "sae.expansion_factor=2",
        "train.batch_size=64",
        "train.n_tokens=320",
        "train.lr=0.01",
        "train.resample=false",
    )
    trainer = Trainer(cfg, tmp_path / "sae", path, None)
    seen = []

    def before_adam(opt, args, kwargs):
        W = trainer.sae.W_dec
        assert torch.allclose((W.grad * W).sum(1), torch.zeros(W.shape[0]), atol=1e-7)
        assert torch.allclose(W.norm(dim=1), torch.ones(W.shape[0]), atol=1e-6)  # renormalised last step
        seen.append(trainer.step)

    def after_adam(opt, args, kwargs):
        assert not torch.allclose(trainer.sae.W_dec.norm(dim=1), torch.ones(trainer.sae.d_sae), atol=1e-6)

    trainer.opt.register_step_pre_hook(before_adam)
    trainer.opt.register_step_post_hook(after_adam)
    trainer.fit()
    assert seen == [0, 1, 2, 3, 4]
    assert torch.allclose(load_sae(tmp_path / "sae").W_dec.norm(dim=1), torch.ones(16), atol=1e-6)


def test_trainer_feeds_a_bf16_store_exactly_upcast_and_scaled(tmp_path):
    x = sparse_rows(16, 4, 6, seed=3) * 1.37  # values that bfloat16 rounds
    path = synthetic_store(tmp_path / "store", x, dtype="bfloat16", chunk_rows=8)
    stored = store.open_store(path).read_rows(0, 16).float()
    assert not torch.equal(stored, x) and torch.allclose(stored, x, rtol=1e-2)
    cfg = small_cfg(tmp_path / "out", "sae=relu", "train.batch_size=16", "train.n_tokens=16", "train.resample=false")
    trainer = Trainer(cfg, tmp_path / "sae", path, None)
    assert trainer.scale == pytest.approx(float(stored.double().pow(2).sum(1).mean().sqrt()), rel=1e-6)
    batches = []
    loss = trainer.sae.loss
    trainer.sae.loss = lambda xb, l1, dead=None: (batches.append(xb.detach().clone()), loss(xb, l1, dead))[1]
    trainer.fit()
    want = stored / trainer.scale
    assert len(batches) == 1
    b = batches[0]  # one epoch in one batch: the whole store, shuffled, so compare sorted rows
    assert b.dtype == torch.float32 and b.shape == (16, 4)
    assert torch.equal(b[b[:, 0].argsort()], want[want[:, 0].argsort()])


@pytest.mark.parametrize("scale", [0.37, 3.1, 117.0, 1 / 3])
def test_rescale_shift_saves_the_relu_tensors_bit_for_bit(tmp_path, scale):
    base = sparse_rows(512, 8, 12, seed=4)
    x = base * (scale / float(base.pow(2).sum(1).mean().sqrt()))  # so that the input scale is ~scale
    path = synthetic_store(tmp_path / "store", x)
    common = (
        "train.batch_size=64",
        "train.n_tokens=640",
        "train.resample=false",
        "sae.expansion_factor=2",
        "train.norm_sample_tokens=512",
    )  # the whole store: the scale is the one set above
    relu_dir, rs_dir = tmp_path / "relu", tmp_path / "rs"
    relu_trainer = Trainer(small_cfg(tmp_path / "out", "sae=relu", *common), relu_dir, path, None)
    assert relu_trainer.scale == pytest.approx(scale, rel=1e-4)
    relu_trainer.fit()
    Trainer(small_cfg(tmp_path / "out", "sae=rescale_shift", *common), rs_dir, path, relu_dir).fit()
    relu_w = load_file(str(relu_dir / "sae.safetensors"))
    rs_w = load_file(str(rs_dir / "sae.safetensors"))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(relu_w[name], rs_w[name]), name
    assert not torch.equal(rs_w["r_mag"], torch.zeros_like(rs_w["r_mag"]))
    assert not torch.equal(rs_w["b_mag"], relu_w["b_enc"])


def test_rescale_shift_beats_its_relu_baseline_on_held_out_rows(tmp_path):
    path = synthetic_store(tmp_path / "store", sparse_rows(4096, 16, 24, seed=5), chunk_rows=512)
    common = (
        "train.batch_size=256",
        "train.n_tokens=51200",
        "sae.expansion_factor=2",
        "sae.l1_coefficient=0.3",
        "train.lr=0.003",
        "train.resample=false",
    )
    Trainer(small_cfg(tmp_path / "out", "sae=relu", *common), tmp_path / "relu", path, None).fit()
    Trainer(small_cfg(tmp_path / "out", "sae=rescale_shift", *common), tmp_path / "rs", path, tmp_path / "relu").fit()
    held_out = sparse_rows(2048, 16, 24, seed=6)  # same distribution, rows the training never saw

    def mse_and_gamma(sae_dir):
        with torch.no_grad():
            x_hat = load_sae(sae_dir)(held_out).double()
        x = held_out.double()
        return float((x - x_hat).pow(2).sum(1).mean()), float(x_hat.pow(2).sum(1).mean() / (x_hat * x).sum(1).mean())

    mse_relu, gamma_relu = mse_and_gamma(tmp_path / "relu")
    mse_rs, gamma_rs = mse_and_gamma(tmp_path / "rs")
    assert gamma_relu < 0.97  # the L1 penalty shrinks the relu SAE's reconstructions
    assert abs(gamma_rs - 1) < 0.5 * abs(gamma_relu - 1)
    assert mse_rs < 0.9 * mse_relu


# ---------------------------------------------------------------------------------------------
# resampling, for real, on the tiny model
# ---------------------------------------------------------------------------------------------


# 80 steps of 64 rows with a strong L1 penalty: small batches and sparse codes leave some features
# silent for 4 steps in a row, so the checks at 16, 24 and 32 find dead features to resample.
RESAMPLING = (
    "train.n_tokens=5120",
    "train.batch_size=64",
    "train.lr=0.01",
    "sae.l1_coefficient=1.0",
    "train.log_every=1",
    "train.resample_interval=0.1",
    "train.resample_dead_window=0.05",
)


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_resampling_drops_the_lr_and_rewarms_it(out, arch):
    """80 steps: checks at 8, 16, 24 and 32, dead = silent for 4 steps, re-warm over 4 steps.
    The first update of a resampled feature starts from zeroed Adam moments (beta1 = 0), so
    each element moves by lr_t·|g| / (|g|·sqrt((1 - b2)/(1 - b2^t)) + eps) <= lr_t·sqrt((1 -
    b2^t)/(1 - b2)), within float error of the bound wherever |g| >> eps: a full LR would
    exceed it tenfold, stale moments would fall short of it."""
    args = tiny(out, f"sae={arch}", *RESAMPLING)
    cfg = compose_config(args)
    store_path = run_harvest(cfg)[0].path
    directory = train_dir(cfg)
    trainer = Trainer(cfg, directory, store_path, None)
    lr, f0, b2 = effective_lr(cfg), cfg.train.resample_lr_factor, cfg.train.adam_beta2
    rewarm = trainer.resample_schedule.rewarm_steps
    assert (trainer.n_steps, trainer.resample_schedule.interval_steps, rewarm) == (80, 8, 4)

    dead_at: dict[int, torch.Tensor] = {}
    resample = trainer.sae.resample_

    def spy(dead, x, generator=None):
        dead_at[trainer.step] = dead.clone()
        return resample(dead, x, generator=generator)

    trainer.sae.resample_ = spy
    first_updates = []
    params = dict(trainer.sae.named_parameters())

    def before(opt, args, kwargs):
        if trainer.step in dead_at:
            before.snapshot = {n: p.detach().clone() for n, p in params.items()}

    def after(opt, args, kwargs):
        if trainer.step not in dead_at:
            return
        moved = max(
            float((params[sl.name].detach() - before.snapshot[sl.name]).index_select(sl.dim, sl.index).abs().max())
            for sl in trainer.sae.feature_slices(dead_at[trainer.step])
        )
        t = int(opt.state[params["W_dec"]]["step"])
        first_updates.append((opt.param_groups[0]["lr"], t, moved))

    trainer.opt.register_step_pre_hook(before)
    trainer.opt.register_step_post_hook(after)
    summary = trainer.fit()

    events = summary["resamples"]
    assert events and all(e["step"] in (8, 16, 24, 32) and e["n"] > 0 for e in events)
    assert json.loads((directory / "summary.json").read_text())["resamples"] == events
    rows = {r["step"]: r for r in metrics(directory)}
    for e in events:
        r = e["step"]
        assert rows[r + 1]["resampled"] == e["n"]  # the row of the window holding update r
        # row k+1 logs the LR of update k: the closed form, 0.1x at r, back to 1x at r + rewarm
        trace = [rows[r + 1 + k]["lr"] for k in range(rewarm + 1)]
        closed = [lr * (f0 + (1 - f0) * (1 - math.cos(math.pi * k / rewarm)) / 2) for k in range(rewarm)] + [lr]
        assert trace == pytest.approx(closed, rel=1e-12)
        assert trace[0] == pytest.approx(0.1 * lr) and trace[2] == pytest.approx(0.55 * lr)
        assert rows[r]["lr"] == pytest.approx(lr)  # full LR right before the drop
    assert sum(r["resampled"] for r in rows.values()) == sum(e["n"] for e in events)
    assert len(first_updates) == len(events)
    for lr_t, t, moved in first_updates:
        assert lr_t == pytest.approx(f0 * lr, rel=1e-12)
        bound = lr_t * math.sqrt((1 - b2**t) / (1 - b2))
        assert 0.999 * bound <= moved <= bound * (1 + 1e-4), (moved, bound)  # float32 Δ: ~1e-5 relative


# ---------------------------------------------------------------------------------------------
# kill and resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_training_resumes_to_identical_weights(out, tmp_path):
    """Killed two logged steps after a checkpoint saved in an LR re-warm: the resume restores the
    resample steps (the LR depends on them) and drops the two log lines written after it."""
    args = tiny(out, *RESAMPLING, "train.checkpoint_every=3", f"store_url={out / 'harvest'}")  # one store for both runs
    gsae("harvest", *args, check=True)
    directory = train_dir(compose_config(args))
    env = dict(os.environ, HF_HUB_OFFLINE="1", GSAE_TEST_ARM="rewarm")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHECKPOINT, *args], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (directory / "checkpoint.pt").exists() and not (directory / "COMPLETE").exists()
    checkpoint_step = torch.load(directory / "checkpoint.pt", weights_only=False)["step"]
    assert [r["step"] for r in metrics(directory)][-1] == checkpoint_step + 2
    resumed = gsae("train", *args, check=True)
    assert "resuming training" in resumed.stderr
    fresh_args = [a if not a.startswith("out_dir=") else f"out_dir={tmp_path / 'fresh'}" for a in args]
    fresh = Path(gsae("train", *fresh_args, check=True).stdout.strip())
    a = load_file(str(directory / "sae.safetensors"))
    b = load_file(str(fresh / "sae.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows, fresh_rows = metrics(directory), metrics(fresh)
    assert [r["step"] for r in rows] == list(range(1, 81))  # no duplicated or missing log lines
    for key in ("lr", "resampled", "loss"):
        assert [r[key] for r in rows] == [r[key] for r in fresh_rows], key
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["resamples"] == json.loads((fresh / "summary.json").read_text())["resamples"]
