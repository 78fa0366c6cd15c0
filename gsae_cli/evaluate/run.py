"""`gsae eval`: splice an SAE into the model at its hook and measure it on the site's eval set: L0,
loss recovered, delta loss, KL, shrinkage, NMSE, feature density and the site's mean-ablation
reference, each with a 95 % bootstrap interval over windows. The definitions are docs/method.md
§3-4; what is written and why it is fast, docs/guide/evaluation.md.

Writes `metrics.json` (exactly METRIC_KEYS, `config`, `sae` and `ci`), `per_window.safetensors`
(the per-window sums every metric and interval is computed from, which `gsae report` pairs across
SAEs), `density.json` and `density.png`."""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from gsae_cli.config import eval_dir, evalset_dir, evalset_hash, to_yaml
from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice, track
from gsae_cli.errors import ConfigError
from gsae_cli.evaluate.evalset import obtain_evalset
from gsae_cli.evaluate.metrics import (
    WINDOW_FORMAT,
    WINDOW_SCALARS,
    WINDOW_VECTORS,
    density_histogram,
)
from gsae_cli.lm.models import load_model, resolve_device, validate_hooks
from gsae_cli.train.divergence import describe, divergence_of_sae

if TYPE_CHECKING:
    pass

from gsae_cli.evaluate.measure import CI_LEVEL, evaluate

METRICS = "metrics.json"
PER_WINDOW = "per_window.safetensors"


@dataclass
class EvalResult:
    path: Path
    metrics: dict  # the content of metrics.json: METRIC_KEYS plus "config", "sae" and "ci"
    reused: bool


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
    from gsae_cli.saes.io import WEIGHTS, read_sae_meta

    if cfg.sae.path:
        path = Path(cfg.sae.path).expanduser()
        meta = read_sae_meta(path)
        return path, meta, f"weights-{file_sha256(path / WEIGHTS)[:16]}"
    from gsae_cli.train.trainer import run_train

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
    from gsae_cli.saes.io import load_sae

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
        **({"k": meta["k"]} if meta.get("k") is not None else {}),  # (topk, batchtopk)
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

    from gsae_cli.core.progress import stderr

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
