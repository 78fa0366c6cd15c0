"""Did a training run diverge? Read off its logged reconstruction loss.

A learning rate past an SAE's stability edge does not always give a non-finite loss: at block 24
of the default model, relu and gated at 3e-3 trained normally for ~360 steps, then the 10-step
mean reconstruction loss jumped by 10^2-10^6 and the run fell back with most features dead. The
saved SAE is a valid file with misleading metrics, so training records the jump and `gsae eval`
and `gsae report` flag the SAE instead of letting it become a silent point on a frontier.

The rule: a logged 10-step mean of `recon` above FACTOR times the lowest logged before it. Normal
runs only approach their minimum again (on the default model the largest later value was 3.3x
the run's late median, early in training); the diverged ones exceeded 25x.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

FACTOR = 10.0


def find_divergence(rows: Iterable[dict], factor: float = FACTOR) -> Optional[dict]:
    """The first logged row whose `recon` exceeds `factor` x the minimum of the rows before it
    (rows in step order, as in metrics.jsonl), as {step, recon, min_before, min_step, factor};
    None if there is none."""
    best: Optional[tuple[float, int]] = None
    for row in rows:
        recon = row.get("recon")
        if recon is None:
            continue
        recon = float(recon)
        if best is not None and not recon <= factor * best[0]:  # (a NaN counts as a jump)
            return {"step": int(row["step"]), "recon": recon, "min_before": best[0], "min_step": best[1],
                    "factor": factor}
        if best is None or recon < best[0]:
            best = (recon, int(row["step"]))
    return None


def divergence_of_log(path: Path) -> Optional[dict]:
    """find_divergence over a training run's metrics.jsonl (None if the file is missing)."""
    if not path.exists():
        return None
    return find_divergence(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def describe(div: dict) -> str:
    """One sentence for a warning."""
    return (f"its 10-step reconstruction loss jumped to {div['recon']:.4g} at step {div['step']:,}, "
            f"{div['recon'] / max(div['min_before'], 1e-30):.3g}x the {div['min_before']:.4g} it had reached by "
            f"step {div['min_step']:,}: training diverged")
