"""Evaluation metrics (docs/method.md §4) as pure functions of tensors, plus a streaming accumulator.

Conventions: x, x_hat are [N, d_model]; f is [N, d_sae] (a feature counts as firing where it
is nonzero, so a bool/float activity mask can be passed instead of activations). Expectations
E[.] are means over the N rows (tokens). Reductions run in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10 % of tokens is "dense"
# Metrics with no window-bootstrap interval. frac_dead: whether a feature ever fires is decided
# by its rarest firings, and a resample holds only ~63 % of the distinct windows, so resampled
# dead fractions are biased upward and their percentile interval can exclude the estimate
# itself (docs/guide/evaluation.md, "Intervals").
NO_BOOTSTRAP = ("frac_dead",)


def _check_pair(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(f"x and x_hat must both be [N, d_model], got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    return x.detach().to(torch.float64), x_hat.detach().to(torch.float64)


def l0(f: Tensor) -> float:
    """L0 = E_x ||f(x)||₀: mean over rows of the number of nonzero features."""
    return float((f != 0).sum(dim=-1).to(torch.float64).mean())


def loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 = splicing in x_hat costs nothing,
    0 = as bad as zero-ablating the site. NaN if CE_zero == CE_clean (undefined)."""
    denom = float(ce_zero) - float(ce_clean)
    if denom == 0.0:
        return math.nan
    return (float(ce_zero) - float(ce_spliced)) / denom


def kl_div_per_position(logits_clean: Tensor, logits_spliced: Tensor) -> Tensor:
    """KL(P_clean ‖ P_spliced) = Σ_v P_clean(v) (log P_clean(v) - log P_spliced(v)) for each
    position, where P = softmax(logits) over the last (vocab) dim. Shape: logits' leading dims.
    Direction: expectation under the CLEAN model's next-token distribution."""
    if logits_clean.shape != logits_spliced.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_clean.shape)} vs {tuple(logits_spliced.shape)}")
    log_p = torch.log_softmax(logits_clean.detach().to(torch.float32), dim=-1)
    log_q = torch.log_softmax(logits_spliced.detach().to(torch.float32), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def kl_div(logits_clean: Tensor, logits_spliced: Tensor) -> Tensor:
    """Mean over positions of KL(P_clean ‖ P_spliced) (see kl_div_per_position); 0-dim tensor."""
    return kl_div_per_position(logits_clean, logits_spliced).mean()


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> float:
    """gamma = argmin_γ E||x_hat/γ - x||² = E||x_hat||² / E[x_hat·x]. <1: shrinkage; 1: none."""
    x, x_hat = _check_pair(x, x_hat)
    return float(x_hat.pow(2).sum() / (x_hat * x).sum())


def relative_reconstruction_bias_centred(x: Tensor, x_hat: Tensor) -> float:
    """γ about the means: E||x_hat - E x_hat||² / E[(x_hat - E x_hat)·(x - E x)], the slope of
    the best fit of x by x_hat/γ + c. Where the mean direction carries much of E||x||², raw γ
    mostly measures how well that constant is reproduced and hides shrinkage of the rest;
    x_hat = 0.8 x + c gives exactly 0.8 here but not in raw γ."""
    x, x_hat = _check_pair(x, x_hat)
    xc, xhc = x - x.mean(dim=0), x_hat - x_hat.mean(dim=0)
    return float(xhc.pow(2).sum() / (xhc * xc).sum())


def nmse(x: Tensor, x_hat: Tensor) -> float:
    """E||x - x_hat||² / E||x - E[x]||² (variance about the mean, not about zero)."""
    x, x_hat = _check_pair(x, x_hat)
    err = (x - x_hat).pow(2).sum(dim=-1).mean()
    var = (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean()
    return float(err / var)


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - nmse(x, x_hat)."""
    return 1.0 - nmse(x, x_hat)


def feature_density(f: Tensor) -> Tensor:
    """Per-feature firing frequency [d_sae] (float64): fraction of rows where f != 0."""
    return (f != 0).to(torch.float64).mean(dim=0)


def frac_dead(freqs: Tensor) -> float:
    """Fraction of features that never fire (frequency exactly 0)."""
    return float((freqs == 0).to(torch.float64).mean())


def frac_dense(freqs: Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Fraction of features firing on more than `threshold` (10 %) of tokens."""
    return float((freqs > threshold).to(torch.float64).mean())


class DensityHistogram(NamedTuple):
    """Histogram of log10(firing frequency) over features that fire; dead ones (log10 0 = -inf)
    are counted in n_dead instead."""

    counts: Tensor  # [bins] int64
    edges: Tensor  # [bins + 1] float64, in log10 units
    n_dead: int


def density_histogram(freqs: Tensor, bins: int = 50, range: tuple[float, float] | None = None) -> DensityHistogram:
    """Histogram of log10(freqs) for freqs > 0. Default range: [floor(min log10 freq), 0]."""
    freqs = freqs.detach().to(torch.float64).flatten()
    alive = freqs[freqs > 0]
    n_dead = int(freqs.numel() - alive.numel())
    logf = alive.log10()
    if range is None:
        lo = math.floor(float(logf.min())) if logf.numel() else -1.0
        range = (min(lo, -1.0), 0.0)
    edges = torch.linspace(range[0], range[1], bins + 1, dtype=torch.float64)
    counts = torch.histogram(logf, bins=edges).hist.to(torch.int64)
    return DensityHistogram(counts=counts, edges=edges, n_dead=n_dead)


# ---------------------------------------------------------------------------------------------
# Per-window sums: every metric is a ratio of sums over eval windows, so any subset or bootstrap
# resample of windows gives its metrics from the sums alone (eval's per_window.safetensors).
# ---------------------------------------------------------------------------------------------

# Scalar sums per window, each [n_windows] float64.
WINDOW_SCALARS = (
    "n_pred",
    "nll_clean",
    "nll_spliced",
    "nll_zero",
    "nll_mean",
    "kl",
    "n_site",
    "l0",
    "l0_gate",
    "sq_err",
    "x_sq",
    "xhat_sq",
    "xhat_dot_x",
)
# Vector sums per window, each [n_windows, d_model] float64 (for the means in NMSE and γ centred).
WINDOW_VECTORS = ("x_sum", "xhat_sum")
# 2: `l0` counts f != 0 (the paper's ||f||_0) and `l0_gate` the support (in 1, `l0` was the
# support); `nll_mean`, the site at its mean activation (the reference row).
WINDOW_FORMAT = "gsae-per-window-2"


def metrics_from_window_sums(sums: dict[str, Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
    """The metrics of the windows `index` (a [k] or [B, k] long tensor of window numbers, repeats
    allowed, as in a bootstrap resample; None: all windows) from per-window sums:

      n_pred   next-token predictions (CE positions)     nll_*   summed CE (nats) clean/spliced/zero/mean
      kl       summed KL(P_clean || P_spliced)             n_site  positions spliced (SAE inputs)
      l0       summed counts of f_i != 0 (||f||_0)          l0_gate summed support counts (the gate)
      sq_err   Σ||x - x_hat||²
      x_sq     Σ||x||²   xhat_sq Σ||x_hat||²   xhat_dot_x Σ x_hat·x   x_sum Σx   xhat_sum Σx_hat

    Returns float64 tensors (0-dim, or [B] for a [B, k] index) for l0, l0_gate, ce_clean, ce_spliced,
    ce_zero_ablation, ce_mean_ablation, delta_loss, loss_recovered, loss_recovered_mean_ablation, kl_div,
    relative_reconstruction_bias, relative_reconstruction_bias_centred, nmse and explained_variance. Without the
    vector sums (x_sum, xhat_sum), the three metrics that need the means (γ centred, NMSE, explained
    variance) are left out: a resample then never gathers [B, k, d_model] tensors."""

    def total(name: str) -> Tensor:
        v = sums[name].to(torch.float64)
        return v.sum(dim=0) if index is None else v[index].sum(dim=-1 - (v.ndim - 1))

    s = {k: total(k) for k in WINDOW_SCALARS}
    n = s["n_site"]
    ce = {k: s[f"nll_{k}"] / s["n_pred"] for k in ("clean", "spliced", "zero", "mean")}
    recovered = lambda k: (s["nll_zero"] - s[f"nll_{k}"]) / (s["nll_zero"] - s["nll_clean"])  # noqa: E731
    out = {
        "l0": s["l0"] / n,
        "l0_gate": s["l0_gate"] / n,
        "ce_clean": ce["clean"],
        "ce_spliced": ce["spliced"],
        "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "delta_loss": ce["spliced"] - ce["clean"],
        "loss_recovered": recovered("spliced"),
        "loss_recovered_mean_ablation": recovered("mean"),
        "kl_div": s["kl"] / s["n_pred"],
        "relative_reconstruction_bias": s["xhat_sq"] / s["xhat_dot_x"],
    }
    if not all(k in sums for k in WINDOW_VECTORS):
        return out
    x_sum, xhat_sum = total("x_sum"), total("xhat_sum")
    var_sum = s["x_sq"] - x_sum.pow(2).sum(-1) / n  # Σ||x - mean x||²
    xhat_var = s["xhat_sq"] - xhat_sum.pow(2).sum(-1) / n  # Σ||x_hat - mean x_hat||²
    cov = s["xhat_dot_x"] - (xhat_sum * x_sum).sum(-1) / n  # Σ (x_hat - mean)·(x - mean)
    nmse_value = s["sq_err"] / var_sum
    out.update(
        {
            "relative_reconstruction_bias_centred": xhat_var / cov,
            "nmse": nmse_value,
            "explained_variance": 1.0 - nmse_value,
        }
    )
    return out


def bootstrap_indices(n_windows: int, n_samples: int, seed: int) -> Tensor:
    """[n_samples, n_windows] window numbers drawn with replacement. The same (n_windows,
    n_samples, seed) always gives the same draws, so SAEs evaluated on the same eval set are
    resampled identically and their differences are paired."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_windows, (n_samples, n_windows), generator=g)


def percentile_interval(samples: Tensor, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap samples (percentile method; NaNs ignored)."""
    s = samples.to(torch.float64).flatten()
    s = s[~torch.isnan(s)]
    if s.numel() == 0:
        return (math.nan, math.nan)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(s, q).tolist()
    return (lo, hi)


def window_multiplicity(index: Tensor, n_windows: int) -> Tensor:
    """[B, n_windows] float64: how often each window occurs in each row of `index` ([k] or [B, k])."""
    idx = index if index.ndim == 2 else index[None]
    counts = torch.zeros(idx.shape[0], n_windows, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))


def fire_fractions(
    fire_counts: Tensor, n_site: Tensor, index: Tensor | None = None, threshold: float = DENSE_THRESHOLD
) -> dict[str, Tensor]:
    """frac_dead and frac_dense of the windows `index` (as in metrics_from_window_sums) from
    per-window per-feature fire counts [n_windows, d_sae] and per-window token counts n_site
    [n_windows]: a feature is dead if it fires on none of those tokens, dense if on more than
    `threshold` of them. float64 tensors, 0-dim or [B]."""
    counts_w = fire_counts.to(torch.float64)
    n_w = n_site.to(torch.float64)
    if index is None:
        counts, n = counts_w.sum(dim=0), n_w.sum()
        density = counts / n
    else:
        # a resample's counts are the windows' counts weighted by how often each was drawn:
        # one matmul instead of gathering [B, k, d_sae] (integers, exact in float64)
        weights = window_multiplicity(index, counts_w.shape[0])
        counts, n = weights @ counts_w, weights @ n_w
        density = counts / n[:, None]
        if index.ndim == 1:
            counts, density = counts[0], density[0]
    return {
        "frac_dead": (counts == 0).to(torch.float64).mean(dim=-1),
        "frac_dense": (density > threshold).to(torch.float64).mean(dim=-1),
    }


def window_metrics(sums: dict[str, Tensor], fire_counts: Tensor, index: Tensor | None = None) -> dict[str, Tensor]:
    """metrics_from_window_sums plus frac_dead and frac_dense, for the windows `index`."""
    out = metrics_from_window_sums(sums, index)
    out.update(fire_fractions(fire_counts, sums["n_site"], index))
    return out


def bootstrap_intervals(
    sums: dict[str, Tensor], fire_counts: Tensor, n_samples: int, seed: int, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over windows for every metric of `window_metrics` but
    NO_BOOTSTRAP's, from
    `bootstrap_indices(n_windows, n_samples, seed)`: the same windows and seed resample every SAE
    identically. Resamples are processed a few at a time so that the gathered vector sums
    ([chunk, n_windows, d_model] float64) stay near 32 MB."""
    n_windows, d = sums["x_sum"].shape
    index = bootstrap_indices(n_windows, n_samples, seed)
    chunk = max(1, (1 << 22) // max(1, n_windows * d))
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, n_samples, chunk):
        for key, value in window_metrics(sums, fire_counts, index[start : start + chunk]).items():
            parts.setdefault(key, []).append(value)
    return {
        key: percentile_interval(torch.cat(values), level) for key, values in parts.items() if key not in NO_BOOTSTRAP
    }
