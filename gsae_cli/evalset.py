"""Eval sets: the held-out windows of one (model, corpus, hook, site) and everything about them
that does not depend on the SAE, computed once and shared by every SAE evaluated there.

Windows: the whole held-out split is tokenised and packed (BOS + ctx_len - 1 text tokens per
window, `data.pack_windows`), and ceil(eval.n_tokens / (ctx_len - 1)) windows are taken evenly
spread over all of them (`spread_indices`), so every part of a mixed corpus is represented.

Positions: 0 .. first-1 of every window are context (first = `site_start`, or 1 with
`eval.splice_all`): they keep their clean activation in every pass. Positions first .. ctx_len-1
are the site: the SAE's reconstruction (or zeros) replaces the activation there.

What an eval set holds, per window (n windows, d the hook's width, d_u the unembedding's input):
- `tokens` [n, ctx_len] int64;
- `site` [n, ctx_len, d]: the clean activation at the hook: the SAE's input x, and the value the
  context positions keep;
- `entry` [n, ctx_len, d]: the clean residual entering the hook's block, from which the spliced
  pass restarts (absent when it is the hook itself, e.g. blocks.L.hook_resid_pre, or when the
  model needs full forwards);
- `nll_clean`, `nll_zero` [n] float64: summed next-token NLL of the clean pass and of the pass
  with zeros at the site (positions 0 .. ctx_len-2, each predicting the next token);
- `nll_mean` [n] float64: the same with the site set to one constant, the mean of the clean
  activation over every site position of every window (a reconstruction that is b_dec alone, at
  the best constant in squared error): the reference row of `gsae report`;
- for the KL ("unembed" mode, used when the logits are an affine map z = W_U h + b of the
  unembedding's input h, checked on the first batch): `unembed_in` [n, ctx_len, d_u] (the clean
  h), `unembed_p` [n, ctx_len, d_u] = Σ_v P_clean(v) W_U[v] and `lse_clean` [n, ctx_len] float64
  = log Σ_v exp z_clean(v). For a spliced pass with unembedding input h' and log-sum-exp L',
      KL(P_clean ‖ P_spliced) = Σ_v P_clean(v) (z_clean(v) - z'(v)) - L_clean + L'
                             = unembed_p · (h - h') + (L' - L_clean)
  exactly (the bias cancels), so an SAE's eval needs neither the clean logits nor a second
  vocabulary-sized softmax; its rounding error (~1e-6 nats per position, from the float32
  log-sum-exps) is that of the textbook Σ P (log P - log Q) in float32. In "logits" mode (any
  other unembedding) each SAE's eval recomputes the clean logits with a restarted clean pass.

Activations are stored in the model's dtype (float32 by default), so a cached eval set gives
bit-identical inputs to a freshly computed one; `eval.cache=false` builds the same object in
memory and runs the same per-SAE code, so both paths give identical metrics.

The cache is an artifact in `evalset_dir(cfg)`: `evalset.safetensors`, `evalset.json`,
`config.yaml`, then the completion marker, each written atomically, under the artifact's lock.
A folder without the marker (an interrupted build) is removed and rebuilt, never read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from gsae_cli import artifacts
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.metrics import kl_div_per_position
from gsae_cli.models import LoadedModel, hook_layer
from gsae_cli.progress import notice, track

FORMAT = "gsae-evalset-2"  # 2: with nll_mean
TENSORS = "evalset.safetensors"
META = "evalset.json"
UNEMBED_IN = "unembed.hook_in"
KL_TENSORS = ("unembed_in", "unembed_p", "lse_clean")

# Vocabulary-sized temporaries are made for a few dozen positions at a time: small buffers are
# recycled by the allocator instead of being fresh (page-faulting) memory for every op.
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Positions and windows
# ---------------------------------------------------------------------------------------------


def first_spliced(cfg: DictConfig) -> int:
    """The first site position of every window (see the module docstring)."""
    return 1 if cfg.eval.splice_all else int(cfg.site_start)


def n_windows_for(cfg: DictConfig) -> int:
    """Windows needed for eval.n_tokens next-token predictions, ctx_len - 1 per window."""
    return -(-cfg.eval.n_tokens // (cfg.eval.ctx_len - 1))


def spread_indices(total: int, n: int) -> list[int]:
    """n distinct window numbers evenly spread over 0 .. total-1: the middle of each of n equal
    strides, floor((2i + 1) total / 2n). Consecutive picks are total/n >= 1 apart."""
    if not 0 < n <= total:
        raise ValueError(f"cannot pick {n} of {total} windows")
    return [((2 * i + 1) * total) // (2 * n) for i in range(n)]


def held_out_windows(cfg: DictConfig, tokenizer, bos: int, eos: int) -> Tensor:
    """Every packed window of the held-out split, [total, ctx_len] int64, in corpus order."""
    from gsae_cli.data import token_windows

    ctx = cfg.eval.ctx_len
    chunks: list[Tensor] = []
    buf: list[list[int]] = []
    for window in token_windows(cfg.data, tokenizer, "eval", ctx, bos, eos):
        buf.append(window)
        if len(buf) == 4096:  # int32 blocks: a fraction of the memory of Python int lists
            chunks.append(torch.tensor(buf, dtype=torch.int32))
            buf = []
    if buf:
        chunks.append(torch.tensor(buf, dtype=torch.int32))
    if not chunks:
        return torch.empty(0, ctx, dtype=torch.int64)
    return torch.cat(chunks).to(torch.int64)


def select_windows(cfg: DictConfig, tokenizer, bos: int, eos: int) -> tuple[Tensor, list[int], int]:
    """(windows [n, ctx_len], their numbers among all held-out windows, how many there are)."""
    n = n_windows_for(cfg)
    every = held_out_windows(cfg, tokenizer, bos, eos)
    total = every.shape[0]
    if total < n:
        ctx = cfg.eval.ctx_len
        raise ConfigError(
            f"The held-out split has {total:,} windows of {ctx} tokens ({total * (ctx - 1):,} "
            f"predictions), fewer than the {n:,} that eval.n_tokens={cfg.eval.n_tokens:,} needs. Lower "
            "eval.n_tokens or eval.ctx_len, hold out more documents (a smaller data.eval_every), or "
            "use a larger corpus."
        )
    index = spread_indices(total, n)
    return every[index], index, total


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


class Splicer:
    """Clean forwards with capture, and forwards with the hook's activation replaced.

    method: "auto" (restart from the hook's block when the hook is inside one, verified on the
    first batch), "from_layer" (always restart, unverified) or "full" (full hooked forwards).
    TransformerLens 4.3's `start_at_layer` still executes blocks 0..L-1 on a throw-away input,
    so the restart also hides those blocks from the HF model for the duration of the call."""

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

    @property
    def entry_is_site(self) -> bool:
        return self.entry == self.hook

    @property
    def entry_name(self) -> str:
        """`entry` where a restart needs it (from_layer)."""
        assert self.entry is not None  # from_layer is only ever set for a hook inside a block
        return self.entry

    def clean(self, tokens: Tensor, extra: tuple[str, ...] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits, {name: activation}) for the hook, the block entry (restart method only) and
        `extra` hook names."""
        got: dict[str, Tensor] = {}

        def keeper(name: str):
            # Keyed by the name we asked for: TransformerLens may report an alias's target
            # (hook_resid_pre fires as blocks.L.hook_in).
            def keep(act: Tensor, hook) -> None:
                got[name] = act.detach().clone()  # clone: later in-place ops must not reach it

            return keep

        names = [self.hook] + ([self.entry_name] if self.from_layer and not self.entry_is_site else [])
        names += [n for n in extra if n not in names]
        logits = self.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(n, keeper(n)) for n in names])
        missing = [n for n in names if n not in got]
        if missing:
            raise ConfigError(
                f"Hook {', '.join(missing)} never fired in a forward pass; choose a hook on "
                "the residual stream, attention or MLP path (e.g. blocks.L.hook_resid_pre)."
            )
        if self.from_layer and self.entry_is_site:
            got[self.entry_name] = got[self.hook]
        return logits, got

    def patched(
        self, tokens: Tensor, entry: Tensor | None, replacement: Tensor, capture: str | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(logits, the activation at `capture` or None) with the hook's activation replaced by
        `replacement` (same shape)."""
        got: dict[str, Tensor] = {}

        def replace(act: Tensor, hook) -> Tensor:
            return replacement.to(act.dtype)

        def keep(act: Tensor, hook) -> None:
            got["c"] = act.detach()

        fwd_hooks = [(self.hook, replace)] + ([(capture, keep)] if capture else [])
        if self.from_layer:
            assert self.layer is not None  # from_layer is only ever set for a hook inside a block
            with _only_blocks_from(self.bridge, self.layer):
                logits = self.bridge.run_with_hooks(
                    entry, start_at_layer=self.layer, return_type="logits", fwd_hooks=fwd_hooks
                )
        else:
            logits = self.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=fwd_hooks)
        if capture and "c" not in got:
            raise ArtifactError(
                f"Hook {capture} did not fire in the spliced pass; rebuild the eval set "
                "(remove its folder under out_dir/evalset/)."
            )
        return logits, got.get("c")

    def checked_entry(self, tokens: Tensor, logits: Tensor, site: Tensor, entry: Tensor | None) -> Tensor | None:
        """The block entry to pass to `patched` for this batch: on the first call of an "auto"
        splicer, verify the restart path first (it may fall back to full forwards, which take none)."""
        if self.unverified:
            self.verify(tokens, logits, site, entry)
        return entry if self.from_layer else None

    def ablated_nll(
        self, tokens: Tensor, entry: Tensor | None, site: Tensor, first: int, value: Tensor | float = 0.0
    ) -> Tensor:
        """Per-window sums of next-token NLL [n] with the site set to `value` (zeros, or one
        activation broadcast to every position) at positions >= `first`."""
        ablated = site.clone()
        ablated[:, first:] = value
        logits, _ = self.patched(tokens, entry, ablated)
        return next_token_nll(logits, tokens).sum(dim=1)

    def verify(self, tokens: Tensor, logits: Tensor, site: Tensor, entry: Tensor | None) -> None:
        """On the first batch: the restart path, fed the clean activation, must give the clean
        logits (one sequence, a fraction of a pass). If not, use full forwards from then on."""
        self.unverified = False
        try:
            assert entry is not None  # unverified implies from_layer, for which callers pass the entry
            check, _ = self.patched(tokens[:1], entry[:1], site[:1])
            ok = _close(check, logits[:1])
        except Exception as e:  # noqa: BLE001 — any failure of the fast path means: use the slow one
            ok = False
            reason = f"{type(e).__name__}: {e}"
        else:
            reason = "its logits differ from the full forward's"
        if not ok:
            notice(
                f"eval: cannot restart the forward at block {self.layer} for this model ({reason}); "
                "using full forwards (about 1.5x slower)."
            )
            self.from_layer = False


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal to float rounding (relative to the largest logit)."""
    if a.shape != b.shape:
        return False
    tol = 1e-4 if b.dtype == torch.float32 else 2e-2
    scale = float(b.abs().max()) + 1e-6
    return float((a.float() - b.float()).abs().max()) <= tol * scale


def _unembed_affine(bridge) -> tuple[Tensor, Tensor | None] | None:
    """(W_U [vocab, d_u], b_U or None) when the bridge's unembedding wraps a plain Linear."""
    linear = getattr(getattr(bridge, "unembed", None), "original_component", None)
    if isinstance(linear, nn.Linear):
        return linear.weight, linear.bias
    return None


# ---------------------------------------------------------------------------------------------
# Per-position quantities from logits (chunked over positions)
# ---------------------------------------------------------------------------------------------


def _row_step(vocab: int) -> int:
    return max(1, _CHUNK_ELEMENTS // vocab)


def log_sum_exp(logits: Tensor) -> Tensor:
    """log Σ_v exp z(v) per position, float32 arithmetic, as float64 [leading dims]."""
    *lead, v = logits.shape
    rows = logits.reshape(-1, v)
    step = _row_step(v)
    out = torch.cat([torch.logsumexp(rows[i : i + step].float(), dim=-1) for i in range(0, rows.shape[0], step)])
    return out.view(lead).double()


def next_token_nll(logits: Tensor, tokens: Tensor, lse: Tensor | None = None) -> Tensor:
    """Per-position next-token NLL [batch, ctx_len - 1] float64: position t predicts token t + 1
    (TransformerLens's convention; the last position predicts nothing)."""
    if lse is None:
        lse = log_sum_exp(logits)
    target = logits[:, :-1].gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    return lse[:, :-1] - target.double()


def kl_direct(logits_clean: Tensor, logits_spliced: Tensor) -> Tensor:
    """KL(P_clean ‖ P_spliced) per position [batch, ctx_len] float64 from both sets of logits."""
    b, s, v = logits_clean.shape
    rows_c, rows_s = logits_clean.reshape(b * s, v), logits_spliced.reshape(b * s, v)
    step = _row_step(v)
    out = torch.cat([kl_div_per_position(rows_c[i : i + step], rows_s[i : i + step]) for i in range(0, b * s, step)])
    return out.view(b, s).double()


def _expected_unembedding(logits: Tensor, w: Tensor) -> Tensor:
    """Σ_v P(v) W_U[v] per position [batch, ctx_len, d_u] float32 (w: W_U in float32)."""
    b, s, v = logits.shape
    rows = logits.reshape(b * s, v)
    step = _row_step(v)
    out = torch.cat([torch.softmax(rows[i : i + step].float(), dim=-1) @ w for i in range(0, b * s, step)])
    return out.view(b, s, -1)


# ---------------------------------------------------------------------------------------------
# The eval set
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    tokens: Tensor  # [n, ctx_len] int64
    site: Tensor  # [n, ctx_len, d] clean activation at the hook (model dtype)
    entry: Tensor | None  # [n, ctx_len, d] residual entering the hook's block, or None
    nll_clean: Tensor  # [n] float64
    nll_zero: Tensor  # [n] float64
    kl: dict[str, Tensor] | None  # KL_TENSORS ("unembed" mode) or None ("logits" mode)
    first: int  # first site position
    hook: str
    method: str  # "from_layer" | "full": how patched passes run
    info: dict = field(default_factory=dict)  # provenance, written to evalset.json
    nll_mean: Tensor | None = None  # [n] float64, the site at its mean (built after the passes above)

    @property
    def n_windows(self) -> int:
        return self.tokens.shape[0]

    @property
    def ctx_len(self) -> int:
        return self.tokens.shape[1]

    @property
    def kl_mode(self) -> str:
        return "unembed" if self.kl is not None else "logits"

    @property
    def frac_passthrough(self) -> float:
        """Non-BOS positions that keep their clean activation / all non-BOS positions."""
        return max(self.first - 1, 0) / (self.ctx_len - 1)

    def entry_rows(self, lo: int, hi: int) -> Tensor:
        return (self.site if self.entry is None else self.entry)[lo:hi]


@torch.no_grad()
def zero_ablation_nll(
    model: LoadedModel,
    hooks: list[str],
    tokens: Tensor,
    first: int,
    *,
    batch_size: int,
    method: str = "auto",
    advance: Callable[[int], None] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-window sums of next-token NLL [n] of the clean pass, and for each hook of the pass with
    that hook zeroed at positions >= `first`: what build_evalset computes as nll_clean and
    nll_zero, with one clean forward for all the hooks instead of one per hook (a scan over many
    sites, sweeps/site_scan.py)."""
    if not hooks:
        raise ValueError("zero_ablation_nll needs at least one hook")
    splicers = {h: Splicer(model, h, method) for h in hooks}
    # every hook, and every restart's block entry, captured in the one clean pass
    names = tuple(
        dict.fromkeys(n for sp in splicers.values() for n in (sp.hook, *((sp.entry,) if sp.from_layer else ())))
    )
    clean: list[Tensor] = []
    zero: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for lo in range(0, tokens.shape[0], batch_size):
        batch = tokens[lo : lo + batch_size].to(model.device)
        logits, acts = splicers[hooks[0]].clean(batch, extra=names)
        clean.append(next_token_nll(logits, batch).sum(dim=1).cpu())
        for hook, sp in splicers.items():
            site = acts[hook]
            entry = sp.checked_entry(batch, logits, site, acts[sp.entry_name] if sp.from_layer else None)
            zero[hook].append(sp.ablated_nll(batch, entry, site, first).cpu())
        if advance is not None:
            advance(batch.shape[0])
    return torch.cat(clean), {h: torch.cat(v) for h, v in zero.items()}


def build_evalset(
    model: LoadedModel,
    hook: str,
    tokens: Tensor,
    first: int,
    *,
    batch_size: int,
    method: str = "auto",
    advance: Callable[[int], None] | None = None,
    kl_mode: str = "auto",
    info: dict | None = None,
) -> EvalSet:
    """The clean and zero-ablated passes over `tokens` [n, ctx_len] (each row BOS + text), with
    what every SAE's eval needs from them. kl_mode "auto" uses "unembed" when the first batch
    shows logits = W_U h + b, else "logits"."""
    n, ctx = tokens.shape
    if ctx < 2:
        raise ConfigError("eval windows need at least 2 tokens (BOS plus one text token).")
    if not 0 <= first < ctx:
        raise ConfigError(f"The first spliced position {first} must lie in 0..{ctx - 1} (site_start, eval.ctx_len).")
    splicer = Splicer(model, hook, method)
    affine = _unembed_affine(model.bridge) if kl_mode in ("auto", "unembed") else None
    # float32 only: with bf16/fp16 logits the shortcut's fp32 product and the low-precision
    # log-sum-exps would differ by about a logit's rounding, as large as a typical KL.
    want_unembed = affine is not None and UNEMBED_IN in model.bridge.hook_dict and affine[0].dtype == torch.float32
    w_float = None
    if want_unembed:  # once, not per batch (a copy for bf16 models)
        assert affine is not None  # want_unembed checked it
        w_float = affine[0].float()
    parts: dict[str, list[Tensor]] = {}

    def add(name: str, value: Tensor) -> None:
        parts.setdefault(name, []).append(value.cpu())

    for lo in range(0, n, batch_size):
        batch = tokens[lo : lo + batch_size].to(model.device)
        logits, acts = splicer.clean(batch, extra=(UNEMBED_IN,) if want_unembed else ())
        site = acts[hook]
        entry = splicer.checked_entry(batch, logits, site, acts.get(splicer.entry_name) if splicer.from_layer else None)
        if lo == 0 and want_unembed:
            assert affine is not None  # want_unembed checked it
            weight, bias = affine
            want_unembed = _close(F.linear(acts[UNEMBED_IN], weight, bias), logits)
            if not want_unembed:
                notice(
                    "eval: this model's logits are not an affine map of the unembedding's input; "
                    "computing the clean logits again for every SAE's KL (slower)."
                )
        lse = log_sum_exp(logits)
        add("nll_clean", next_token_nll(logits, batch, lse).sum(dim=1))
        add("site", site)
        if splicer.from_layer and not splicer.entry_is_site:
            assert entry is not None  # clean() captured the block entry
            add("entry", entry)
        if want_unembed:
            assert w_float is not None  # set whenever want_unembed is
            add("unembed_in", acts[UNEMBED_IN])
            add("unembed_p", _expected_unembedding(logits, w_float))
            add("lse_clean", lse)
        del logits
        add("nll_zero", splicer.ablated_nll(batch, entry, site, first))
        if advance is not None:
            advance(batch.shape[0] * (ctx - 1))
    cat = {k: torch.cat(v) for k, v in parts.items()}
    es = EvalSet(
        tokens=tokens.to(torch.int64).cpu(),
        site=cat["site"],
        entry=cat.get("entry"),
        nll_clean=cat["nll_clean"],
        nll_zero=cat["nll_zero"],
        kl={k: cat[k] for k in KL_TENSORS} if want_unembed else None,
        first=first,
        hook=hook,
        method=splicer.method,
        info=dict(info or {}),
    )
    es.nll_mean = _mean_ablated_nll(splicer, es, batch_size, model.device)
    return es


def site_mean(es: EvalSet, batch_size: int = 64) -> Tensor:
    """The mean clean activation over every site position of every window, in the site's dtype
    (summed in float64, a batch of windows at a time: no float64 copy of the whole site)."""
    total = sum(
        es.site[lo : lo + batch_size, es.first :].double().sum(dim=(0, 1)) for lo in range(0, es.n_windows, batch_size)
    )
    mean = total / (es.n_windows * (es.ctx_len - es.first))
    assert isinstance(mean, Tensor)  # sum is 0 only for no windows, where the division has raised
    return mean.to(es.site.dtype)


def _mean_ablated_nll(splicer: Splicer, es: EvalSet, batch_size: int, device) -> Tensor:
    """nll_mean: a second pass, since the mean needs every window's site first."""
    mean = site_mean(es)
    out = []
    for lo in range(0, es.n_windows, batch_size):
        hi = min(lo + batch_size, es.n_windows)
        entry = es.entry_rows(lo, hi).to(device) if splicer.from_layer else None
        out.append(
            splicer.ablated_nll(
                es.tokens[lo:hi].to(device), entry, es.site[lo:hi].to(device), es.first, mean.to(device)
            ).cpu()
        )
    return torch.cat(out).double()


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def save_evalset(directory: Path, es: EvalSet, eval_set_hash: str, config_yaml: str) -> None:
    """Tensors, then evalset.json and config.yaml, then the completion marker (each atomic)."""
    from safetensors.torch import save

    assert es.nll_mean is not None  # build_evalset sets it
    tensors = {
        "tokens": es.tokens,
        "site": es.site,
        "nll_clean": es.nll_clean,
        "nll_zero": es.nll_zero,
        "nll_mean": es.nll_mean,
    }
    if es.entry is not None:
        tensors["entry"] = es.entry
    if es.kl is not None:
        tensors.update(es.kl)
    meta = {
        "format": FORMAT,
        "eval_set": eval_set_hash,
        "hook": es.hook,
        "first": str(es.first),
        "method": es.method,
        "kl_mode": es.kl_mode,
    }
    directory.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_bytes(
        directory / TENSORS, save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    )
    artifacts.write_json(
        directory / META,
        {
            **es.info,
            **meta,
            "first": es.first,
            "n_windows": es.n_windows,
            "ctx_len": es.ctx_len,
            "tensors": sorted(tensors),
        },
    )
    artifacts.atomic_write_text(directory / "config.yaml", config_yaml)
    artifacts.mark_complete(directory)


def load_evalset(directory: Path, eval_set_hash: str) -> EvalSet:
    """A complete cached eval set; anything inconsistent is an ArtifactError naming the fix."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = directory / TENSORS

    def damaged(why: str) -> ArtifactError:
        return ArtifactError(
            f"The cached eval set {directory} is damaged ({why}). Remove it "
            f"(rm -r {directory}) and rerun: it is rebuilt from the model and corpus."
        )

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 — safetensors raises several types for a bad file
        raise damaged(f"{type(e).__name__}: {e}") from None
    if meta.get("format") != FORMAT or meta.get("eval_set") != eval_set_hash:
        raise damaged(
            f"format {meta.get('format')!r}, eval set {meta.get('eval_set')!r}; expected {FORMAT!r}, {eval_set_hash!r}"
        )
    needed = ["tokens", "site", "nll_clean", "nll_zero", "nll_mean"] + (
        list(KL_TENSORS) if meta.get("kl_mode") == "unembed" else []
    )
    layer = hook_layer(meta.get("hook", ""))
    if meta.get("method") == "from_layer" and meta.get("hook") != f"blocks.{layer}.hook_resid_pre":
        needed.append("entry")  # the restart needs the block's entry unless it is the site itself
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise damaged(f"missing {', '.join(missing)}")
    n, ctx = tensors["tokens"].shape
    shapes_ok = (
        tensors["site"].shape[:2] == (n, ctx)
        and tensors["nll_clean"].shape == (n,)
        and tensors["nll_zero"].shape == (n,)
        and tensors["nll_mean"].shape == (n,)
        and all(tensors[k].shape[:2] == (n, ctx) for k in needed[5:])
    )
    if not shapes_ok:
        raise damaged("tensor shapes disagree")
    return EvalSet(
        tokens=tensors["tokens"],
        site=tensors["site"],
        entry=tensors.get("entry"),
        nll_clean=tensors["nll_clean"],
        nll_zero=tensors["nll_zero"],
        kl={k: tensors[k] for k in KL_TENSORS} if meta.get("kl_mode") == "unembed" else None,
        first=int(meta["first"]),
        hook=meta["hook"],
        method=meta["method"],
        info=artifacts.read_json(directory / META) if (directory / META).exists() else {},
        nll_mean=tensors["nll_mean"],
    )


def obtain_evalset(cfg: DictConfig, model: LoadedModel) -> tuple[EvalSet, bool]:
    """(the eval set of this config, whether it came from the cache). With eval.cache the
    cached artifact is read, or built under its lock and saved; without, it is built in memory."""
    from gsae_cli.config import evalset_dir, evalset_hash, evalset_identity, to_yaml
    from gsae_cli.status import recording

    if not cfg.eval.cache:
        return _build_for(cfg, model), False
    directory, digest = evalset_dir(cfg), evalset_hash(cfg)
    with artifacts.locked(directory, "the eval set"):
        if artifacts.is_complete(directory):
            notice(f"reusing eval set {directory}")
            return load_evalset(directory, digest), True
        artifacts.remove(directory)  # an interrupted build: never half-used, redone
        selected = _select(cfg, model)  # a too-small split fails before anything is written
        directory.mkdir(parents=True)
        with recording(directory):
            es = _build_for(cfg, model, selected)
            es.info["identity"] = evalset_identity(cfg)
            save_evalset(directory, es, digest, to_yaml(cfg))
    return es, False


def _select(cfg: DictConfig, model: LoadedModel) -> tuple[Tensor, list[int], int]:
    return select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)


def _build_for(cfg: DictConfig, model: LoadedModel, selected: tuple[Tensor, list[int], int] | None = None) -> EvalSet:
    windows, index, total = selected if selected is not None else _select(cfg, model)
    t0 = time.monotonic()
    with track("eval set (clean, zero- and mean-ablated)", windows.shape[0] * (windows.shape[1] - 1), "tokens") as bar:
        es = build_evalset(
            model, cfg.hook, windows, first_spliced(cfg), batch_size=cfg.eval.batch_size, advance=bar.advance
        )
    es.info.update(
        {"held_out_windows": total, "window_indices": index, "build_seconds": round(time.monotonic() - t0, 3)}
    )
    return es
