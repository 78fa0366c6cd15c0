"""Intervals of the matched-L0 ratio by resampling eval windows: each evaluation's per-window
sums give any resample's L0 and loss recovered, so every resample rebuilds the frontiers. SAEs
evaluated on the same eval set get the same draws (paired), so what every SAE shares cancels."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from gsae_cli.errors import ArtifactError
from gsae_cli.report.frontier import ratios_at_common_targets

WINDOW_FILE = "per_window.safetensors"


@dataclass
class WindowData:
    """One evaluation's per-window scalar sums (metrics.WINDOW_SCALARS, each [n_windows])."""

    label: str  # for messages: the eval folder
    eval_set: str | None  # hash of the eval windows; equal hashes mean the same windows
    sums: dict  # name -> float64 tensor [n_windows]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_windows(self) -> int:
        return int(next(iter(self.sums.values())).shape[0])

    def metrics(self, index=None) -> dict:
        """metrics_from_window_sums on the scalar sums only: L0 and loss recovered need no
        per-dimension sums, and leaving them out skips [B, k, d_model] gathers (~0.5 GB for
        1,000 resamples of 128 windows at d_model 576)."""
        from gsae_cli.evaluate import metrics

        return metrics.metrics_from_window_sums(self.sums, index)

    def resampled(self, n_samples: int, seed: int) -> tuple[list[float], list[float]]:
        """(L0, loss recovered) of each of the `n_samples` resamples drawn with `seed`."""
        key = (n_samples, seed)
        if key not in self._cache:
            from gsae_cli.evaluate import metrics

            m = self.metrics(metrics.bootstrap_indices(self.n_windows, n_samples, seed))
            self._cache[key] = (m["l0"].tolist(), m["loss_recovered"].tolist())
        return self._cache[key]


def _name(path: Path) -> str:
    """eval folder / file: enough to find it, and no machine's layout in a report's JSON."""
    return f"{path.parent.name}/{path.name}"


def load_window_data(directory: Path) -> WindowData:
    """An eval folder's per_window.safetensors; ArtifactError naming what is wrong."""
    import torch
    from safetensors import safe_open

    from gsae_cli.evaluate import metrics

    path = Path(directory) / WINDOW_FILE
    if not path.exists():
        raise ArtifactError(f"{_name(path)} is missing (evaluations made before gsae recorded per-window sums)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            names = set(fh.keys())
            missing = [n for n in metrics.WINDOW_SCALARS if n not in names]
            if missing:
                raise ArtifactError(f"{_name(path)} lacks the per-window sums {', '.join(missing)}")
            sums = {n: fh.get_tensor(n).to(torch.float64) for n in metrics.WINDOW_SCALARS}
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 — safetensors raises its own types for a damaged header
        raise ArtifactError(f"{_name(path)} cannot be read ({e})") from None
    if meta.get("format") != metrics.WINDOW_FORMAT:
        raise ArtifactError(f"{_name(path)} has format {meta.get('format')!r}, not {metrics.WINDOW_FORMAT!r}")
    shapes = {tuple(t.shape) for t in sums.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] == 0:
        raise ArtifactError(
            f"{_name(path)}: the per-window sums are not all [n_windows] with n_windows > 0 (shapes {sorted(shapes)})"
        )
    return WindowData(str(directory), meta.get("eval_set") or None, sums)


def _group_seed(seed: int, group: str) -> int:
    """A seed per eval set for unpaired resampling: different eval sets must not share draws."""
    return int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:15], 16)


def resample_seeds(members: Sequence[WindowData], seed: int) -> tuple[bool, list[int]]:
    """Whether the members can be resampled jointly (all on one eval set: same hash, same
    number of windows), and the seed each member's resamples are drawn with. Paired: the
    evaluation's own seed for all, so the draws are eval's. Unpaired: one seed per eval set
    (members without a hash are each their own set)."""
    groups = [f"{m.eval_set}/{m.n_windows}" if m.eval_set else f"?{m.label}" for m in members]
    if len(set(groups)) == 1 and members and members[0].eval_set:
        return True, [seed] * len(members)
    return False, [_group_seed(seed, g) for g in groups]


def bootstrap_ratio(
    a: Sequence[WindowData], b: Sequence[WindowData], n_samples: int, seed: int, n_targets: int = 5, level: float = 0.95
) -> dict:
    """The percentile interval of matched_l0_ratios(...)["geomean"] over `n_samples` resamples of
    eval windows. Every resample recomputes every SAE's (L0, loss recovered) from its window
    sums, rebuilds both Pareto frontiers and the ratio. A resample whose frontiers do not overlap
    has no ratio; the interval is over those that do (`n_valid` of `n_resamples`)."""
    import torch

    from gsae_cli.evaluate import metrics

    # one pair's common targets are its own overlap: bootstrap_common_targets with a single pair
    boot = bootstrap_common_targets([(a, b)], n_samples, seed, n_targets)
    aligned = [s[0] if s is not None else None for s in boot["samples"]]
    ratios = [r for r in aligned if r is not None]
    interval = metrics.percentile_interval(torch.tensor(ratios, dtype=torch.float64), level) if ratios else None
    return {
        "interval": interval,
        "samples": ratios,
        "aligned": aligned,
        "n_resamples": n_samples,
        "n_valid": len(ratios),
        "paired": boot["paired"],
        "eval_sets": boot["eval_sets"],
        "n_windows": boot["n_windows"],
        "level": level,
    }


def bootstrap_common_targets(
    pairs: Sequence[tuple[Sequence[WindowData], Sequence[WindowData]]], n_samples: int, seed: int, n_targets: int = 5
) -> dict:
    """ratios_at_common_targets on each of `n_samples` resamples of eval windows: every SAE of
    every pair is resampled with the same draws (paired when all share one eval set), the common
    range is rebuilt from the resampled frontiers, and `samples[k]` is the list of the pairs'
    ratios in resample k, or None when the frontiers share no range there."""
    members = [m for a, b in pairs for m in (*a, *b)]
    paired, seeds = resample_seeds(members, seed)
    draws = iter([m.resampled(n_samples, s) for m, s in zip(members, seeds)])
    grouped = [([next(draws) for _ in a], [next(draws) for _ in b]) for a, b in pairs]
    samples: list[list[float] | None] = []
    for k in range(n_samples):
        pts = [([(l0[k], lr[k]) for l0, lr in da], [(l0[k], lr[k]) for l0, lr in db]) for da, db in grouped]
        span, gs = ratios_at_common_targets(pts, n_targets)
        # cast: gs holds no None here (checked just before), which mypy cannot see
        samples.append(None if span is None or None in gs else cast("list[float]", gs))
    return {
        "samples": samples,
        "paired": paired,
        "eval_sets": sorted({m.eval_set or "unknown" for m in members}),
        "n_windows": sorted({m.n_windows for m in members}),
    }
