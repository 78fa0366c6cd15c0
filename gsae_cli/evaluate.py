"""`gsae eval`: splice an SAE into the model at its hook and measure it on held-out text
(docs/method.md §4): L0, loss recovered, delta loss, KL, shrinkage (γ, raw and centred), NMSE, explained
variance and feature density, each with a 95 % bootstrap interval over eval windows.

Which text: ceil(eval.n_tokens / (ctx_len - 1)) windows of ctx_len tokens (BOS + ctx_len - 1
packed text tokens), evenly spread over ALL packed windows of the held-out split (every
`data.eval_every`-th document), so every genre of a mixed corpus is represented; fewer held-out
windows than asked is an error. The default 16,256 tokens are 128 windows of 128.

Which positions (every window):
- **Context and site.** Positions 0 .. site_start-1 (BOS and, by default, the first three text tokens,
  which SmolLM2 turns into a second attention sink with ~100x the median norm whenever a window
  starts mid-document) are context: training never saw them, so they keep their clean
  activation in the spliced AND the zero-ablated pass. Positions site_start .. ctx_len-1 are the
  site: the SAE's reconstruction x̂(f(x)) (or zeros) replaces the hook's activation there.
  `eval.splice_all=true` makes the site every position >= 1 (all but BOS) whatever site_start
  says: the number with nothing passed through. `frac_passthrough` = non-BOS positions left clean
  / all non-BOS positions = (site_start - 1) / (ctx_len - 1) (0 with splice_all). Spliced and
  ablated passes share the site, so an exact SAE scores loss_recovered = 1 and an all-zero one 0.
- **Cross-entropy** (`ce_clean`, `ce_spliced`, `ce_zero_ablation`) is the model's next-token
  loss over the whole window, TransformerLens convention: position t predicts token t + 1 for
  t = 0 .. ctx_len-2, ctx_len - 1 predictions per window (`n_tokens` counts them). Predictions
  made at context positions are identical in all three passes (causal attention): they cancel
  in `loss_recovered`, but they dilute the means `delta_loss` and `kl_div` by
  (ctx_len - 1 - site_start) / (ctx_len - 1), 123/127 by default (docs/method.md §4).
- **KL**: `kl_div` is the mean over the same prediction positions of KL(P_clean ‖ P_spliced),
  the divergence of the spliced model's next-token distribution from the clean one, expectation
  under the clean distribution (computed as in gsae_cli/evalset.py, to ~1e-6 nats per position).
- **Reconstruction statistics** are over the site positions only (ctx_len - site_start per
  window): `l0` counts the non-zero features, ||f||_0 (paper §2.3), and `l0_gate` the support
  the architecture decides (`sae.active_mask`: the gate for Gated SAEs, the frozen baseline's
  support for rescale_shift; equal to l0 for relu): a gate can be open where pi_mag <= 0, so
  l0 <= l0_gate. Feature density (below) counts f != 0 too;
  γ = `relative_reconstruction_bias` = E‖x̂‖² / E[x̂·x] (the closed form of
  argmin_γ E‖x̂/γ − x‖²; < 1 shrinks); `relative_reconstruction_bias_centred` =
  E‖x̂ − E x̂‖² / E[(x̂ − E x̂)·(x − E x)], the same about the means: at a residual-stream site the
  mean direction carries about half of E‖x‖², which a constant offset reproduces, so raw γ
  understates shrinkage of everything else (x̂ = 0.8 x + c scores 0.8 centred, not raw);
  `nmse` = E‖x − x̂‖² / E‖x − E x‖² and `explained_variance` = 1 − nmse; `frac_dead` (never
  fires on any eval site token) and `frac_dense` (fires on > 10 % of them), with the log10
  firing-frequency histogram in density.json / density.png (which state the token count).

Intervals: every metric above is a ratio of sums over windows. The per-window sums
(metrics.WINDOW_SCALARS / WINDOW_VECTORS) are written to `per_window.safetensors` (float64,
metadata {"format": metrics.WINDOW_FORMAT, "eval_set": evalset_hash}); `ci` in metrics.json is
the 95 % percentile bootstrap over windows, `eval.bootstrap_samples` resamples drawn by
`metrics.bootstrap_indices(n_windows, samples, eval.bootstrap_seed)`: every SAE evaluated on
the same eval set gets the same resamples, so differences between SAEs can be bootstrapped
paired from their per_window files (`gsae report`). frac_dense is resampled from per-window
per-feature fire counts kept in memory (not saved); frac_dead has no interval
(metrics.NO_BOOTSTRAP says why). bootstrap_samples=0: no `ci`.

Cost (gsae_cli/evalset.py): the clean and zero-ablated passes do not depend on the SAE, so
they run once per eval set (model, corpus, hook, site_start, n_tokens, ctx_len, splice_all)
and are cached under out_dir/evalset/ with the clean activation at the hook, the residual
entering the hook's block and what the KL needs. Each SAE then costs its encode/decode, one
spliced pass restarted at the hook's block (blocks L.. only; verified against the full forward
when the eval set is built, with full hooked forwards as the fallback), and per-position
log-sum-exps. `eval.cache=false` builds the same eval set in memory and runs the same code:
identical metrics.

metrics.json holds exactly METRIC_KEYS, `config` (the resolved config), `sae` (which SAE) and
`ci` ({metric: [lo, hi]} for every metric but n_tokens).
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from gsae_cli import artifacts
from gsae_cli.config import eval_dir, evalset_dir, evalset_hash, to_yaml
from gsae_cli.divergence import describe, divergence_of_sae
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.evalset import (
    UNEMBED_IN,
    EvalSet,
    Splicer,
    build_evalset,
    kl_direct,
    log_sum_exp,
    next_token_nll,
    obtain_evalset,
)
from gsae_cli.metrics import (
    NO_BOOTSTRAP,
    WINDOW_FORMAT,
    WINDOW_SCALARS,
    WINDOW_VECTORS,
    bootstrap_intervals,
    density_histogram,
    window_metrics,
)
from gsae_cli.models import LoadedModel, load_model, resolve_device, validate_hooks
from gsae_cli.progress import notice, track

if TYPE_CHECKING:
    from gsae_cli.saes import SAE

METRICS = "metrics.json"
PER_WINDOW = "per_window.safetensors"
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
class EvalResult:
    path: Path
    metrics: dict  # the content of metrics.json: METRIC_KEYS plus "config", "sae" and "ci"
    reused: bool


@dataclass
class Evaluation:
    """One SAE on one eval set."""

    metrics: dict  # METRIC_KEYS -> float (n_tokens: int)
    ci: dict[str, list[float]] | None  # metric -> [lo, hi]; None without bootstrap
    sums: dict[str, Tensor]  # per-window sums, metrics.WINDOW_SCALARS + WINDOW_VECTORS
    fire_counts: Tensor  # [n_windows, d_sae] site tokens each feature fired on
    feature_density: Tensor  # [d_sae] float64 firing frequency over all site tokens
    method: str  # how the spliced passes ran: "from_layer" or "full"
    kl_mode: str  # "unembed" or "logits" (see gsae_cli/evalset.py)


# ---------------------------------------------------------------------------------------------
# Finding the SAE (shared with export)
# ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate_sae(cfg: DictConfig) -> tuple[Path, dict, str]:
    """(SAE directory, its sae.json, an id for it). `sae.path` wins; otherwise the SAE this
    config addresses, trained (and harvested) first if needed. The id is the train hash, or for
    an external sae.path a hash of its weights (its metadata could be anyone's)."""
    from gsae_cli.sae_io import WEIGHTS, read_sae_meta

    if cfg.sae.path:
        path = Path(cfg.sae.path).expanduser()
        meta = read_sae_meta(path)
        return path, meta, f"weights-{file_sha256(path / WEIGHTS)[:16]}"
    from gsae_cli.train import run_train

    path = Path(run_train(cfg).path)
    meta = read_sae_meta(path)
    sae_id = meta.get("train_hash") or f"weights-{file_sha256(path / WEIGHTS)[:16]}"
    return path, meta, sae_id


def check_sae_matches(cfg: DictConfig, meta: dict, sae_dir: Path) -> None:
    """An SAE read against another model or site gives meaningless numbers: refuse early."""
    wrong = [
        (k, meta[k], have)
        for k, have in (("model", cfg.model.name), ("hook", cfg.hook))
        if meta.get(k) is not None and meta[k] != have
    ]
    if wrong:
        theirs = " ".join(f"{k}={v}" for k, v, _ in wrong)
        ours = " ".join(f"{k}={h}" for k, _, h in wrong)
        raise ConfigError(
            f"The SAE in {sae_dir} was trained with {theirs}, but this run has {ours}. Pass "
            f"{theirs} (matching the SAE, see {sae_dir / 'sae.json'}), or point sae.path at an SAE "
            "trained for this model and hook."
        )


# ---------------------------------------------------------------------------------------------
# One SAE on an eval set
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run_eval(cfg: DictConfig, force: bool = False) -> EvalResult:
    sae_dir, meta, sae_id = locate_sae(cfg)
    check_sae_matches(cfg, meta, sae_dir)
    directory = eval_dir(cfg, sae_id)
    metrics, reused = artifacts.build_once(
        directory, "evaluation", force, lambda: _evaluate(cfg, sae_dir, meta, directory), METRICS
    )
    return EvalResult(directory, metrics, reused)


def write_per_window(path: Path, sums: dict[str, Tensor], eval_set: str) -> None:
    """per_window.safetensors: float64 [n_windows] (scalars) and [n_windows, d_model] (vectors)
    sums, metadata {"format": WINDOW_FORMAT, "eval_set": <evalset hash>}."""
    from safetensors.torch import save

    tensors = {k: sums[k].to(torch.float64).contiguous() for k in WINDOW_SCALARS + WINDOW_VECTORS}
    artifacts.atomic_write_bytes(path, save(tensors, metadata={"format": WINDOW_FORMAT, "eval_set": eval_set}))


def _evaluate(cfg: DictConfig, sae_dir: Path, meta: dict, directory: Path) -> dict:
    from gsae_cli.sae_io import load_sae

    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    validate_hooks(model, [cfg.hook])
    sae = load_sae(sae_dir, device)
    t0 = time.monotonic()
    es, cached = obtain_evalset(cfg, model)
    t1 = time.monotonic()
    with track("eval", es.n_windows * (es.ctx_len - 1), "tokens") as bar:
        ev = evaluate(
            model,
            sae,
            es,
            batch_size=cfg.eval.batch_size,
            bootstrap_samples=cfg.eval.bootstrap_samples,
            bootstrap_seed=cfg.eval.bootstrap_seed,
            advance=bar.advance,
            sae_label=f"The SAE in {sae_dir}",
        )
    seconds = time.monotonic() - t1
    diverged = divergence_of_sae(sae_dir, meta)
    if diverged:
        notice(
            f"WARNING: the SAE in {sae_dir} is not a trustworthy point: {describe(diverged)}. "
            "Its metrics are recorded (sae.divergence in metrics.json) and `gsae report` flags it "
            "(`--where diverged_at_step=none` leaves such SAEs out); retrain it with a lower learning rate."
        )
    sae_info = {
        "path": str(sae_dir),
        "architecture": meta.get("architecture"),
        "d_sae": meta.get("d_sae"),
        "l1_coefficient": meta.get("l1_coefficient"),
        "train_hash": meta.get("train_hash"),
        "hook": meta.get("hook", cfg.hook),
        "model": meta.get("model", cfg.model.name),
        "divergence": diverged,
    }
    metrics = {**ev.metrics, "config": OmegaConf.to_container(cfg, resolve=True), "sae": sae_info}
    if ev.ci is not None:
        metrics["ci"] = ev.ci
    n_site = int(ev.sums["n_site"].sum())

    directory.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(directory / "config.yaml", to_yaml(cfg))
    digest = evalset_hash(cfg)
    write_per_window(directory / PER_WINDOW, ev.sums, digest)
    hist = density_histogram(ev.feature_density, bins=cfg.eval.density_bins)
    artifacts.write_json(
        directory / "density.json",
        {
            "counts": hist.counts.tolist(),
            "edges": hist.edges.tolist(),
            "n_dead": hist.n_dead,
            "n_features": int(ev.feature_density.numel()),
            "n_tokens": n_site,
            "n_windows": es.n_windows,
            "x": "log10 firing frequency (fraction of the n_tokens eval site tokens on which a feature is active)",
            "dense_threshold": 0.1,
        },
    )
    artifacts.atomic_write_bytes(directory / "density.png", _density_png(hist, sae_info, n_site))
    first = es.first
    artifacts.write_json(
        directory / "summary.json",
        {
            **ev.metrics,
            "sae": sae_info,
            "seconds": seconds,
            "tokens_per_s": ev.metrics["n_tokens"] / max(seconds, 1e-9),
            "spliced_passes": ev.method,
            "kl_mode": ev.kl_mode,
            "n_windows": es.n_windows,
            "site_tokens": n_site,
            "held_out_windows": es.info.get("held_out_windows"),
            "eval_set": {
                "hash": digest,
                "path": str(evalset_dir(cfg)) if cfg.eval.cache else None,
                "reused": cached,
                "seconds": t1 - t0,
            },
            "bootstrap": {
                "samples": cfg.eval.bootstrap_samples,
                "seed": cfg.eval.bootstrap_seed,
                "level": CI_LEVEL,
                "unit": "window",
            },
            "positions": f"CE and KL over positions 0..{es.ctx_len - 2} (next token); SAE spliced and zeros "
            f"ablated at positions {first}..{es.ctx_len - 1}, positions 0..{first - 1} keep "
            f"their clean activation; reconstruction stats at {first}..{es.ctx_len - 1}",
            "kl_direction": "KL(P_clean || P_spliced)",
        },
    )
    artifacts.write_json(directory / METRICS, metrics)
    artifacts.mark_complete(directory)
    return metrics


def _density_png(hist, sae_info: dict, n_tokens: int) -> bytes:
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.stairs(hist.counts.numpy(), hist.edges.numpy(), fill=True, alpha=0.8)
    ax.axvline(math.log10(0.1), color="grey", linestyle="--", linewidth=1, label="dense (10 % of tokens)")
    ax.set_xlabel("log10 feature firing frequency (fraction of eval tokens)")
    ax.set_ylabel("number of features")
    n = int(hist.counts.sum()) + hist.n_dead
    ax.set_title(
        f"{sae_info.get('architecture')} SAE, {n} features on {n_tokens:,} tokens; {hist.n_dead} dead (not shown)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------

_ROWS = [  # key, label, format, what it means
    ("l0", "L0", "{:.2f}", "mean non-zero features per site token, ||f||_0"),
    ("l0_gate", "L0 gate", "{:.2f}", "mean open gates (the support) per site token"),
    ("loss_recovered", "loss recovered", "{:.4f}", "(CE_zero - CE_spliced)/(CE_zero - CE_clean); 1 = perfect"),
    ("delta_loss", "delta loss", "{:.4f}", "CE_spliced - CE_clean (nats)"),
    ("ce_clean", "CE clean", "{:.4f}", "next-token cross-entropy, untouched model"),
    ("ce_spliced", "CE spliced", "{:.4f}", "with the SAE reconstruction at the site"),
    ("ce_zero_ablation", "CE zero-ablated", "{:.4f}", "with zeros at the site"),
    ("ce_mean_ablation", "CE mean-ablated", "{:.4f}", "with the eval set's mean activation at the site"),
    ("loss_recovered_mean_ablation", "loss recovered, mean", "{:.4f}", "what the constant mean activation recovers"),
    ("kl_div", "KL", "{:.4f}", "mean KL(P_clean || P_spliced) per position (nats)"),
    ("relative_reconstruction_bias", "gamma (shrinkage)", "{:.4f}", "E||x_hat||^2 / E[x_hat.x]; <1 shrinks"),
    ("relative_reconstruction_bias_centred", "gamma centred", "{:.4f}", "the same about the means"),
    ("nmse", "NMSE", "{:.4f}", "E||x - x_hat||^2 / E||x - E[x]||^2"),
    ("explained_variance", "explained variance", "{:.4f}", "1 - NMSE"),
    ("frac_dead", "dead features", "{:.2%}", "never fire on the eval site tokens"),
    ("frac_dense", "dense features", "{:.2%}", "fire on > 10 % of them"),
    ("frac_passthrough", "passed through", "{:.2%}", "non-BOS positions kept clean (context)"),
    ("n_tokens", "tokens", "{:,}", "predictions counted"),
]


def _fmt(fmt: str, value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def print_table(metrics: dict) -> None:
    """The metrics, with their bootstrap intervals when present, as a table on stderr (stdout
    carries only results)."""
    from rich.table import Table
    from rich.text import Text

    from gsae_cli.progress import stderr

    sae = metrics.get("sae") or {}
    ci = metrics.get("ci") or {}
    title = "eval" + (f": {sae.get('architecture')} SAE at {sae.get('hook')}" if sae else "")
    table = Table(title=Text(title), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if ci:
        table.add_column("95 % CI (windows)", justify="right")
    table.add_column("meaning", style="dim")
    for key, label, fmt, meaning in _ROWS:
        if key not in metrics:
            continue
        cells = [label, _fmt(fmt, metrics[key])]
        if ci:
            lo_hi = ci.get(key)
            cells.append(f"[{_fmt(fmt, lo_hi[0])}, {_fmt(fmt, lo_hi[1])}]" if lo_hi else "")
        table.add_row(*map(Text, cells), Text(meaning))  # Text: "[n/a, ...]", "E[x]" are not markup
    stderr.print(table)
