"""`gsae inspect`: run one SAE over held-out text and write its feature browser.

The text is the eval set of this config (gsae_cli/evaluate/evalset.py: the same held-out windows and clean
activations `gsae eval` uses, cached under out_dir/evalset/), with inspect.n_tokens to ask for
more. Only site positions (site_start .. ctx_len - 1) are encoded, as in training and eval.

The artifact (out_dir/inspect/<model>__<hook>__<arch>__<hash>/):
  index.html, feature browser (opens from disk, no network); assets/ (its script and style);
  data/*.js, what the pages load (index, text, one file per `shard_features` features);
  features.safetensors, every number behind the pages as tensors (see FEATURE_TENSORS);
  text.json, the token ids of the windows and the strings of the tokens used;
  summary.json, what was inspected, how, and how long it took; COMPLETE, written last.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from gsae_cli.config import evalset_hash, inspect_dir, inspect_hash, inspect_identity, inspect_text_config, to_yaml
from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice
from gsae_cli.errors import ConfigError
from gsae_cli.inspect.features import (
    SparseActs,
    activation_histograms,
    logit_effects,
    max_activations,
    nearest_by_cosine,
    quantile_examples,
    sparse_from_batches,
    top_examples,
)
from gsae_cli.inspect.webpages import write_browser

FEATURES_FILE = "features.safetensors"
FEATURES_FORMAT = "gsae-features-1"


@dataclass
class FeatureData:
    """Everything a dashboard shows, for every feature of one SAE (tensors on the CPU)."""

    tensors: dict[str, Tensor]  # FEATURE_TENSORS
    tokens: Tensor  # [n_windows, ctx_len] int64, the inspected text
    first: int  # first site position of every window
    n_site_rows: int
    norm: str  # how the final norm was accounted for in the logit effects
    acts: SparseActs  # every firing, for the context activations the pages show (not saved)


# freq, max_act [d]; top_rows/top_vals [d, k]; q_rows/q_vals [d, g, p]; q_ranges [d, g, 2];
# hist [d, bins]; up_ids/up_vals/down_ids/down_vals [d, n_logits]; nb_ids/nb_cos [d, n_neighbours].
# A row r is window r // n_site, position first + r % n_site.
FEATURE_TENSORS = (
    "freq",
    "max_act",
    "top_rows",
    "top_vals",
    "q_rows",
    "q_vals",
    "q_ranges",
    "hist",
    "up_ids",
    "up_vals",
    "down_ids",
    "down_vals",
    "nb_ids",
    "nb_cos",
)


def final_norm(bridge) -> tuple[Tensor | None, bool, str]:
    """(weight, centres?, description) of the model's final norm, for reading a residual
    direction through it: RMSNorm scales by its weight, LayerNorm also removes the mean, Gemma's
    RMSNorm scales by 1 + weight. Unknown norms are skipped (the description says so)."""
    ln = getattr(getattr(bridge, "ln_final", None), "original_component", None)
    if ln is None:
        return None, False, "no final norm found: read through the unembedding alone"
    kind = type(ln).__name__
    weight = getattr(ln, "weight", None)
    weight = None if weight is None else weight.detach().float().cpu()
    if "Gemma" in kind and weight is not None:
        return weight + 1.0, False, f"{kind}: scaled by 1 + weight"
    if "RMS" in kind:
        return weight, False, f"{kind}: scaled by its weight"
    if "LayerNorm" in kind:
        return weight, True, f"{kind}: centred and scaled by its weight"
    return None, False, f"{kind}: not recognised, read through the unembedding alone"


@torch.no_grad()
def encode_site(
    sae, site: Tensor, first: int, batch_windows: int = 16, device: torch.device | str = "cpu"
) -> SparseActs:
    """The SAE's activations at every site position of `site` [n, ctx_len, d], kept sparse."""
    n, ctx = site.shape[0], site.shape[1]
    n_site = ctx - first
    d = site[0, 0].numel()
    if d != sae.d_model:
        raise ConfigError(
            f"The SAE takes d_model={sae.d_model} activations but this hook gives width {d}; "
            "inspect it with the model and hook it was trained on (see its sae.json)."
        )
    batches = []
    for lo in range(0, n, batch_windows):
        x = site[lo : lo + batch_windows, first:].reshape(-1, d).to(device=device, dtype=torch.float32)
        f = sae.encode(x)  # firing = f != 0, as eval's L0 and density count it (docs/method.md §4)
        batches.append((lo * n_site, f.float().cpu(), (f != 0).cpu()))
    return sparse_from_batches(batches, n * n_site, sae.d_sae)


@torch.no_grad()
def feature_data(
    sae, es, W_U: Tensor, norm: tuple[Tensor | None, bool, str], icfg: DictConfig, device: torch.device | str = "cpu"
) -> FeatureData:
    first = es.first
    acts = encode_site(sae, es.site, first, device=device)
    gen = torch.Generator().manual_seed(int(icfg.seed))
    freq = acts.counts.double() / acts.n_rows
    max_act = max_activations(acts)
    top_rows, top_vals = top_examples(acts, icfg.top_k)
    q_rows, q_vals, q_ranges = quantile_examples(acts, icfg.n_quantiles, icfg.per_quantile, gen)
    directions = sae.decoder_directions.detach().float().cpu()
    weight, centre, how = norm
    up_ids, up_vals, down_ids, down_vals = logit_effects(
        directions, W_U.detach().cpu(), weight, centre, min(icfg.n_logits, W_U.shape[0])
    )
    nb_ids, nb_cos = nearest_by_cosine(directions, directions, icfg.n_neighbours, exclude_self=True)
    tensors = {
        "freq": freq,
        "max_act": max_act,
        "top_rows": top_rows,
        "top_vals": top_vals,
        "q_rows": q_rows,
        "q_vals": q_vals,
        "q_ranges": q_ranges,
        "hist": activation_histograms(acts, icfg.hist_bins),
        "up_ids": up_ids,
        "up_vals": up_vals,
        "down_ids": down_ids,
        "down_vals": down_vals,
        "nb_ids": nb_ids,
        "nb_cos": nb_cos,
    }
    return FeatureData(
        tensors=tensors, tokens=es.tokens.cpu(), first=first, n_site_rows=acts.n_rows, norm=how, acts=acts
    )


# The inspect.* keys the pages read (from `info["settings"]`).
PAGE_SETTINGS = (
    "top_k",
    "n_quantiles",
    "per_quantile",
    "context_before",
    "context_after",
    "n_logits",
    "n_neighbours",
    "hist_bins",
    "seed",
    "shard_features",
    "page_size",
)


def page_settings(cfg: DictConfig) -> dict:
    return {k: cfg.inspect[k] for k in PAGE_SETTINGS}


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


@dataclass
class InspectResult:
    path: Path
    summary: dict
    reused: bool
    inspect_hash: str


def run_inspect(cfg: DictConfig, force: bool = False, sae_path: str | None = None) -> InspectResult:
    """Inspect the SAE of this config (or the one in `sae_path`)."""
    from gsae_cli.evaluate.run import check_sae_matches, locate_sae

    if sae_path is not None:
        cfg = copy.deepcopy(cfg)
        cfg.sae.path = sae_path
    sae_dir, meta, sae_id = locate_sae(cfg)
    check_sae_matches(cfg, meta, sae_dir)
    arch = str(meta.get("architecture", cfg.sae.name))
    directory = inspect_dir(cfg, sae_id, arch)
    digest = inspect_hash(cfg, sae_id)
    summary, reused = artifacts.build_once(
        directory, "feature browser", force, lambda: _inspect(cfg, sae_dir, meta, sae_id, directory, digest)
    )
    return InspectResult(directory, summary, reused, digest)


def _inspect(cfg: DictConfig, sae_dir: Path, meta: dict, sae_id: str, directory: Path, digest: str) -> dict:
    from safetensors.torch import save

    from gsae_cli.evaluate.evalset import obtain_evalset
    from gsae_cli.evaluate.splice import unembed_affine
    from gsae_cli.lm.models import load_model, resolve_device, validate_hooks
    from gsae_cli.saes.io import load_sae

    t0 = time.monotonic()
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    validate_hooks(model, [cfg.hook])
    sae = load_sae(sae_dir, device)
    text_cfg = inspect_text_config(cfg)
    es, _ = obtain_evalset(text_cfg, model)
    t1 = time.monotonic()
    unembed = unembed_affine(model.bridge)
    if unembed is None:
        raise ConfigError(
            f"Cannot find a linear unembedding in model {cfg.model.name}, which the "
            "promoted/suppressed tokens need; inspect works with models whose unembed is a Linear."
        )
    data = feature_data(sae, es, unembed[0], final_norm(model.bridge), cfg.inspect, device)
    t2 = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(directory / "config.yaml", to_yaml(cfg))
    tensors = {k: v.contiguous() for k, v in data.tensors.items()}
    artifacts.atomic_write_bytes(
        directory / FEATURES_FILE,
        save(tensors, metadata={"format": FEATURES_FORMAT, "inspect": digest, "first": str(data.first)}),
    )
    setting = f"k={meta['k']}" if meta.get("k") is not None else f"λ={meta.get('l1_coefficient')}"
    label = f"{meta.get('architecture', cfg.sae.name)} SAE, {setting}"
    info = {
        "model": cfg.model.name,
        "hook": cfg.hook,
        "architecture": meta.get("architecture"),
        "l1_coefficient": meta.get("l1_coefficient"),
        "d_sae": int(meta.get("d_sae", sae.d_sae)),
        "d_model": int(sae.d_model),
        "sae": {"path": str(sae_dir), "id": sae_id},
        "label": label,
        "n_windows": int(es.n_windows),
        "ctx_len": int(es.ctx_len),
        "first": int(data.first),
        "site_tokens": int(data.n_site_rows),
        "eval_set": evalset_hash(text_cfg),
        "final_norm": data.norm,
        "inspect_hash": digest,
        "identity": inspect_identity(cfg, sae_id),
        "settings": page_settings(cfg),
    }
    write_browser(directory, data, info, model.tokenizer)
    t3 = time.monotonic()
    freq = data.tensors["freq"]
    summary = {
        **info,
        "frac_dead": float((freq == 0).double().mean()),
        "seconds": {
            "text": round(t1 - t0, 3),
            "features": round(t2 - t1, 3),
            "pages": round(t3 - t2, 3),
            "total": round(t3 - t0, 3),
        },
    }
    artifacts.write_json(directory / "summary.json", summary)
    artifacts.mark_complete(directory)
    notice(
        f"feature browser: {directory / 'index.html'} ({info['d_sae']:,} features, "
        f"{info['site_tokens']:,} tokens, {t3 - t0:.1f} s)"
    )
    return summary


def load_feature_data(directory: Path) -> tuple[dict[str, Tensor], dict]:
    """(tensors, summary) of a complete inspect artifact."""
    from safetensors import safe_open

    directory = Path(directory)
    if not artifacts.is_complete(directory):
        raise ConfigError(
            f"{directory} is not a complete `gsae inspect` artifact (no COMPLETE marker); "
            "rerun `gsae inspect` for that SAE."
        )
    with safe_open(str(directory / FEATURES_FILE), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
    return tensors, artifacts.read_json(directory / "summary.json")
