"""Evaluation metrics (spec §5) as pure functions of tensors, plus a streaming accumulator.

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


def _check_pair(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(
            f"x and x_hat must both be [N, d_model], got {tuple(x.shape)} and {tuple(x_hat.shape)}"
        )
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
        raise ValueError(
            f"logit shapes differ: {tuple(logits_clean.shape)} vs {tuple(logits_spliced.shape)}"
        )
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


def density_histogram(
    freqs: Tensor, bins: int = 50, range: tuple[float, float] | None = None
) -> DensityHistogram:
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


class ReconstructionStats:
    """Streams eval batches and gives the same numbers as the one-shot functions on all of
    them concatenated. Accumulates in float64:
      Σ||x_hat||², Σ x_hat·x, Σ||x - x_hat||², Σx (per dim), Σ||x||², N,
      per-feature fire counts and the total number of firings.
    The variance about the mean is Σ||x||²/N - ||Σx/N||².
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum_xhat_sq = 0.0
        self.sum_xhat_dot_x = 0.0
        self.sum_err_sq = 0.0
        self.sum_x_sq = 0.0
        self.sum_x: Tensor | None = None
        self.fire_counts: Tensor | None = None
        self.total_active = 0

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat = _check_pair(x, x_hat)
        if f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(f"f must be [N={x.shape[0]}, d_sae], got {tuple(f.shape)}")
        fires = (f.detach() != 0).cpu()
        self.count += x.shape[0]
        self.sum_xhat_sq += float(x_hat.pow(2).sum())
        self.sum_xhat_dot_x += float((x_hat * x).sum())
        self.sum_err_sq += float((x - x_hat).pow(2).sum())
        self.sum_x_sq += float(x.pow(2).sum())
        batch_sum_x = x.sum(dim=0).cpu()
        batch_fires = fires.sum(dim=0, dtype=torch.int64)
        if self.sum_x is None or self.fire_counts is None:
            self.sum_x, self.fire_counts = batch_sum_x, batch_fires
        else:
            self.sum_x += batch_sum_x
            self.fire_counts += batch_fires
        self.total_active += int(batch_fires.sum())

    def result(self) -> dict[str, float | Tensor]:
        if self.count == 0 or self.sum_x is None or self.fire_counts is None:
            raise ValueError("ReconstructionStats.result() called before any update()")
        n = self.count
        mean_x = self.sum_x / n
        variance = self.sum_x_sq / n - float(mean_x.pow(2).sum())
        nmse_value = (self.sum_err_sq / n) / variance if variance > 0 else math.nan
        density = self.fire_counts.to(torch.float64) / n
        return {
            "l0": self.total_active / n,
            # γ is 0/0 for an all-zero reconstruction: undefined, reported as NaN
            "relative_reconstruction_bias": (self.sum_xhat_sq / self.sum_xhat_dot_x
                                             if self.sum_xhat_dot_x != 0.0 else math.nan),
            "nmse": nmse_value,
            "explained_variance": 1.0 - nmse_value,
            "frac_dead": frac_dead(density),
            "frac_dense": frac_dense(density),
            "feature_density": density,
        }
