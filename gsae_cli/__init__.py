"""gsae: Gated SAEs and their baselines as a scriptable experiment pipeline.

`from gsae_cli import load_sae` gives a saved SAE as a torch module on raw activations. The
import is lazy (module `__getattr__`), so `import gsae_cli` stays cheap (no torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_sae"]


def __getattr__(name: str) -> Any:
    if name == "load_sae":
        from gsae_cli.saes.io import load_sae

        return load_sae
    raise AttributeError(f"module 'gsae_cli' has no attribute {name!r}")
