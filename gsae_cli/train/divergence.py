"""Did a training run diverge? Read off its logged reconstruction loss.

A learning rate past an SAE's stability edge does not always give a non-finite loss: at block 24
of the default model, relu and gated at 3e-3 trained normally for ~360 steps, then the logged
reconstruction loss jumped by 10^2-10^6 and the run fell back with most features dead. The saved
SAE is a valid file with misleading metrics, so training records the jump and `gsae eval` and
`gsae report` flag the SAE instead of letting it become a silent point on a frontier.

The rule: a logged (`train.log_every`-step mean) `recon` above FACTOR times the lowest logged
before it. Rows logged during an L1 warm-up (`l1_coefficient` below its final value) do not set
that minimum: with little sparsity pressure the reconstruction is better than the run can keep.
Normal runs only approach their minimum again: on the default model's 229 logs no run that kept
training sensibly came near 10x, the diverged ones exceeded 25x.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

FACTOR = 10.0
LOG = "metrics.jsonl"  # the training log of a gsae SAE directory (train/trainer.py writes it)


def find_divergence(rows: Iterable[dict], factor: float = FACTOR) -> dict | None:
    """The first logged row whose `recon` exceeds `factor` x the minimum of the rows before it
    (rows in step order, as in metrics.jsonl), as {step, recon, min_before, min_step, factor};
    None if there is none. Rows without `step` or `recon` are skipped."""
    rows = [r for r in rows if isinstance(r, dict) and "step" in r and r.get("recon") is not None]
    full_l1 = max((r["l1_coefficient"] for r in rows if r.get("l1_coefficient") is not None), default=None)
    best: tuple[float, int] | None = None
    for row in rows:
        recon = float(row["recon"])
        if best is not None and not recon <= factor * best[0]:  # (a NaN counts as a jump)
            return {
                "step": int(row["step"]),
                "recon": recon,
                "min_before": best[0],
                "min_step": best[1],
                "factor": factor,
            }
        warming = full_l1 is not None and row.get("l1_coefficient") is not None and row["l1_coefficient"] < full_l1
        if not warming and math.isfinite(recon) and (best is None or recon < best[0]):
            best = (recon, int(row["step"]))
    return None


def divergence_of_log(path: Path) -> dict | None:
    """find_divergence over a training log (None if the file is missing; lines that are not JSON
    objects, as in a foreign or truncated file, are skipped)."""
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return find_divergence(rows)


def divergence_of_sae(directory: str | Path | None, meta: dict) -> dict | None:
    """What an SAE's metadata (sae.json, or the `sae` block of an eval's metrics.json) says of its
    training (recorded since gsae recorded it), else what the training log in its directory says
    (SAEs trained before; None without a directory)."""
    if "divergence" in meta:
        return meta["divergence"] or None
    return divergence_of_log(Path(directory) / LOG) if directory else None


def describe(div: dict) -> str:
    """One clause for a warning."""
    ratio = div["recon"] / div["min_before"] if div["min_before"] > 0 else math.inf
    text = (
        f"the logged reconstruction loss jumped to {div['recon']:.4g} at step {div['step']:,}, "
        f"{ratio:.3g}x the {div['min_before']:.4g} reached by step {div['min_step']:,}: training diverged"
    )
    if div.get("baseline"):
        text = f"its frozen relu baseline ({div['baseline']}) diverged in training: {text}"
    return text
