"""Unit tests of gsae_cli.metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from gsae_cli.metrics import (
    ReconstructionStats,
    density_histogram,
    explained_variance,
    feature_density,
    frac_dead,
    frac_dense,
    kl_div,
    kl_div_per_position,
    l0,
    loss_recovered,
    nmse,
    relative_reconstruction_bias,
)


def t(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_l0_counts_nonzeros_per_row():
    f = t([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    assert l0(f) == pytest.approx(1.0)  # (2 + 0 + 1) / 3
    assert l0(f != 0) == pytest.approx(1.0)  # an activity mask works too


def test_perfect_reconstruction():
    x = t([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    assert nmse(x, x) == 0.0
    assert explained_variance(x, x) == 1.0
    assert relative_reconstruction_bias(x, x) == pytest.approx(1.0, abs=1e-15)


def test_shrunk_reconstruction_gives_gamma_of_the_shrinkage():
    x = t([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    # gamma = E||0.8x||² / E[0.8x·x] = 0.64 / 0.8 = 0.8
    assert relative_reconstruction_bias(x, 0.8 * x) == pytest.approx(0.8, abs=1e-7)
    assert relative_reconstruction_bias(x, 1.25 * x) == pytest.approx(1.25, abs=1e-7)


def test_explained_variance_is_about_the_mean():
    x = t([[2.0, 0.0], [4.0, 0.0]])
    x_hat = t([[2.5, 0.0], [3.5, 0.0]])
    # E||x - x_hat||² = 0.25; E||x - E[x]||² = 1 (mean [3, 0]) -> nmse 0.25, EV 0.75.
    # The about-zero formula would give 1 - 0.25 / E||x||² = 1 - 0.25 / 10 = 0.975.
    assert nmse(x, x_hat) == pytest.approx(0.25)
    assert explained_variance(x, x_hat) == pytest.approx(0.75)
    assert explained_variance(x, x_hat) != pytest.approx(0.975)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        nmse(torch.zeros(3, 2), torch.zeros(3, 3))


def test_loss_recovered():
    assert loss_recovered(2.0, 2.0, 5.0) == 1.0  # spliced as good as clean
    assert loss_recovered(2.0, 5.0, 5.0) == 0.0  # as bad as zero-ablation
    assert loss_recovered(2.0, 3.0, 5.0) == pytest.approx(2.0 / 3.0)
    assert math.isnan(loss_recovered(2.0, 2.5, 2.0))


def test_kl_div_identical_logits_is_zero():
    logits = torch.randn(3, 5, 11)
    assert kl_div(logits, logits).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_div_direction_by_hand():
    # position 0: P_clean = softmax([0, 0]) = [.5, .5]; P_spliced = softmax([ln 3, 0]) = [.75, .25]
    # KL(P_clean ‖ P_spliced) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3) = 0.1438410362
    # (the reverse direction would be .75 ln 1.5 + .25 ln .5 = 0.1308120...)
    # position 1: identical -> 0
    clean = t([[0.0, 0.0], [1.0, -1.0]])
    spliced = t([[math.log(3.0), 0.0], [1.0, -1.0]])
    per_pos = kl_div_per_position(clean, spliced)
    assert per_pos.tolist() == pytest.approx([0.1438410362, 0.0], abs=1e-6)
    assert kl_div(clean, spliced).item() == pytest.approx(0.1438410362 / 2, abs=1e-6)


def _hand_f() -> torch.Tensor:
    # 20 tokens, 4 features firing on 0, 1, 2, 3 tokens: densities 0, .05, .10, .15
    f = torch.zeros(20, 4)
    f[0, 1] = 1.0
    f[0:2, 2] = 2.0
    f[5:8, 3] = 0.5
    return f


def test_frac_dead_and_frac_dense_by_hand():
    freqs = feature_density(_hand_f())
    assert freqs.tolist() == pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert frac_dead(freqs) == 0.25
    assert frac_dense(freqs) == 0.25  # only 15 %; exactly 10 % is not "> 10 %"


def test_density_histogram():
    freqs = torch.tensor([0.0, 0.0, 10**-2.5, 10**-1.5, 10**-0.5, 10**-0.4], dtype=torch.float64)
    hist = density_histogram(freqs, bins=3)
    assert hist.edges.tolist() == pytest.approx([-3.0, -2.0, -1.0, 0.0])  # default [floor(min), 0]
    assert hist.counts.tolist() == [1, 1, 2]
    assert hist.n_dead == 2


def test_reconstruction_stats_on_hand_data():
    stats = ReconstructionStats()
    x = t([[2.0, 0.0], [4.0, 0.0]])
    stats.update(x[:1], t([[2.5, 0.0]]), t([[1.0, 0.0, 0.0]]))
    stats.update(x[1:], t([[3.5, 0.0]]), t([[1.0, 2.0, 0.0]]))
    r = stats.result()
    assert r["nmse"] == pytest.approx(0.25)
    assert r["explained_variance"] == pytest.approx(0.75)
    assert r["l0"] == pytest.approx(1.5)
    assert r["frac_dead"] == pytest.approx(1.0 / 3.0)
    assert r["frac_dense"] == pytest.approx(2.0 / 3.0)
    # gamma = (6.25 + 12.25) / (5 + 14) = 18.5 / 19
    assert r["relative_reconstruction_bias"] == pytest.approx(18.5 / 19.0)


def test_reconstruction_stats_streamed_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(203, 6, generator=g) + 3.0  # nonzero mean
    x_hat = 0.9 * x + 0.1 * torch.randn(203, 6, generator=g)
    f = torch.relu(torch.randn(203, 10, generator=g) - 1.0)
    f[:, 4] = 0.0  # a dead feature
    f[:, 7] = 1.0  # a dense one
    stats = ReconstructionStats()
    for lo, hi in ((0, 1), (1, 50), (50, 128), (128, 203)):
        stats.update(x[lo:hi], x_hat[lo:hi], f[lo:hi])
    r = stats.result()
    freqs = feature_density(f)
    assert r["l0"] == pytest.approx(l0(f), rel=1e-12)
    assert r["nmse"] == pytest.approx(nmse(x, x_hat), rel=1e-9)
    assert r["explained_variance"] == pytest.approx(explained_variance(x, x_hat), rel=1e-9)
    assert r["relative_reconstruction_bias"] == pytest.approx(
        relative_reconstruction_bias(x, x_hat), rel=1e-12
    )
    assert torch.allclose(r["feature_density"], freqs, rtol=0, atol=1e-15)
    assert r["frac_dead"] == frac_dead(freqs) == pytest.approx(0.1)
    assert r["frac_dense"] == frac_dense(freqs)
    assert r["frac_dense"] >= 0.1


def test_reconstruction_stats_requires_data():
    with pytest.raises(ValueError):
        ReconstructionStats().result()
