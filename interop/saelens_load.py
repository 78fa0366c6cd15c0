"""SAELens's side of interop/check_saelens.py, run by SAELens's own Python (never imports gsae):
load each exported folder with `SAE.load_from_disk`, encode and decode the inputs gsae saved
beside it, and print one JSON line per folder comparing them with gsae's features,
reconstruction and active set.

    saelens_load.py CASES_DIR        (CASES_DIR/NAME/export/ and CASES_DIR/NAME/expected.safetensors)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the largest difference on the scale of the values."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> None:
    from sae_lens import SAE, __version__

    for case in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
        expected = load_file(str(case / "expected.safetensors"))
        sae = SAE.load_from_disk(str(case / "export"), device="cpu")
        with torch.no_grad():
            f = sae.encode(expected["x"])
            x_hat = sae.decode(f)
        row = {
            "case": case.name,
            "sae_lens": __version__,
            "class": type(sae).__name__,
            "features_max_rel": max_relative(f, expected["features"]),
            "recon_max_rel": max_relative(x_hat, expected["recon"]),
            "active_differ": int(((f != 0) != expected["active"]).sum()),
            "l0": float((f != 0).sum(-1).float().mean()),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
