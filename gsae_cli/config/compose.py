"""Composing a config: Hydra over `conf/` and the user's overrides, checked against the schema,
with errors that name the key and the fix."""

from __future__ import annotations

import copy
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from gsae_cli.config.schema import CONF_DIR, Config
from gsae_cli.core import paths, storage
from gsae_cli.errors import ConfigError

_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        ConfigStore.instance().store(name="gsae_schema", node=Config)
        _registered = True


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra override strings; errors become ConfigError.
    Folders in GSAE_CONFIG_PATH are searched after the built-in tree, for options of their own
    (core/paths.py); a `hydra.searchpath=[...]` override replaces them."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            extra = paths.extra_conf_dirs()
            own = any(o.startswith("hydra.searchpath=") for o in overrides)  # the user's own wins
            search = [f"hydra.searchpath=[{','.join(repr(f'file://{d}') for d in extra)}]"] if extra and not own else []
            cfg = compose(config_name="config", overrides=[*search, *overrides])
    except (HydraException, OmegaConfBaseException) as e:
        msg = _tidy_hydra_message(e)
        raise ConfigError(
            f"Bad configuration: {msg}\nOverrides use Hydra's grammar (key=value, group=option); "
            "`gsae show-config` prints every key with its current value."
        ) from None
    finally:
        GlobalHydra.instance().clear()
    _validate(cfg)
    # Every stage composes its config once: this is where the process takes its share of cores.
    from gsae_cli.core.cpus import use_thread_share

    use_thread_share(cfg.threads)
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
    positive = [
        "harvest.n_tokens",
        "harvest.ctx_len",
        "harvest.batch_size",
        "harvest.chunk_rows",
        "train.n_tokens",
        "train.batch_size",
        "eval.n_tokens",
        "eval.ctx_len",
        "eval.batch_size",
        "sae.expansion_factor",
        "data.eval_every",
        "inspect.top_k",
        "inspect.n_quantiles",
        "inspect.per_quantile",
        "inspect.n_logits",
        "inspect.n_neighbours",
        "inspect.hist_bins",
        "inspect.shard_features",
        "inspect.page_size",
        "inspect.study_features",
        "train.prefetch_chunks",
    ]
    if cfg.train.data_streams < 1 or cfg.train.batch_size % cfg.train.data_streams:
        raise ConfigError(
            f"train.data_streams={cfg.train.data_streams} must be positive and divide "
            f"train.batch_size={cfg.train.batch_size} (each stream gives an equal part of a batch)."
        )
    if cfg.threads is not None and cfg.threads <= 0:
        raise ConfigError(f"threads must be positive (or null: this process's share of the cores), got {cfg.threads}.")
    if cfg.inspect.n_tokens is not None and cfg.inspect.n_tokens <= 0:
        raise ConfigError(f"inspect.n_tokens must be positive (or null: eval.n_tokens), got {cfg.inspect.n_tokens}.")
    if cfg.inspect.context_before < 0 or cfg.inspect.context_after < 0:
        raise ConfigError("inspect.context_before and inspect.context_after must be >= 0.")
    for key in positive:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {OmegaConf.select(cfg, key)}.")
    if "://" in str(cfg.out_dir):
        raise ConfigError(
            f"out_dir={cfg.out_dir} is a URL; out_dir holds SAEs, evaluations, reports and the locks that "
            "coordinate processes, which need a file system (local or shared). Put the activation stores, "
            f"the large part, on object storage with store_url={cfg.out_dir} and keep out_dir a path."
        )
    if cfg.store_url:
        storage.location(cfg.store_url)  # an unsupported scheme or a missing s3fs fails here, at once
    if cfg.site_start < 0:
        raise ConfigError(f"site_start must be >= 0, got {cfg.site_start}.")
    for stage in ("harvest", "eval"):
        if cfg[stage].ctx_len <= max(cfg.site_start, 1):
            raise ConfigError(
                f"{stage}.ctx_len={cfg[stage].ctx_len} leaves no site positions: it must exceed "
                f"site_start={cfg.site_start} (and 1, the BOS position)."
            )
    lr = effective_lr(cfg)
    if not lr > 0:
        raise ConfigError(f"The learning rate must be positive, got {lr} (train.lr or sae.lr).")
    if not 0 <= cfg.train.lr_decay_fraction <= 1:
        raise ConfigError(
            f"train.lr_decay_fraction must be in [0, 1] (0: no decay), got {cfg.train.lr_decay_fraction}."
        )
    fractions = {
        "train.resample_interval": cfg.train.resample_interval,
        "train.resample_stop_fraction": cfg.train.resample_stop_fraction,
        "train.resample_dead_window": cfg.train.resample_dead_window,
        "train.resample_lr_factor": cfg.train.resample_lr_factor,
    }
    for key, value in fractions.items():
        if not 0 < value <= 1:
            raise ConfigError(f"{key} must be in (0, 1], got {value}.")
    if cfg.eval.bootstrap_samples < 0:
        raise ConfigError(f"eval.bootstrap_samples must be >= 0 (0: no intervals), got {cfg.eval.bootstrap_samples}.")
    if cfg.sae.l1_coefficient < 0:
        raise ConfigError(f"sae.l1_coefficient must be >= 0, got {cfg.sae.l1_coefficient}.")
    if cfg.data.eval_every < 2:
        raise ConfigError("data.eval_every must be >= 2 (every N-th document is held out for eval).")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def effective_lr(cfg: DictConfig) -> float:
    """train.lr when set, else the architecture's own sae.lr."""
    return float(cfg.train.lr if cfg.train.lr is not None else cfg.sae.lr)


def baseline_config(cfg: DictConfig) -> DictConfig:
    """The config of the relu SAE a rescale_shift SAE is built on: every key kept except the
    architecture and its own learning rate, so it is exactly the SAE `sae=relu` with the same keys
    trains (and reuses)."""
    relu_lr = compose_config(["sae=relu"]).sae.lr
    merged = OmegaConf.merge(cfg, {"sae": {"name": "relu", "lr": relu_lr}})
    assert isinstance(merged, DictConfig)  # merging onto a DictConfig gives a DictConfig
    return merged


def inspect_text_config(cfg: DictConfig) -> DictConfig:
    """The config whose eval set `gsae inspect` reads: eval's, with inspect.n_tokens if set."""
    if cfg.inspect.n_tokens is None:
        return cfg
    text = copy.deepcopy(cfg)
    text.eval.n_tokens = cfg.inspect.n_tokens
    return text
