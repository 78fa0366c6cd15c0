"""Eval sets: the held-out windows of one (model, corpus, hook, site) and everything about them that
does not depend on the SAE (clean activations, the clean, zero- and mean-ablated losses, what the
KL needs), computed once and cached for every SAE evaluated there.

Windows: ceil(eval.n_tokens / (ctx_len - 1)) packed windows spread evenly over the whole held-out
split (`spread_indices`). Positions 0 .. first-1 are context and keep their clean activation;
first .. ctx_len-1 are the site (docs/method.md §3). What an eval set holds, the KL identity it
uses and its cache: docs/guide/evaluation.md, "The eval set and its cache"."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice, track
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.evaluate.splice import (
    Splicer,
    expected_unembedding,
    log_sum_exp,
    logits_close,
    next_token_nll,
    unembed_affine,
)
from gsae_cli.lm.models import LoadedModel, hook_layer

FORMAT = "gsae-evalset-2"  # 2: with nll_mean
TENSORS = "evalset.safetensors"
META = "evalset.json"
UNEMBED_IN = "unembed.hook_in"
KL_TENSORS = ("unembed_in", "unembed_p", "lse_clean")


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
    from gsae_cli.lm.data import token_windows

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
    affine = unembed_affine(model.bridge) if kl_mode in ("auto", "unembed") else None
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
            want_unembed = logits_close(F.linear(acts[UNEMBED_IN], weight, bias), logits)
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
            add("unembed_p", expected_unembedding(logits, w_float))
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
    from gsae_cli.core.status import recording

    if not cfg.eval.cache:
        return build_for_config(cfg, model), False
    directory, digest = evalset_dir(cfg), evalset_hash(cfg)
    with artifacts.locked(directory, "the eval set"):
        if artifacts.is_complete(directory):
            notice(f"reusing eval set {directory}")
            return load_evalset(directory, digest), True
        artifacts.remove(directory)  # an interrupted build: never half-used, redone
        selected = _select(cfg, model)  # a too-small split fails before anything is written
        directory.mkdir(parents=True)
        with recording(directory):
            es = build_for_config(cfg, model, selected)
            es.info["identity"] = evalset_identity(cfg)
            save_evalset(directory, es, digest, to_yaml(cfg))
    return es, False


def _select(cfg: DictConfig, model: LoadedModel) -> tuple[Tensor, list[int], int]:
    return select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)


def build_for_config(
    cfg: DictConfig, model: LoadedModel, selected: tuple[Tensor, list[int], int] | None = None
) -> EvalSet:
    """The eval set of `cfg` (its held-out windows, or `selected`), built now without the cache."""
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
