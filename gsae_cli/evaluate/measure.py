"""One SAE measured on an eval set: the per-window sums from the spliced passes, and the metrics
with their bootstrap intervals computed from them (docs/method.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.evaluate.evalset import UNEMBED_IN, EvalSet, build_evalset
from gsae_cli.evaluate.metrics import (
    NO_BOOTSTRAP,
    WINDOW_SCALARS,
    WINDOW_VECTORS,
    bootstrap_intervals,
    window_metrics,
)
from gsae_cli.evaluate.splice import Splicer, kl_direct, log_sum_exp, next_token_nll
from gsae_cli.lm.models import LoadedModel

if TYPE_CHECKING:
    from gsae_cli.saes import SAE


# ---------------------------------------------------------------------------------------------
# One SAE on an eval set
# ---------------------------------------------------------------------------------------------


METRIC_KEYS = (
    "l0",
    "l0_gate",
    "loss_recovered",
    "ce_clean",
    "ce_spliced",
    "ce_zero_ablation",
    "ce_mean_ablation",
    "loss_recovered_mean_ablation",
    "delta_loss",
    "kl_div",
    "relative_reconstruction_bias",
    "relative_reconstruction_bias_centred",
    "nmse",
    "explained_variance",
    "frac_dead",
    "frac_dense",
    "frac_passthrough",
    "n_tokens",
)
CI_LEVEL = 0.95


@dataclass
class Evaluation:
    """One SAE on one eval set."""

    metrics: dict  # METRIC_KEYS -> float (n_tokens: int)
    ci: dict[str, list[float]] | None  # metric -> [lo, hi]; None without bootstrap
    sums: dict[str, Tensor]  # per-window sums, metrics.WINDOW_SCALARS + WINDOW_VECTORS
    fire_counts: Tensor  # [n_windows, d_sae] site tokens each feature fired on
    feature_density: Tensor  # [d_sae] float64 firing frequency over all site tokens
    method: str  # how the spliced passes ran: "from_layer" or "full"
    kl_mode: str  # "unembed" or "logits" (see gsae_cli/evaluate/evalset.py)


@torch.no_grad()
def window_sums(
    model: LoadedModel,
    sae: SAE,
    es: EvalSet,
    *,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
    sae_label: str = "the SAE",
) -> tuple[dict[str, Tensor], Tensor]:
    """(per-window sums named by metrics.WINDOW_SCALARS / WINDOW_VECTORS, float64 on the CPU;
    per-window per-feature fire counts [n_windows, d_sae] int32) of `sae` spliced into `es`."""
    d = es.site[0, 0].numel()  # per-token width; heads ([.., n_heads, d_head]) are flattened, as harvest does
    if d != sae.d_model:
        raise ConfigError(
            f"{sae_label} takes d_model={sae.d_model} activations, but hook {es.hook} of this model "
            f"gives width {d}. Evaluate it with the model and hook it was trained on (see its "
            "sae.json), or train one for this site."
        )
    splicer = Splicer(model, es.hook, es.method)  # the method the eval set was verified with
    sae_device = next(iter(sae.parameters()), torch.empty(0)).device
    first, ctx = es.first, es.ctx_len
    parts: dict[str, list[Tensor]] = {
        k: [] for k in ("nll_spliced", "kl", "sq_err", "x_sq", "xhat_sq", "xhat_dot_x", "x_sum", "xhat_sum")
    }
    fires: list[Tensor] = []
    gates: list[Tensor] = []
    for lo in range(0, es.n_windows, batch_size):
        hi = min(lo + batch_size, es.n_windows)
        b = hi - lo
        tokens = es.tokens[lo:hi].to(model.device)
        site = es.site[lo:hi].to(model.device)
        entry = es.entry_rows(lo, hi).to(model.device) if splicer.from_layer else None
        body = site[:, first:]
        x32 = body.reshape(-1, d).to(sae_device, torch.float32)
        f, support = sae.encode_with_mask(x32)
        x_hat = sae.decode(f)
        if not bool(torch.isfinite(x_hat).all()):
            bad = int((~torch.isfinite(x_hat)).sum())
            raise ArtifactError(
                f"{sae_label} produced {bad} NaN/inf values in its reconstruction of eval windows "
                f"{lo}-{hi - 1} (inputs finite: {bool(torch.isfinite(x32).all())}). Its weights are "
                "corrupt or its training diverged; retrain it (`gsae train --force` with a lower train.lr)."
            )
        spliced = site.clone()
        spliced[:, first:] = x_hat.to(site.device, site.dtype).view_as(body)

        logits, h = splicer.patched(tokens, entry, spliced, UNEMBED_IN if es.kl is not None else None)
        lse = log_sum_exp(logits)
        parts["nll_spliced"].append(next_token_nll(logits, tokens, lse).sum(dim=1).cpu())
        if es.kl is not None:
            assert h is not None  # patched captured UNEMBED_IN, or raised
            # KL = Σ_v P_clean (z_clean - z') + L' - L_clean = E_clean[W_U]·(h - h') + L' - L_clean
            kl = {k: v[lo:hi].to(model.device) for k, v in es.kl.items()}
            kl_pos = (
                (kl["unembed_p"].double() * (kl["unembed_in"].double() - h.double())).sum(-1) + lse - kl["lse_clean"]
            )
        else:
            clean_logits, _ = splicer.patched(tokens, entry, site)
            kl_pos = kl_direct(clean_logits, logits)
            del clean_logits
        del logits
        parts["kl"].append(kl_pos[:, :-1].sum(dim=1).cpu())  # the last position predicts nothing

        x64 = x32.double().view(b, -1, d)
        xh64 = x_hat.double().view(b, -1, d)
        parts["sq_err"].append((x64 - xh64).pow(2).sum(dim=(1, 2)).cpu())
        parts["x_sq"].append(x64.pow(2).sum(dim=(1, 2)).cpu())
        parts["xhat_sq"].append(xh64.pow(2).sum(dim=(1, 2)).cpu())
        parts["xhat_dot_x"].append((xh64 * x64).sum(dim=(1, 2)).cpu())
        parts["x_sum"].append(x64.sum(dim=1).cpu())
        parts["xhat_sum"].append(xh64.sum(dim=1).cpu())
        fires.append((f != 0).view(b, -1, f.shape[-1]).sum(dim=1, dtype=torch.int32).cpu())
        gates.append(support.view(b, -1, f.shape[-1]).sum(dim=(1, 2), dtype=torch.float64).cpu())
        if advance is not None:
            advance(b * (ctx - 1))
    fire_counts = torch.cat(fires)
    n = es.n_windows
    sums = {k: torch.cat(v) for k, v in parts.items()}
    assert es.nll_mean is not None  # built with every eval set, and required when one is loaded
    sums.update(
        {
            "n_pred": torch.full((n,), float(ctx - 1), dtype=torch.float64),
            "nll_clean": es.nll_clean.double(),
            "nll_zero": es.nll_zero.double(),
            "nll_mean": es.nll_mean.double(),
            "n_site": torch.full((n,), float(ctx - first), dtype=torch.float64),
            "l0": fire_counts.sum(dim=1).double(),
            "l0_gate": torch.cat(gates),
        }
    )
    return {k: sums[k] for k in WINDOW_SCALARS + WINDOW_VECTORS}, fire_counts


def summarise(
    sums: dict[str, Tensor],
    fire_counts: Tensor,
    frac_passthrough: float,
    *,
    bootstrap_samples: int = 0,
    bootstrap_seed: int = 0,
) -> tuple[dict, dict | None]:
    """(METRIC_KEYS -> value, {metric: [lo, hi]} or None) from per-window sums."""
    point = {k: float(v) for k, v in window_metrics(sums, fire_counts).items()}
    point["frac_passthrough"] = frac_passthrough
    point["n_tokens"] = int(sums["n_pred"].sum())
    metrics = {k: point[k] for k in METRIC_KEYS}
    if bootstrap_samples <= 0:
        return metrics, None
    intervals = bootstrap_intervals(sums, fire_counts, bootstrap_samples, bootstrap_seed, CI_LEVEL)
    intervals["frac_passthrough"] = (frac_passthrough, frac_passthrough)  # the same in every window
    return metrics, {k: list(intervals[k]) for k in METRIC_KEYS if k != "n_tokens" and k not in NO_BOOTSTRAP}


def evaluate(
    model: LoadedModel,
    sae: SAE,
    es: EvalSet,
    *,
    batch_size: int,
    bootstrap_samples: int = 0,
    bootstrap_seed: int = 0,
    advance: Callable[[int], None] | None = None,
    sae_label: str = "the SAE",
) -> Evaluation:
    """`sae` spliced into the eval set `es`: metrics, intervals and per-window sums."""
    sums, fire_counts = window_sums(model, sae, es, batch_size=batch_size, advance=advance, sae_label=sae_label)
    metrics, ci = summarise(
        sums, fire_counts, es.frac_passthrough, bootstrap_samples=bootstrap_samples, bootstrap_seed=bootstrap_seed
    )
    density = fire_counts.sum(dim=0).double() / sums["n_site"].sum()
    return Evaluation(
        metrics=metrics,
        ci=ci,
        sums=sums,
        fire_counts=fire_counts,
        feature_density=density,
        method=es.method,
        kl_mode=es.kl_mode,
    )


def evaluate_windows(
    model: LoadedModel,
    sae: SAE,
    hook: str,
    windows: Tensor,
    *,
    first: int = 1,
    batch_size: int = 8,
    method: str = "auto",
    bootstrap_samples: int = 0,
    bootstrap_seed: int = 0,
) -> Evaluation:
    """Build an eval set for token windows [n, ctx_len] in memory and evaluate `sae` on it."""
    es = build_evalset(model, hook, windows, first, batch_size=batch_size, method=method)
    return evaluate(
        model, sae, es, batch_size=batch_size, bootstrap_samples=bootstrap_samples, bootstrap_seed=bootstrap_seed
    )
