"""`gsae export`: write a gsae SAE in another tool's on-disk format. Formats: `saelens`.

SAELens format, as read from SAELens's source (v5 `sae_lens/sae.py`; v6 `sae_lens/saes/
standard_sae.py`, `gated_sae.py`, `loading/pretrained_sae_loaders.py`, `constants.py`):
a folder with `cfg.json` and `sae_weights.safetensors`, loaded by `SAE.load_from_disk(path)`.
- Weights, float32. "standard": `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
  `b_dec [d_in]`, encode = ReLU((x - b_dec) W_enc + b_enc). "gated": `W_enc` (the gate's weight),
  `b_gate`, `r_mag`, `b_mag`, `W_dec`, `b_dec`, encode = 1[(x - b_dec) W_enc + b_gate > 0] ⊙
  ReLU((x - b_dec)(W_enc ⊙ exp(r_mag)) + b_mag); both decode f W_dec + b_dec. The subtraction of
  b_dec needs `apply_b_dec_to_input: true`. These are gsae's equations (docs/method.md §1) with
  gsae's own tensor layouts, so the relu and (tied) gated weights are copied unchanged.
- cfg.json is written flat, in the pre-6.0 layout: SAELens 6 recognises a config without
  `sae_lens_version` as pre-6.0 and moves model_name, hook_name, context_size, prepend_bos,
  dataset_path, ... into its metadata itself, while SAELens 5 (whose config dataclass requires
  every one of those fields) reads it as is; unknown keys are ignored by both, known ones are all
  given. `normalize_activations` is "none": gsae folds its input scale into the saved weights,
  so the exported SAE takes raw activations. `model_name` is the Hugging Face name (sae.json
  `hf_name`); `prepend_bos` is true (every gsae window starts with BOS; BOS activations were
  excluded from training). `hook_layer` is the hook's block (0 for hooks outside the blocks).
- gsae provenance (architecture, train hash, source folder) goes to a separate `gsae.json` so
  that no SAELens version sees an unexpected config key.

rescale_shift (docs/method.md §1) has no SAELens architecture but is exactly a gated SAE: its magnitude
path exp(r_mag) ⊙ (pi - b_enc) + b_mag = exp(r_mag) ⊙ ((x - b_dec) W_enc) + b_mag is the gated
magnitude path with W_gate = W_enc, and its support 1[pi > 0] is the gate with b_gate = b_enc.
So W_enc -> W_enc, b_enc -> b_gate, r_mag and b_mag unchanged (no bias shift is needed because
docs/method.md §1 rescales pi - b_enc, not pi). A gated SAE trained with `sae.r_mag=false` (W_mag = W_gate)
is exported with r_mag = 0. One trained with `sae.tie_weights=false` has a free W_mag, which
SAELens's gated SAE cannot represent, so it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from gsae_cli import artifacts
from gsae_cli.errors import ConfigError
from gsae_cli.models import hook_layer
from gsae_cli.saes import SAE, GatedSAE, ReluSAE, RescaleShiftSAE

FORMATS = ("saelens",)
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"


def saelens_tensors(sae: SAE) -> tuple[str, dict[str, torch.Tensor]]:
    """(SAELens architecture, its state dict) for a gsae SAE; float32, contiguous, on CPU."""
    if isinstance(sae, ReluSAE):
        arch, named = "standard", {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    elif isinstance(sae, GatedSAE):
        if not sae.tie_weights:
            raise ConfigError(
                "This gated SAE was trained with sae.tie_weights=false: its magnitude weights W_mag "
                "are free, and SAELens's gated architecture can only express W_mag = W_gate ⊙ "
                "exp(r_mag). Export a tied gated SAE (the default) instead."
            )
        # r_mag=False (W_mag = W_gate) is SAELens's gated SAE with r_mag = 0: exp(0) = 1 exactly.
        r_mag = sae.r_mag if sae.has_r_mag else torch.zeros_like(sae.b_mag)
        arch, named = (
            "gated",
            {
                "W_enc": sae.W_gate,
                "b_gate": sae.b_gate,
                "r_mag": r_mag,
                "b_mag": sae.b_mag,
                "W_dec": sae.W_dec,
                "b_dec": sae.b_dec,
            },
        )
    elif isinstance(sae, RescaleShiftSAE):  # exactly a gated SAE; see the module docstring
        arch, named = (
            "gated",
            {
                "W_enc": sae.W_enc,
                "b_gate": sae.b_enc,
                "r_mag": sae.r_mag,
                "b_mag": sae.b_mag,
                "W_dec": sae.W_dec,
                "b_dec": sae.b_dec,
            },
        )
    else:
        raise ConfigError(
            f"No SAELens equivalent for the {getattr(sae, 'name', type(sae).__name__)} "
            "architecture; exportable: relu, gated (tied), rescale_shift."
        )
    return arch, {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in named.items()}


def _training_config(sae_dir: Path, cfg: DictConfig) -> DictConfig:
    """The config the SAE was trained with (its folder's config.yaml), else this run's."""
    path = sae_dir / "config.yaml"
    if path.exists():
        try:
            # cast: the config.yaml gsae train writes is a mapping (OmegaConf.load may also give a ListConfig)
            return cast(DictConfig, OmegaConf.load(path))
        except Exception:  # noqa: BLE001 — a foreign or damaged file: fall back to this run's config
            pass
    return cfg


def saelens_config(sae: SAE, architecture: str, meta: dict, train_cfg: DictConfig, cfg: DictConfig) -> dict:
    hook = meta.get("hook") or cfg.hook
    data = train_cfg.get("data") or cfg.data
    harvest = train_cfg.get("harvest") or cfg.harvest
    return {
        "architecture": architecture,
        "d_in": sae.d_model,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": meta.get("hf_name") or cfg.model.hf_name,
        "hook_name": hook,
        "hook_layer": hook_layer(hook) or 0,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "context_size": int(harvest.get("ctx_len", cfg.harvest.ctx_len)),
        "prepend_bos": True,
        "dataset_path": str(data.get("path") or data.get("name")),
        "dataset_trust_remote_code": False,
        "sae_lens_training_version": None,
        "model_from_pretrained_kwargs": {},
        "neuronpedia_id": None,
        "seqpos_slice": [None],
    }


def run_export(cfg: DictConfig, fmt: str, dest: Path | None = None) -> Path:
    """Write the SAE of this config (or sae.path) as `fmt`; returns the folder written."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}.")
    from gsae_cli.evaluate import locate_sae
    from gsae_cli.sae_io import load_sae

    sae_dir, meta, _ = locate_sae(cfg)
    sae = load_sae(sae_dir)
    architecture, tensors = saelens_tensors(sae)
    config = saelens_config(sae, architecture, meta, _training_config(sae_dir, cfg), cfg)
    provenance = {
        "exported_from": str(sae_dir),
        "gsae_architecture": sae.name,
        "gsae_options": sae.options,
        "train_hash": meta.get("train_hash"),
        "model": meta.get("model"),
        "input_scale_folded": meta.get("input_scale_folded"),
        "format": fmt,
    }
    dest = Path(dest).expanduser() if dest else sae_dir / f"export-{fmt}"
    _write_folder(dest, tensors, config, provenance)
    return dest


def _write_folder(dest: Path, tensors: dict[str, torch.Tensor], config: dict, provenance: dict) -> None:
    """Build the whole folder beside `dest`, then rename it into place: a killed export leaves
    either the old folder or the new one, never a mix."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / SAELENS_CFG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "gsae.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        artifacts.remove(dest)  # renames any old export aside first
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_saelens_export(path: str | Path) -> SAE:
    """A gsae SAE (ReluSAE or GatedSAE) rebuilt from a SAELens folder in the layout this module
    writes: for checking an export, or for bringing one back."""
    path = Path(path)
    config = json.loads((path / SAELENS_CFG).read_text())
    tensors = load_file(str(path / SAELENS_WEIGHTS))
    if not config.get("apply_b_dec_to_input", True) or config.get("normalize_activations", "none") != "none":
        raise ConfigError(
            f"{path}: only SAEs with apply_b_dec_to_input=true and "
            "normalize_activations='none' map onto gsae's architectures."
        )
    d_in, d_sae = int(config["d_in"]), int(config["d_sae"])
    if config["architecture"] == "standard":
        sae: SAE = ReluSAE(d_in, d_sae)
        state = tensors
    elif config["architecture"] == "gated":
        sae = GatedSAE(d_in, d_sae)
        state = {"W_gate": tensors["W_enc"], **{k: v for k, v in tensors.items() if k != "W_enc"}}
    else:
        raise ConfigError(f"{path}: SAELens architecture {config['architecture']!r} has no gsae equivalent.")
    sae.load_state_dict(state)
    return sae.eval()
