"""`gsae eval`: splice an SAE into the model at its hook and measure it on held-out text
(spec §5): L0, loss recovered, delta loss, KL, shrinkage (γ), NMSE, explained variance and
feature density.

Which positions count (every window is BOS followed by ctx_len - 1 packed text tokens):
- **Cross-entropy** (`ce_clean`, `ce_spliced`, `ce_zero_ablation`) is the model's next-token
  loss over the window, TransformerLens convention: position t predicts token t + 1 for
  t = 0 .. ctx_len - 2, so ctx_len - 1 predictions per window (`n_tokens` counts them). The
  prediction made at BOS is included; it is identical in all three runs (causal attention), so
  it adds the same to every CE and cancels in `delta_loss` and `loss_recovered`.
- **Splicing**: the hook's activation is replaced by the SAE reconstruction x̂(f(x)) at every
  position except BOS, which keeps its clean activation. Zero ablation replaces the same
  positions with zeros. The SAE never saw BOS activations (harvest excludes them: they are huge
  norm outliers that act as attention sinks), so splicing or ablating there would measure
  damage the SAE was never asked to avoid; "the site" is therefore the non-BOS positions, and
  since spliced and ablated runs share that choice, an exact SAE scores loss_recovered = 1 and
  an all-zero one 0.
- **Attention sinks**: rows whose norm exceeds the SAE's `outlier_norm_threshold` (recorded in
  sae.json by training, which left such rows out: 10x the median norm by default, about 1 in
  5,000 rows of SmolLM2) are treated like BOS: they keep their clean activation in the spliced
  and ablated runs and are left out of the reconstruction statistics. `frac_passthrough` in
  the eval's summary.json reports the fraction of non-BOS positions this applied to.
- **Reconstruction statistics** (L0, γ, NMSE, explained variance, densities) are over the same
  non-BOS positions, ctx_len - 1 per window. L0 counts `sae.active_mask` (the gate, for Gated
  SAEs).
- **KL**: `kl_div` is the mean over the CE positions of KL(P_clean ‖ P_spliced), the divergence
  of the spliced model's next-token distribution from the clean one, expectation under the clean
  distribution (float32 log-softmaxes, a few dozen positions at a time; logits are held for
  one batch only, clean and spliced side by side, never accumulated across batches).

How many tokens: ceil(eval.n_tokens / (ctx_len - 1)) held-out windows, so `n_tokens` in the
metrics is eval.n_tokens rounded up to whole windows (the default 8,128 is 64 windows of 128).

Efficiency: clean, spliced and zero-ablated losses come from the same batches. The clean pass
captures the hook's activation (and the residual entering the hook's block) with a hook, so x
costs no extra pass. For a hook inside block L (`blocks.L.*`), the spliced and ablated passes
restart from that block: the clean residual entering block L is fed to the TransformerBridge
with `start_at_layer=L`, and the hook's activation is replaced inside block L. TransformerLens
4.3's `start_at_layer` still executes blocks 0..L-1 (on a throw-away input), so gsae also
hides those blocks from the underlying HF model for the duration of the call; the first batch
checks that this reproduces the clean logits and otherwise falls back to full hooked forwards.
Hooks outside the blocks use full forwards with `run_with_hooks`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from gsae_cli import artifacts
from gsae_cli.config import eval_dir, to_yaml
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.metrics import ReconstructionStats, density_histogram, kl_div_per_position, loss_recovered
from gsae_cli.models import LoadedModel, hook_layer, load_model, resolve_device, validate_hooks
from gsae_cli.progress import notice, track

METRICS = "metrics.json"
METRIC_KEYS = ("l0", "loss_recovered", "ce_clean", "ce_spliced", "ce_zero_ablation", "delta_loss",
               "kl_div", "relative_reconstruction_bias", "nmse", "explained_variance", "frac_dead",
               "frac_dense", "n_tokens")


@dataclass
class EvalResult:
    path: Path
    metrics: dict  # the content of metrics.json: METRIC_KEYS plus "config" and "sae"
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
    wrong = [(k, meta[k], have) for k, have in (("model", cfg.model.name), ("hook", cfg.hook))
             if meta.get(k) is not None and meta[k] != have]
    if wrong:
        theirs = " ".join(f"{k}={v}" for k, v, _ in wrong)
        ours = " ".join(f"{k}={h}" for k, _, h in wrong)
        raise ConfigError(
            f"The SAE in {sae_dir} was trained with {theirs}, but this run has {ours}. Pass "
            f"{theirs} (matching the SAE, see {sae_dir / 'sae.json'}), or point sae.path at an SAE "
            "trained for this model and hook.")


# ---------------------------------------------------------------------------------------------
# Running the model with the site replaced
# ---------------------------------------------------------------------------------------------


def _block_container(bridge) -> tuple[nn.Module, str] | None:
    """(parent, attribute) of the HF model's ModuleList that holds the bridge's blocks."""
    root = getattr(bridge, "original_model", None)
    blocks = getattr(bridge, "blocks", None)
    if root is None or blocks is None:
        return None
    for module in root.modules():
        for name, child in module.named_children():
            if child is blocks:
                return module, name
    return None


@contextlib.contextmanager
def _only_blocks_from(bridge, layer: int) -> Iterator[None]:
    """Hide blocks 0..layer-1 from the HF model's layer loop for one forward: with
    `start_at_layer` their output is discarded anyway, so running them is pure waste."""
    found = _block_container(bridge) if layer > 0 else None
    if found is None:
        yield
        return
    parent, name = found
    full = getattr(parent, name)
    setattr(parent, name, nn.ModuleList(list(full)[layer:]))
    try:
        yield
    finally:
        setattr(parent, name, full)


class _Splicer:
    """Clean forward with capture, and forwards with the hook's activation replaced.

    method: "auto" (restart from the hook's block when the hook is inside one, verified on the
    first batch), "from_layer" (always restart, unverified) or "full" (full hooked forwards)."""

    def __init__(self, model: LoadedModel, hook: str, method: str = "auto"):
        if method not in ("auto", "from_layer", "full"):
            raise ValueError(method)
        self.bridge, self.hook, self.device = model.bridge, hook, model.device
        self.layer = hook_layer(hook)
        self.entry = None if self.layer is None else f"blocks.{self.layer}.hook_resid_pre"
        self.from_layer = method != "full" and self.layer is not None
        self.unverified = method == "auto" and self.from_layer

    @property
    def method(self) -> str:
        return "from_layer" if self.from_layer else "full"

    def clean(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(logits, activation at the hook, residual entering the hook's block or None)."""
        got: dict[str, Tensor] = {}

        def keeper(name: str):
            # Keyed by the name we asked for: TransformerLens may report an alias's target
            # (hook_resid_pre fires as blocks.L.hook_in).
            def keep(act: Tensor, hook) -> None:
                got[name] = act.detach().clone()  # clone: later in-place ops must not reach it
            return keep

        names = [self.hook] + ([self.entry] if self.from_layer and self.entry != self.hook else [])
        logits = self.bridge.run_with_hooks(tokens, return_type="logits",
                                            fwd_hooks=[(n, keeper(n)) for n in names])
        missing = [n for n in names if n not in got]
        if missing:
            raise ConfigError(f"Hook {', '.join(missing)} never fired in a forward pass; choose a hook on "
                              "the residual stream, attention or MLP path (e.g. blocks.L.hook_resid_pre).")
        return logits, got[self.hook], (got[self.entry] if self.from_layer else None)

    def patched(self, tokens: Tensor, entry: Tensor | None, replacement: Tensor) -> Tensor:
        """Logits with the hook's activation replaced by `replacement` (same shape)."""

        def replace(act: Tensor, hook) -> Tensor:
            return replacement.to(act.dtype)

        fwd_hooks = [(self.hook, replace)]
        if self.from_layer:
            with _only_blocks_from(self.bridge, self.layer):
                return self.bridge.run_with_hooks(entry, start_at_layer=self.layer,
                                                  return_type="logits", fwd_hooks=fwd_hooks)
        return self.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=fwd_hooks)

    def verify(self, tokens: Tensor, logits: Tensor, site: Tensor, entry: Tensor | None) -> None:
        """On the first batch: the restart path, fed the clean activation, must give the clean
        logits (one sequence, a fraction of a pass). If not, use full forwards from then on."""
        self.unverified = False
        try:
            check = self.patched(tokens[:1], entry[:1], site[:1])
            ok = check.shape == logits[:1].shape
            if ok:
                tol = 1e-4 if logits.dtype == torch.float32 else 2e-2
                scale = float(logits[:1].abs().max()) + 1e-6
                ok = float((check.float() - logits[:1].float()).abs().max()) <= tol * scale
        except Exception as e:  # noqa: BLE001 — any failure of the fast path means: use the slow one
            ok = False
            reason = f"{type(e).__name__}: {e}"
        else:
            reason = "its logits differ from the full forward's"
        if not ok:
            notice(f"eval: cannot restart the forward at block {self.layer} for this model ({reason}); "
                   "using full forwards (about 1.5x slower).")
            self.from_layer = False


# ---------------------------------------------------------------------------------------------
# The evaluation loop
# ---------------------------------------------------------------------------------------------


def _next_token_targets(tokens: Tensor) -> Tensor:
    """tokens shifted left, with the last position (nothing to predict) ignored: lets the loss run
    on the whole contiguous logits tensor instead of a copied [:, :-1] slice."""
    ignore = torch.full_like(tokens[:, :1], -100)
    return torch.cat([tokens[:, 1:], ignore], dim=1)


def _nll_sum(logits: Tensor, targets: Tensor) -> float:
    """Summed next-token cross-entropy over positions whose target is not -100 (float32 logits,
    float64 result)."""
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                 ignore_index=-100, reduction="sum").double())


_KL_CHUNK_ELEMENTS = 1 << 22  # 16 MB of float32 per temporary


def _kl_sum(logits_clean: Tensor, logits_spliced: Tensor) -> float:
    """Σ over positions 0..ctx_len-2 of KL(P_clean ‖ P_spliced), float64. Computed a few dozen
    positions at a time: kl_div_per_position makes several vocabulary-sized temporaries, and
    small ones are recycled by the allocator instead of being fresh (page-faulting) memory for
    every op, which makes the KL ~2.5x cheaper on CPU."""
    b, s, v = logits_clean.shape
    rows_clean, rows_spliced = logits_clean.reshape(b * s, v), logits_spliced.reshape(b * s, v)
    step = max(1, _KL_CHUNK_ELEMENTS // v)
    per_position = torch.cat([kl_div_per_position(rows_clean[i:i + step], rows_spliced[i:i + step])
                              for i in range(0, b * s, step)])
    return float(per_position.view(b, s)[:, :-1].double().sum())


@torch.no_grad()
def evaluate_batches(model: LoadedModel, sae: nn.Module, hook: str, batches: Iterable[Tensor], *,
                     method: str = "auto", advance: Callable[[int], None] | None = None,
                     sae_label: str = "the SAE", outlier_threshold: float = math.inf) -> dict:
    """Metrics of `sae` spliced at `hook` over token batches [batch, ctx_len] (each row BOS + text),
    positions as in the module docstring. Returns METRIC_KEYS plus `feature_density` (a float64
    tensor [d_sae]) and `method` ("from_layer" or "full": how the patched passes ran)."""
    splicer = _Splicer(model, hook, method)
    stats = ReconstructionStats()
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    kl_sum = 0.0
    n_pred = 0
    n_site = n_passthrough = 0
    sae_device = next(iter(sae.parameters()), torch.empty(0)).device
    for i, tokens in enumerate(batches):
        tokens = tokens.to(model.device)
        if tokens.shape[1] < 2:
            raise ConfigError("eval windows need at least 2 tokens (BOS plus one text token).")
        logits, site, entry = splicer.clean(tokens)
        if splicer.unverified:
            splicer.verify(tokens, logits, site, entry)
        b, s = site.shape[:2]
        body = site[:, 1:]  # non-BOS positions: the SAE's domain
        x = body.reshape(b * (s - 1), -1)
        if x.shape[1] != sae.d_model:
            raise ConfigError(
                f"{sae_label} takes d_model={sae.d_model} activations, but hook {hook} of this model "
                f"gives width {x.shape[1]}. Evaluate it with the model and hook it was trained on "
                "(see its sae.json), or train one for this site.")
        x32 = x.to(sae_device, torch.float32)
        # Attention-sink rows (norm above the threshold training left out) keep their clean
        # activation, like BOS: the SAE was never trained on them.
        domain = x32.norm(dim=1) <= outlier_threshold
        n_site += domain.numel()
        n_passthrough += int((~domain).sum())
        x_hat = sae(x32)
        if not bool(torch.isfinite(x_hat).all()):
            bad = int((~torch.isfinite(x_hat)).sum())
            raise ArtifactError(
                f"{sae_label} produced {bad} NaN/inf values in its reconstruction of eval batch {i} "
                f"(inputs finite: {bool(torch.isfinite(x32).all())}). Its weights are corrupt or its "
                "training diverged; retrain it (`gsae train --force` with a lower train.lr).")
        stats.update(x32[domain], x_hat[domain], sae.active_mask(x32[domain]).float())

        keep = (~domain).to(site.device).view(b, s - 1, 1)
        spliced = site.clone()
        spliced[:, 1:] = torch.where(keep, body, x_hat.to(site.device, site.dtype).view_as(body))
        zeroed = site.clone()
        zeroed[:, 1:] = torch.where(keep, body, torch.zeros_like(body))

        targets = _next_token_targets(tokens)
        ce["clean"] += _nll_sum(logits, targets)
        sp_logits = splicer.patched(tokens, entry, spliced)
        ce["spliced"] += _nll_sum(sp_logits, targets)
        kl_sum += _kl_sum(logits, sp_logits)
        del sp_logits, logits  # at most one batch of logits besides the one in use
        ce["zero"] += _nll_sum(splicer.patched(tokens, entry, zeroed), targets)
        n_pred += b * (s - 1)
        if advance is not None:
            advance(b * (s - 1))
    if n_pred == 0:
        raise ConfigError("No evaluation tokens: the held-out split produced no full window; lower "
                          "eval.ctx_len or use a larger corpus.")
    if stats.count == 0:  # every row passed through: nothing was reconstructed
        d_sae = sae.active_mask(torch.zeros(1, sae.d_model, device=sae_device)).shape[1]
        rec = {k: math.nan for k in ("l0", "relative_reconstruction_bias", "nmse", "explained_variance",
                                     "frac_dead", "frac_dense")}
        rec["feature_density"] = torch.zeros(d_sae, dtype=torch.float64)
    else:
        rec = stats.result()
    ce_clean, ce_spliced, ce_zero = (ce[k] / n_pred for k in ("clean", "spliced", "zero"))
    return {
        "l0": rec["l0"],
        "loss_recovered": loss_recovered(ce_clean, ce_spliced, ce_zero),
        "ce_clean": ce_clean,
        "ce_spliced": ce_spliced,
        "ce_zero_ablation": ce_zero,
        "delta_loss": ce_spliced - ce_clean,
        "kl_div": kl_sum / n_pred,
        "relative_reconstruction_bias": rec["relative_reconstruction_bias"],
        "nmse": rec["nmse"],
        "explained_variance": rec["explained_variance"],
        "frac_dead": rec["frac_dead"],
        "frac_dense": rec["frac_dense"],
        "n_tokens": n_pred,
        "frac_passthrough": n_passthrough / max(n_site, 1),
        "feature_density": rec["feature_density"],
        "method": splicer.method,
    }


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def eval_windows(cfg: DictConfig, model: LoadedModel) -> list[list[int]]:
    """Enough held-out windows for eval.n_tokens CE positions (ctx_len - 1 per window), tokenised
    up front (cheap) so that a too-small corpus fails before any forward pass."""
    from gsae_cli.data import token_windows

    ec = cfg.eval
    n_windows = -(-ec.n_tokens // (ec.ctx_len - 1))
    windows = list(itertools.islice(
        token_windows(cfg.data, model.tokenizer, "eval", ec.ctx_len, model.bos_token_id,
                      model.eos_token_id), n_windows))
    if len(windows) < n_windows:
        raise ConfigError(
            f"The held-out split ran out after {len(windows) * (ec.ctx_len - 1):,} tokens, short of "
            f"eval.n_tokens={ec.n_tokens:,} (ctx_len={ec.ctx_len}). Lower eval.n_tokens, hold out more "
            "documents (a smaller data.eval_every) or use a larger corpus.")
    return windows


def run_eval(cfg: DictConfig, force: bool = False) -> EvalResult:
    sae_dir, meta, sae_id = locate_sae(cfg)
    check_sae_matches(cfg, meta, sae_dir)
    directory = eval_dir(cfg, sae_id)
    with artifacts.locked(directory, "this evaluation"):
        if force:
            artifacts.remove(directory)
        if artifacts.is_complete(directory):
            notice(f"reusing complete evaluation {directory}")
            return EvalResult(directory, artifacts.read_json(directory / METRICS), True)
        metrics = _evaluate(cfg, sae_dir, meta, directory)
    return EvalResult(directory, metrics, False)


def _evaluate(cfg: DictConfig, sae_dir: Path, meta: dict, directory: Path) -> dict:
    from gsae_cli.data import batched_windows
    from gsae_cli.sae_io import load_sae

    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    validate_hooks(model, [cfg.hook])
    sae = load_sae(sae_dir, device)
    windows = eval_windows(cfg, model)
    total = len(windows) * (cfg.eval.ctx_len - 1)
    t0 = time.monotonic()
    with track("eval", total, "tokens") as bar:
        out = evaluate_batches(model, sae, cfg.hook, batched_windows(windows, cfg.eval.batch_size),
                               advance=bar.advance, sae_label=f"The SAE in {sae_dir}",
                               outlier_threshold=float(meta.get("outlier_norm_threshold", math.inf)))
    seconds = time.monotonic() - t0
    density = out.pop("feature_density")
    method = out.pop("method")
    sae_info = {"path": str(sae_dir), "architecture": meta.get("architecture"), "d_sae": meta.get("d_sae"),
                "l1_coefficient": meta.get("l1_coefficient"), "train_hash": meta.get("train_hash"),
                "hook": meta.get("hook", cfg.hook), "model": meta.get("model", cfg.model.name)}
    metrics = {**{k: out[k] for k in METRIC_KEYS}, "config": OmegaConf.to_container(cfg, resolve=True),
               "sae": sae_info}

    directory.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(directory / "config.yaml", to_yaml(cfg))
    hist = density_histogram(density, bins=cfg.eval.density_bins)
    artifacts.write_json(directory / "density.json", {
        "counts": hist.counts.tolist(), "edges": hist.edges.tolist(), "n_dead": hist.n_dead,
        "n_features": int(density.numel()), "n_tokens": out["n_tokens"],
        "x": "log10 firing frequency (fraction of eval tokens on which a feature is active)",
        "dense_threshold": 0.1})
    artifacts.atomic_write_bytes(directory / "density.png", _density_png(hist, sae_info, out["n_tokens"]))
    artifacts.write_json(directory / "summary.json", {
        **{k: out[k] for k in METRIC_KEYS}, "sae": sae_info, "seconds": seconds,
        "tokens_per_s": out["n_tokens"] / max(seconds, 1e-9), "spliced_passes": method,
        "frac_passthrough": out["frac_passthrough"],
        "positions": "CE over positions 0..ctx_len-2 (next token); SAE spliced and zeros ablated at "
                     "positions 1..ctx_len-1 (BOS kept clean); reconstruction stats at 1..ctx_len-1",
        "kl_direction": "KL(P_clean || P_spliced)"})
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
    ax.set_title(f"{sae_info.get('architecture')} SAE, {n} features on {n_tokens:,} tokens; "
                 f"{hist.n_dead} dead (not shown)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Display
# ---------------------------------------------------------------------------------------------

_ROWS = [  # key, label, format, what it means
    ("l0", "L0", "{:.2f}", "mean active features per token"),
    ("loss_recovered", "loss recovered", "{:.4f}", "(CE_zero - CE_spliced)/(CE_zero - CE_clean); 1 = perfect"),
    ("delta_loss", "delta loss", "{:.4f}", "CE_spliced - CE_clean (nats)"),
    ("ce_clean", "CE clean", "{:.4f}", "next-token cross-entropy, untouched model"),
    ("ce_spliced", "CE spliced", "{:.4f}", "with the SAE reconstruction at the hook"),
    ("ce_zero_ablation", "CE zero-ablated", "{:.4f}", "with zeros at the hook"),
    ("kl_div", "KL", "{:.4f}", "mean KL(P_clean || P_spliced) per position (nats)"),
    ("relative_reconstruction_bias", "gamma (shrinkage)", "{:.4f}", "<1 shrinks, 1 = none"),
    ("nmse", "NMSE", "{:.4f}", "E||x - x_hat||^2 / E||x - E[x]||^2"),
    ("explained_variance", "explained variance", "{:.4f}", "1 - NMSE"),
    ("frac_dead", "dead features", "{:.2%}", "never fire on the eval tokens"),
    ("frac_dense", "dense features", "{:.2%}", "fire on > 10 % of tokens"),
    ("n_tokens", "tokens", "{:,}", "predictions counted"),
]


def print_table(metrics: dict) -> None:
    """The metrics as a table on stderr (stdout carries only results)."""
    from rich.table import Table
    from rich.text import Text

    from gsae_cli.progress import stderr

    sae = metrics.get("sae") or {}
    title = "eval" + (f": {sae.get('architecture')} SAE at {sae.get('hook')}" if sae else "")
    table = Table(title=Text(title), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for key, label, fmt, meaning in _ROWS:
        if key not in metrics:
            continue
        value = metrics[key]
        text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
        table.add_row(label, text, Text(meaning))  # Text: "E[x]" is not rich markup
    stderr.print(table)
