"""`gsae export`: write a gsae SAE in another tool's on-disk format. Formats: `saelens`.

SAELens's folder (`cfg.json` in its pre-6.0 flat layout, which SAELens 5 and 6 both read, and
`sae_weights.safetensors`): relu → "standard", gated → "gated" (weights copied unchanged),
rescale_shift → the exactly equivalent "gated", scaled_relu → the equivalent "standard",
jumprelu → "jumprelu", topk → "topk", batchtopk → "jumprelu" with every threshold θ; a gated SAE
with `sae.tie_weights=false` is refused (SAELens cannot represent a free W_mag). gsae's
provenance goes to `gsae.json`. The format and the equivalences: docs/guide/export.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from gsae_cli.core import artifacts, atomic
from gsae_cli.errors import ConfigError
from gsae_cli.lm.models import hook_layer
from gsae_cli.saes import (
    SAE,
    BatchTopKSAE,
    GatedSAE,
    JumpReLUSAE,
    ReluSAE,
    RescaleShiftSAE,
    ScaledReluSAE,
    TopKSAE,
)

FORMATS = ("saelens",)
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CFG = "cfg.json"


def saelens_tensors(sae: SAE) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(SAELens architecture, its state dict, its cfg.json fields beyond the common ones) for a
    gsae SAE; tensors float32, contiguous, on CPU. docs/guide/export.md gives each equivalence."""
    extra: dict = {}
    if isinstance(sae, ReluSAE):
        arch, named = "standard", {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    elif isinstance(sae, ScaledReluSAE):  # t > 0: t ⊙ ReLU(z) = ReLU(t ⊙ z), a relu SAE exactly
        t = torch.exp(sae.r_scale)
        arch, named = (
            "standard",
            {"W_enc": sae.W_enc * t, "b_enc": sae.b_enc * t, "W_dec": sae.W_dec, "b_dec": sae.b_dec},
        )
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
    elif isinstance(sae, JumpReLUSAE):  # the paper's encoder: no b_dec subtracted
        arch, extra = "jumprelu", {"apply_b_dec_to_input": False}
        named = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        named["threshold"] = sae.threshold
    elif isinstance(sae, BatchTopKSAE):  # at inference a JumpReLU whose thresholds all equal θ
        arch = "jumprelu"
        named = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        named["threshold"] = sae.threshold.expand(sae.d_sae)
    elif isinstance(sae, TopKSAE):
        k = {"k": sae.k}  # (the pre-6.0 layout reads k from activation_fn_kwargs)
        arch = "topk"
        extra = {**k, "activation_fn_str": "topk", "activation_fn_kwargs": k, "rescale_acts_by_decoder_norm": False}
        named = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    else:
        raise ConfigError(
            f"No SAELens equivalent for the {getattr(sae, 'name', type(sae).__name__)} architecture; "
            "exportable: relu, gated (tied), rescale_shift, scaled_relu, jumprelu, topk, batchtopk."
        )
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in named.items()}
    return arch, tensors, extra


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


def saelens_config(
    sae: SAE, architecture: str, meta: dict, train_cfg: DictConfig, cfg: DictConfig, extra: dict | None = None
) -> dict:
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
        **(extra or {}),
    }


def run_export(cfg: DictConfig, fmt: str, dest: Path | None = None) -> Path:
    """Write the SAE of this config (or sae.path) as `fmt`; returns the folder written."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}.")
    from gsae_cli.evaluate.run import locate_sae
    from gsae_cli.saes.io import load_sae

    sae_dir, meta, _ = locate_sae(cfg)
    sae = load_sae(sae_dir)
    architecture, tensors, extra = saelens_tensors(sae)
    config = saelens_config(sae, architecture, meta, _training_config(sae_dir, cfg), cfg, extra)
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
    with atomic.folder(dest, remove=artifacts.remove) as tmp:  # remove: renames the old export aside first
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        (tmp / SAELENS_CFG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "gsae.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")


def load_saelens_export(path: str | Path) -> SAE:
    """A gsae SAE rebuilt from a SAELens folder in the layout this module writes (a scaled ReLU
    comes back as the relu SAE it equals; a BatchTopK as BatchTopKSAE when its thresholds are one
    value): for checking an export, or for bringing one back."""
    path = Path(path)
    config = json.loads((path / SAELENS_CFG).read_text())
    tensors = load_file(str(path / SAELENS_WEIGHTS))
    arch, applied = config["architecture"], config.get("apply_b_dec_to_input", True)
    if config.get("normalize_activations", "none") != "none":
        raise ConfigError(f"{path}: only SAEs with normalize_activations='none' map onto gsae's architectures.")
    d_in, d_sae = int(config["d_in"]), int(config["d_sae"])
    weights: dict[str, torch.Tensor] = {k: tensors[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k in tensors}
    if arch == "standard" and applied:
        sae: SAE = ReluSAE(d_in, d_sae)
        state = tensors
    elif arch == "gated" and applied:
        sae = GatedSAE(d_in, d_sae)
        state = {"W_gate": tensors["W_enc"], **{k: v for k, v in tensors.items() if k != "W_enc"}}
    elif arch == "topk" and applied:
        sae, state = TopKSAE(d_in, d_sae, k=int(config["k"])), weights
    elif arch == "jumprelu" and not applied:
        sae = JumpReLUSAE(d_in, d_sae)
        state = {**weights, "log_threshold": torch.log(tensors["threshold"])}
    elif arch == "jumprelu" and bool((tensors["threshold"] == tensors["threshold"][0]).all()):
        sae = BatchTopKSAE(d_in, d_sae, k=1)
        state = {**weights, **{k: v for k, v in sae.state_dict().items() if k.startswith("threshold")}}
        state["threshold"] = tensors["threshold"][0].clone()
    else:
        raise ConfigError(
            f"{path}: SAELens architecture {arch!r} (apply_b_dec_to_input={applied}) has no gsae equivalent."
        )
    sae.load_state_dict(state)
    return sae.eval()
