"""What identifies an artifact: the keys each stage's output depends on, their hashes, and the
folders named by them (every key outside NON_IDENTITY_KEYS changes the hash of what it shapes)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gsae_cli.config.compose import baseline_config, effective_lr, inspect_text_config, plain
from gsae_cli.config.schema import DEFAULT_CORPUS_VERSION
from gsae_cli.core import storage


def config_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# Keys left out of every artifact hash: each changes only speed, file layout, where things are
# written or what is logged, not what an artifact computes. device, threads, train.compile and the
# forward batch sizes regroup float sums, so they move results by float rounding only (a GPU and a
# CPU eval of one SAE agree to 1.2e-6; a retrained SAE is an equivalent run, not a bit-identical
# one: training carries rounding through every step). tests/config/test_config.py walks the
# whole schema and proves that every other key changes the hash of the artifact it shapes.
NON_IDENTITY_KEYS = {
    "device",  # where tensors live; results agree to float rounding
    "threads",  # CPU threads: speed only (reductions may differ in the last ulp)
    "out_dir",  # where artifacts are written, not what they hold
    "store_url",  # where activation stores are written (their content is hashed)
    "hooks",  # harvest several stores in one pass; each store's own hook is hashed
    "sae.path",  # an SAE from elsewhere: its weights' hash identifies it instead
    "harvest.batch_size",  # sequences per forward pass
    "harvest.shard_chunks",  # chunks per shard file: file layout only (chunk_rows sets the order)
    "harvest.rank",
    "harvest.world_size",  # who writes which shards: the store is the same
    "train.checkpoint_every",
    "train.log_every",
    "train.wandb",
    "train.wandb_project",
    "train.prefetch_chunks",  # how far the reader reads ahead, not which rows it returns
    "train.compile",  # the same maths, fused
    "eval.batch_size",  # windows per forward pass
    "eval.cache",  # the cached and uncached paths give identical results (tested)
    "inspect.shard_features",
    "inspect.page_size",  # how the browser's data is split and paged
    "inspect.against",  # the other SAE of a comparison or study: its own id is hashed, not its path
    "report.equivalence_margin",  # how `gsae report` judges; a report is rebuilt every time, never cached
}


def _identity_part(cfg: DictConfig, group: str) -> dict:
    return {k: v for k, v in plain(cfg[group]).items() if f"{group}.{k}" not in NON_IDENTITY_KEYS}


def corpus_identity(cfg: DictConfig) -> dict:
    """The data config, plus the default corpus's content version (the file is regenerated, not
    configured, so its version must be hashed explicitly)."""
    data = plain(cfg.data)
    if cfg.data.name == "gsae-default" and not cfg.data.path:
        data["default_corpus_version"] = DEFAULT_CORPUS_VERSION
    return data


def harvest_identity(cfg: DictConfig, hook: str) -> dict:
    return {
        "stage": "harvest",
        "model": plain(cfg.model),
        "data": corpus_identity(cfg),
        "hook": hook,
        "site_start": cfg.site_start,
        "harvest": _identity_part(cfg, "harvest"),
    }


_LAMBDA_ARCHS = ("relu", "gated", "rescale_shift", "scaled_relu", "jumprelu")
_K_ARCHS = ("topk", "batchtopk")
# sae.* keys that shape only some architectures (the rest are left out of their identity, so a new
# key never changes an existing architecture's hashes); the report reads them too.
ARCH_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "l1_coefficient": _LAMBDA_ARCHS,
    "tie_weights": ("gated",),
    "r_mag": ("gated",),
    "aux_loss": ("gated",),
    "freeze_aux_decoder": ("gated", "scaled_relu"),
    "k": _K_ARCHS,
    "aux_k": _K_ARCHS,
    "aux_k_coefficient": _K_ARCHS,
    "aux_k_dead_tokens": _K_ARCHS,
    "threshold_window": ("batchtopk",),
    "bandwidth": ("jumprelu",),
    "threshold_init": ("jumprelu",),
    "sparsity_warmup_steps": ("jumprelu",),
}
# Architectures the trainer never resamples (their papers do not): train.resample* do not shape them.
_NO_RESAMPLING = ("jumprelu", "topk", "batchtopk")


def applies(key: str, arch: str) -> bool:
    """Whether sae.`key` shapes an SAE of architecture `arch`."""
    return key not in ARCH_ONLY_KEYS or arch in ARCH_ONLY_KEYS[key]


def train_identity(cfg: DictConfig) -> dict:
    sae = _identity_part(cfg, "sae")
    arch = sae["name"]
    sae = {k: v for k, v in sae.items() if applies(k, arch)}
    if arch == "gated" and not sae["tie_weights"]:
        sae.pop("r_mag")  # untied: W_mag is its own parameter, r_mag does not exist
    sae.pop("lr")
    train = _identity_part(cfg, "train")
    train["lr"] = effective_lr(cfg)  # train.lr=X and sae.lr=X train the same SAE
    if arch in _K_ARCHS or arch == "jumprelu":  # no λ, or jumprelu's own warm-up (sae.sparsity_warmup_steps)
        train.pop("l1_warmup_steps")
    if arch in _NO_RESAMPLING:  # AuxK's dead window is capped by train.resample_dead_window
        kept = ("resample_dead_window",) if arch in _K_ARCHS else ()
        for k in [k for k in train if k.startswith("resample") and k not in kept]:
            train.pop(k)
    elif not train["resample"]:
        for k in [k for k in train if k.startswith("resample_")]:
            train.pop(k)
    if train["data_streams"] == 1:  # the one-stream order every SAE before the key had
        train.pop("data_streams")
    identity = {"stage": "train", "store": harvest_hash(cfg, cfg.hook), "sae": sae, "train": train}
    if cfg.sae.name == "rescale_shift":  # built on a relu SAE: a different baseline, a different SAE
        identity["baseline"] = train_hash(baseline_config(cfg))
    return identity


def harvest_hash(cfg: DictConfig, hook: str) -> str:
    return config_hash(harvest_identity(cfg, hook))


def train_hash(cfg: DictConfig) -> str:
    return config_hash(train_identity(cfg))


def evalset_identity(cfg: DictConfig) -> dict:
    """What fixes an eval set: the held-out windows and the clean and zero-ablated passes over
    them, shared by every SAE evaluated at one (model, hook, corpus, site) (eval.cache)."""
    ev = _identity_part(cfg, "eval")
    ev = {k: ev[k] for k in ("n_tokens", "ctx_len", "splice_all")}
    return {
        "stage": "evalset",
        "model": plain(cfg.model),
        "data": corpus_identity(cfg),
        "hook": cfg.hook,
        "site_start": cfg.site_start,
        "eval": ev,
        "format": 2,
    }  # 2: with nll_mean


# What an evaluation's metrics and a dashboard's firing counts mean; a new definition must not
# reuse artifacts made under the old one. 2: firing is f != 0 (the paper's ||f||_0), the support
# is `l0_gate` beside it (CHANGELOG).
EVAL_METRICS_VERSION = 2


def eval_identity(cfg: DictConfig, sae_id: str) -> dict:
    return {
        "stage": "eval",
        "sae": sae_id,
        "model": plain(cfg.model),
        "data": corpus_identity(cfg),
        "hook": cfg.hook,
        "site_start": cfg.site_start,
        "eval": _identity_part(cfg, "eval"),
        "metrics_version": EVAL_METRICS_VERSION,
    }


_STUDY_KEYS = ("study_features", "study_seed")


def inspect_identity(cfg: DictConfig, sae_id: str) -> dict:
    ins = {k: v for k, v in _identity_part(cfg, "inspect").items() if k not in _STUDY_KEYS}
    ins.pop("n_tokens")  # enters through the eval set
    return {
        "stage": "inspect",
        "sae": sae_id,
        "text": evalset_hash(inspect_text_config(cfg)),
        "inspect": ins,
        "metrics_version": EVAL_METRICS_VERSION,
    }


def inspect_hash(cfg: DictConfig, sae_id: str) -> str:
    return config_hash(inspect_identity(cfg, sae_id))


def compare_hash(inspect_a: str, inspect_b: str) -> str:
    return config_hash({"stage": "compare", "a": inspect_a, "b": inspect_b})


def study_identity(cfg: DictConfig, inspect_a: str, inspect_b: str) -> dict:
    return {
        "stage": "study",
        "a": inspect_a,
        "b": inspect_b,
        "n": cfg.inspect.study_features,
        "seed": cfg.inspect.study_seed,
    }


def evalset_hash(cfg: DictConfig) -> str:
    return config_hash(evalset_identity(cfg))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def out_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir).expanduser()


def store_root(cfg: DictConfig):
    """The folder (Path) or object-storage prefix (UPath) that holds the activation stores."""
    return storage.location(cfg.store_url) if cfg.store_url else out_dir(cfg) / "harvest"


def harvest_dir(cfg: DictConfig, hook: str):
    """A store's location: a Path, or a UPath when store_url is on object storage."""
    return store_root(cfg) / f"{slug(cfg.model.name)}__{slug(hook)}__{harvest_hash(cfg, hook)}"


def train_dir(cfg: DictConfig) -> Path:
    return out_dir(cfg) / "train" / f"{slug(cfg.model.name)}__{slug(cfg.hook)}__{cfg.sae.name}__{train_hash(cfg)}"


def evalset_dir(cfg: DictConfig) -> Path:
    return out_dir(cfg) / "evalset" / f"{slug(cfg.model.name)}__{slug(cfg.hook)}__{evalset_hash(cfg)}"


def inspect_dir(cfg: DictConfig, sae_id: str, arch: str) -> Path:
    return (
        out_dir(cfg)
        / "inspect"
        / f"{slug(cfg.model.name)}__{slug(cfg.hook)}__{slug(arch)}__{inspect_hash(cfg, sae_id)}"
    )


def eval_dir(cfg: DictConfig, sae_id: str) -> Path:
    return out_dir(cfg) / "eval" / f"{slug(cfg.model.name)}__{config_hash(eval_identity(cfg, sae_id))}"
