"""Unit tests of gsae_cli.evaluate.metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from gsae_cli.evaluate.metrics import (
    WINDOW_SCALARS,
    WINDOW_VECTORS,
    bootstrap_indices,
    bootstrap_intervals,
    density_histogram,
    explained_variance,
    feature_density,
    fire_fractions,
    frac_dead,
    frac_dense,
    kl_div,
    kl_div_per_position,
    l0,
    loss_recovered,
    nmse,
    percentile_interval,
    relative_reconstruction_bias,
    relative_reconstruction_bias_centred,
    window_metrics,
    window_multiplicity,
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


# ---- centred γ ---------------------------------------------------------------------------------


def test_centred_gamma_by_hand():
    # x = [0, 0], [2, 0] (mean [1, 0]); x_hat = [1, 1], [2, 1] (mean [1.5, 1])
    # centred: Σ||x_hat - mean||² = 0.25 + 0.25 = 0.5; Σ (x_hat - mean)·(x - mean) = 0.5 + 0.5 = 1
    # raw:     Σ||x_hat||² = 2 + 5 = 7;                Σ x_hat·x = 0 + 4 = 4
    x = t([[0.0, 0.0], [2.0, 0.0]])
    x_hat = t([[1.0, 1.0], [2.0, 1.0]])
    assert relative_reconstruction_bias_centred(x, x_hat) == pytest.approx(0.5, abs=1e-15)
    assert relative_reconstruction_bias(x, x_hat) == pytest.approx(7.0 / 4.0, abs=1e-15)


def test_centred_gamma_sees_shrinkage_that_an_offset_hides():
    """x_hat = 0.8 x + c: exactly 0.8 centred; raw γ is pulled towards 1 by the reproduced mean."""
    g = torch.Generator().manual_seed(3)
    mean = torch.full((8,), 2.0)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64) + mean
    x_hat = 0.8 * x + 0.2 * mean  # shrinks the deviations, keeps the mean
    assert relative_reconstruction_bias_centred(x, x_hat) == pytest.approx(0.8, abs=1e-12)
    raw = relative_reconstruction_bias(x, x_hat)
    assert abs(raw - 0.8) > 0.05 and raw < 1.0


# ---- per-window sums ---------------------------------------------------------------------------


def _windows(n_windows: int = 6, rows: int = 7, d: int = 5, d_sae: int = 9, seed: int = 0):
    """Random per-window rows, and their sums in metrics.WINDOW_SCALARS / WINDOW_VECTORS form."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_windows, rows, d, generator=g, dtype=torch.float64) + 2.0
    x_hat = 0.7 * x + 0.3 * torch.randn(n_windows, rows, d, generator=g, dtype=torch.float64) + 0.4
    active = torch.rand(n_windows, rows, d_sae, generator=g) < 0.3
    active[:, :, :2] = False  # feature 0 dead...
    active[0, 0, 1] = True  # ...feature 1 fires once, in window 0 only
    active[:, :, 2] = True  # dense
    gate = active | (torch.rand(n_windows, rows, d_sae, generator=g) < 0.1)  # open where f may be 0
    nll = torch.rand(4, n_windows, generator=g, dtype=torch.float64) * 10 + torch.tensor([[0.0], [1.0], [5.0], [3.0]])
    sums = {
        "n_pred": torch.full((n_windows,), 8.0, dtype=torch.float64),
        "nll_clean": nll[0],
        "nll_spliced": nll[1],
        "nll_zero": nll[2],
        "nll_mean": nll[3],
        "kl": torch.rand(n_windows, generator=g, dtype=torch.float64),
        "n_site": torch.full((n_windows,), float(rows), dtype=torch.float64),
        "l0": active.sum(dim=(1, 2)).double(),
        "l0_gate": gate.sum(dim=(1, 2)).double(),
        "sq_err": (x - x_hat).pow(2).sum(dim=(1, 2)),
        "x_sq": x.pow(2).sum(dim=(1, 2)),
        "xhat_sq": x_hat.pow(2).sum(dim=(1, 2)),
        "xhat_dot_x": (x_hat * x).sum(dim=(1, 2)),
        "x_sum": x.sum(dim=1),
        "xhat_sum": x_hat.sum(dim=1),
    }
    assert set(sums) == set(WINDOW_SCALARS) | set(WINDOW_VECTORS)
    return x, x_hat, active, sums, active.sum(dim=1, dtype=torch.int32)


def _one_shot(x, x_hat, active, sums, index):
    rows = lambda v: v[index].reshape(-1, v.shape[-1])  # noqa: E731 — the selected windows' rows
    xs, xhs, fs = rows(x), rows(x_hat), rows(active)
    ce = {
        k: float(sums[f"nll_{k}"][index].sum() / sums["n_pred"][index].sum())
        for k in ("clean", "spliced", "zero", "mean")
    }
    freqs = feature_density(fs)
    gate = sums["l0_gate"][index].sum() / (sums["n_site"][index].sum())  # counted per row in _windows
    return {
        "l0": l0(fs),
        "l0_gate": float(gate),
        "nmse": nmse(xs, xhs),
        "explained_variance": explained_variance(xs, xhs),
        "relative_reconstruction_bias": relative_reconstruction_bias(xs, xhs),
        "relative_reconstruction_bias_centred": relative_reconstruction_bias_centred(xs, xhs),
        "ce_clean": ce["clean"],
        "ce_spliced": ce["spliced"],
        "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "loss_recovered_mean_ablation": loss_recovered(ce["clean"], ce["mean"], ce["zero"]),
        "delta_loss": ce["spliced"] - ce["clean"],
        "loss_recovered": loss_recovered(ce["clean"], ce["spliced"], ce["zero"]),
        "kl_div": float(sums["kl"][index].sum() / sums["n_pred"][index].sum()),
        "frac_dead": frac_dead(freqs),
        "frac_dense": frac_dense(freqs),
    }


def test_window_metrics_on_hand_data():
    """Two one-row windows: x = [2, 0], [4, 0]; x_hat = [2.5, 0], [3.5, 0]; features fire
    {0} and {0, 1} of 3. Mean x = [3, 0]: variance Σ||x - mean||²/N = 1, Σ||x - x_hat||²/N = 0.25,
    so NMSE 0.25; γ = Σ||x_hat||² / Σ x_hat·x = (6.25 + 12.25) / (5 + 14) = 18.5 / 19."""
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    sums = {
        "n_pred": one(1.0).repeat(2),
        "nll_clean": t([1.0, 1.0]).double(),
        "nll_spliced": t([2.0, 3.0]).double(),
        "nll_zero": t([5.0, 7.0]).double(),
        "nll_mean": t([4.0, 6.0]).double(),
        "kl": t([0.5, 0.25]).double(),
        "n_site": t([1.0, 1.0]).double(),
        "l0": t([1.0, 2.0]).double(),
        "l0_gate": t([2.0, 2.0]).double(),
        "sq_err": t([0.25, 0.25]).double(),
        "x_sq": t([4.0, 16.0]).double(),
        "xhat_sq": t([6.25, 12.25]).double(),
        "xhat_dot_x": t([5.0, 14.0]).double(),
        "x_sum": t([[2.0, 0.0], [4.0, 0.0]]).double(),
        "xhat_sum": t([[2.5, 0.0], [3.5, 0.0]]).double(),
    }
    fires = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.int32)
    r = {k: float(v) for k, v in window_metrics(sums, fires).items()}
    assert r["nmse"] == pytest.approx(0.25)
    assert r["explained_variance"] == pytest.approx(0.75)
    assert r["l0"] == pytest.approx(1.5) and r["l0_gate"] == pytest.approx(2.0)
    assert r["frac_dead"] == pytest.approx(1.0 / 3.0)
    assert r["frac_dense"] == pytest.approx(2.0 / 3.0)  # features 0 and 1 fire on 100 % and 50 % of rows (> 10 %)
    assert r["relative_reconstruction_bias"] == pytest.approx(18.5 / 19.0)
    # centred: deviations x ±1, x_hat ±0.5 → Σ||x_hat - m||² / Σ (x_hat - m)·(x - m) = 0.5 / 1
    assert r["relative_reconstruction_bias_centred"] == pytest.approx(0.5)
    # CE: clean 1, spliced 2.5, zero 6 → (6 - 2.5) / (6 - 1) = 0.7; KL 0.375 per prediction
    assert r["loss_recovered"] == pytest.approx(0.7)
    # the site at its mean: CE 5 → (6 - 5) / (6 - 1) = 0.2
    assert r["ce_mean_ablation"] == pytest.approx(5.0) and r["loss_recovered_mean_ablation"] == pytest.approx(0.2)
    assert r["kl_div"] == pytest.approx(0.375)


def test_window_sums_agree_with_one_shot():
    x, x_hat, active, sums, fires = _windows()
    got = {k: float(v) for k, v in window_metrics(sums, fires).items()}
    want = _one_shot(x, x_hat, active, sums, torch.arange(x.shape[0]))
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert got["frac_dead"] == pytest.approx(1 / 9) and got["frac_dense"] >= 1 / 9


def test_window_sums_of_a_resample_equal_one_shot_on_its_rows():
    """Repeated windows count twice, as in a bootstrap resample; a [B, k] index gives B results."""
    x, x_hat, active, sums, fires = _windows()
    index = torch.tensor([[0, 0, 3, 5, 5, 5], [1, 2, 2, 4, 0, 3]])
    batched = window_metrics(sums, fires, index)
    for b in range(2):
        want = _one_shot(x, x_hat, active, sums, index[b])
        single = window_metrics(sums, fires, index[b])
        for key in want:
            assert float(batched[key][b]) == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
            assert float(single[key]) == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    # feature 1 fires only in window 0: alive in resample 0, dead in a resample without window 0
    assert float(fire_fractions(fires, sums["n_site"], torch.tensor([1, 2]))["frac_dead"]) == pytest.approx(2 / 9)


def test_fire_fractions_by_hand():
    # two windows of 10 and 20 site tokens; feature counts per window
    fires = torch.tensor([[0, 1, 3, 0], [0, 0, 0, 4]], dtype=torch.int32)
    n_site = torch.tensor([10.0, 20.0], dtype=torch.float64)
    # all: counts [0, 1, 3, 4] of 30 -> dead 1/4; dense (> 0.1): 4/30 = 0.133 only -> 1/4
    r = fire_fractions(fires, n_site)
    assert (float(r["frac_dead"]), float(r["frac_dense"])) == (0.25, 0.25)
    # window 0 twice: counts [0, 2, 6, 0] of 20 -> dead 2/4; dense: 6/20 = 0.3 -> 1/4
    r = fire_fractions(fires, n_site, torch.tensor([[0, 0], [1, 1]]))
    assert r["frac_dead"].tolist() == [0.5, 0.75] and r["frac_dense"].tolist() == [0.25, 0.25]


def test_window_multiplicity():
    assert window_multiplicity(torch.tensor([[2, 0, 2]]), 4).tolist() == [[1.0, 0.0, 2.0, 0.0]]


def test_bootstrap_indices_are_reproducible_and_paired():
    a, b = bootstrap_indices(12, 50, seed=0), bootstrap_indices(12, 50, seed=0)
    assert torch.equal(a, b) and a.shape == (50, 12) and int(a.min()) >= 0 and int(a.max()) <= 11
    assert not torch.equal(a, bootstrap_indices(12, 50, seed=1))


def test_percentile_interval_by_hand():
    samples = torch.arange(101, dtype=torch.float64)  # quantiles are exact on 0..100
    assert percentile_interval(samples) == pytest.approx((2.5, 97.5))
    assert percentile_interval(samples, level=0.5) == pytest.approx((25.0, 75.0))
    assert percentile_interval(torch.tensor([1.0, math.nan, 3.0]), level=0.0) == pytest.approx((2.0, 2.0))


def test_bootstrap_intervals_contain_the_point_estimates():
    x, x_hat, active, sums, fires = _windows(n_windows=20, seed=1)
    point = {k: float(v) for k, v in window_metrics(sums, fires).items()}
    ci = bootstrap_intervals(sums, fires, n_samples=400, seed=0)
    assert set(ci) == set(point) - {"frac_dead"}  # NO_BOOTSTRAP (test below)
    for key, (lo, hi) in ci.items():
        assert lo <= point[key] <= hi, key
    assert ci["relative_reconstruction_bias"][0] < ci["relative_reconstruction_bias"][1]  # not degenerate
    assert bootstrap_intervals(sums, fires, n_samples=400, seed=0) == ci  # same seed, same draws


def test_bootstrap_of_identical_windows_is_degenerate():
    x, x_hat, active, sums, fires = _windows(n_windows=1, seed=2)
    many = {k: v.repeat(5, *([1] * (v.ndim - 1))) for k, v in sums.items()}
    ci = bootstrap_intervals(many, fires.repeat(5, 1), n_samples=30, seed=0)
    point = window_metrics(sums, fires)
    for key, (lo, hi) in ci.items():
        assert lo == pytest.approx(float(point[key]), rel=1e-12) and hi == pytest.approx(float(point[key]), rel=1e-12)


def test_frac_dead_gets_no_bootstrap_interval_because_resamples_bias_it():
    # 40 windows; feature 0 fires in every window, features 1-3 each in a single window. Every
    # feature is alive on the full set (frac_dead 0), but a resample misses a given window with
    # probability (39/40)^40 = 0.36, so most resamples call some of features 1-3 dead: the naive
    # percentile interval lies above the estimate. So no interval is given for frac_dead.
    n = 40
    fires = torch.zeros(n, 4, dtype=torch.int32)
    fires[:, 0] = 5
    fires[3, 1] = fires[17, 2] = fires[30, 3] = 1
    n_site = torch.full((n,), 100.0, dtype=torch.float64)
    assert float(fire_fractions(fires, n_site)["frac_dead"]) == 0.0
    naive = fire_fractions(fires, n_site, bootstrap_indices(n, 500, 0))["frac_dead"]
    assert percentile_interval(naive)[1] > 0.0 and float((naive > 0).double().mean()) > 0.5
    sums = {k: torch.ones(n, dtype=torch.float64) for k in WINDOW_SCALARS}
    sums.update(x_sum=torch.zeros(n, 2, dtype=torch.float64), xhat_sum=torch.zeros(n, 2, dtype=torch.float64))
    intervals = bootstrap_intervals(sums, fires, 50, 0)
    assert "frac_dead" not in intervals and "frac_dense" in intervals and "l0" in intervals
