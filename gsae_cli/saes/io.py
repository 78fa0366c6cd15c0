"""Saving and loading an SAE directory: `sae.safetensors` (weights, for raw activations) and
`sae.json` (architecture, options, and where it came from), readable without the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gsae_cli.core import artifacts, atomic
from gsae_cli.errors import ArtifactError
from gsae_cli.saes import SAE, build_sae

WEIGHTS = "sae.safetensors"
META = "sae.json"


def save_sae(directory: Path, sae: SAE, meta: dict) -> None:
    """Weights then metadata, each written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    with atomic.replacing(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    full = {"architecture": sae.name, "d_model": sae.d_model, "d_sae": sae.d_sae, "options": sae.options, **meta}
    artifacts.write_json(directory / META, full)


def read_sae_meta(directory: Path) -> dict:
    directory = Path(directory)
    if not (directory / META).exists() or not (directory / WEIGHTS).exists():
        raise ArtifactError(
            f"{directory} is not a gsae SAE directory (it needs {META} and {WEIGHTS}); "
            "point sae.path at a folder written by `gsae train`."
        )
    return artifacts.read_json(directory / META)


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SAE:
    """The SAE saved in `directory` as a torch module (`encode`, `decode`, `forward`) that takes
    raw activations of its hook."""
    meta = read_sae_meta(Path(directory))
    sae = build_sae(meta["architecture"], meta["d_model"], meta["d_sae"], **meta.get("options", {}))
    state = load_file(str(Path(directory) / WEIGHTS))
    try:
        sae.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"The weights in {directory} do not match its {META} ({e}).") from None
    sae.meta = meta
    return sae.to(device).eval()
