"""SAE architectures. The registry below is the one place that lists them."""

from __future__ import annotations

import inspect
from typing import Any

from gsae_cli.errors import ConfigError
from gsae_cli.saes.base import (
    SAE,
    LossOutput,
    ParamSlice,
    geometric_median,
    project_out_parallel_grad,
    renormalise_rows_,
    reset_adam_state_,
)
from gsae_cli.saes.batchtopk import BatchTopKSAE
from gsae_cli.saes.gated import GatedSAE
from gsae_cli.saes.jumprelu import JumpReLUSAE
from gsae_cli.saes.relu import ReluSAE
from gsae_cli.saes.rescale_shift import RescaleShiftSAE
from gsae_cli.saes.scaled_relu import ScaledReluSAE
from gsae_cli.saes.topk import TopKSAE

SAE_REGISTRY: dict[str, type[SAE]] = {
    cls.name: cls for cls in (ReluSAE, GatedSAE, RescaleShiftSAE, ScaledReluSAE, JumpReLUSAE, TopKSAE, BatchTopKSAE)
}


class UnknownSAEError(ConfigError, KeyError):
    """An `sae.name` not in the registry (also a KeyError, as a failed registry lookup)."""

    __str__ = Exception.__str__  # KeyError would quote the whole message


def sae_options(sae_config: Any) -> dict[str, Any]:
    """The constructor options of `sae_config.name`'s class, read from the sae config group (every
    option is a key of it of the same name)."""
    cls = SAE_REGISTRY.get(sae_config.name)
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {p: sae_config[p] for p in params if p not in ("self", "d_model", "d_sae")}


def build_sae(name: str, d_model: int, d_sae: int, **options: Any) -> SAE:
    """Construct the registered architecture `name` with its keyword options."""
    cls = SAE_REGISTRY.get(name)
    if cls is None:
        valid = ", ".join(sorted(SAE_REGISTRY))
        raise UnknownSAEError(f"unknown SAE architecture {name!r}; valid names: {valid}")
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "d_model", "d_sae")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"SAE {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'no options'}"
        )
    return cls(d_model, d_sae, **options)


__all__ = [
    "SAE",
    "SAE_REGISTRY",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "LossOutput",
    "ParamSlice",
    "ReluSAE",
    "RescaleShiftSAE",
    "ScaledReluSAE",
    "TopKSAE",
    "UnknownSAEError",
    "build_sae",
    "sae_options",
    "geometric_median",
    "project_out_parallel_grad",
    "renormalise_rows_",
    "reset_adam_state_",
]
