"""`gsae report`: collect finished evaluations into results.csv, Pareto plots and a markdown
table, and compute the paper's headline number (docs/method.md §4): the L0 ratio between architectures
at matched loss recovered, with a 95 % bootstrap interval over eval windows.

Rows are grouped into *series*: one per (model, hook, architecture) plus any other config value
that differs between the rows (train tokens, expansion factor, corpus, ...), so that a frontier
never mixes models, sites or training budgets. The sparsity coefficient is what varies along a
series.

The interval resamples eval windows: each SAE's per_window.safetensors holds per-window sums
from which any resample's L0 and loss recovered follow (metrics.metrics_from_window_sums). SAEs
evaluated on the same eval set get the same resamples (paired), so what is shared by every SAE,
such as how hard the drawn windows are, cancels out of the ratio.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

from gsae_cli import artifacts
from gsae_cli.config import GATED_ONLY_KEYS, NON_IDENTITY_KEYS
from gsae_cli.divergence import divergence_of_sae
from gsae_cli.errors import ArtifactError, ConfigError

ID_COLUMNS = ["model", "hook", "architecture", "l1_coefficient", "train_tokens"]
METRIC_KEYS = ["l0", "l0_gate", "loss_recovered", "delta_loss", "kl_div", "relative_reconstruction_bias",
               "relative_reconstruction_bias_centred", "nmse", "explained_variance", "frac_dead", "frac_dense",
               "frac_passthrough", "ce_clean", "ce_spliced", "ce_zero_ablation", "ce_mean_ablation",
               "loss_recovered_mean_ablation"]
# Each metric with its 95 % interval from metrics.json "ci" (blank where an eval recorded none).
# diverged_at_step: the training step at which the SAE's training diverged (gsae_cli/divergence.py), else empty
# d_sae and mean_density = l0 / d_sae: above DENSE_CODE a point is not a sparse code (below)
COLUMNS = (ID_COLUMNS + [c for k in METRIC_KEYS for c in (k, f"{k}_lo", f"{k}_hi")]
           + ["d_sae", "mean_density", "diverged_at_step", "eval_set", "eval_path"])
# An SAE whose features fire on more than this fraction of tokens on average is not a sparse
# code: marked ‡ in tables and plots, and left out of the "sparse part" ratios (docs/method.md §4).
DENSE_CODE = 0.10

WINDOW_FILE = "per_window.safetensors"

# Short names for --where, mapped to result columns.
ALIASES = {"model": "model", "model.name": "model", "sae": "architecture", "sae.name": "architecture",
           "arch": "architecture", "l1": "l1_coefficient", "sae.l1_coefficient": "l1_coefficient",
           "tokens": "train_tokens", "train.n_tokens": "train_tokens", "hook": "hook"}

WIDTH_KEY = "sae.expansion_factor"

# Config keys that change speed, logging, intervals or where files go, never what an SAE or a
# measurement is; the coefficient is what varies *along* a series. Differences elsewhere split series.
_NOT_SERIES_KEYS = {"sae.l1_coefficient", "sae.path", "sae.name", "model.name", "hook", "hooks", "out_dir",
                    "device", "train.checkpoint_every", "train.log_every", "train.wandb",
                    "train.wandb_project", "train.compile", "train.shuffle_buffer_chunks",
                    "harvest.batch_size", "harvest.chunk_rows", "harvest.shard_chunks",
                    "eval.batch_size", "eval.cache", "eval.bootstrap_samples", "eval.bootstrap_seed",
                    "eval.density_bins"} | NON_IDENTITY_KEYS  # speed, place, logging: never a series
_GATED_ONLY = {f"sae.{k}" for k in GATED_ONLY_KEYS}
# Each architecture has its own tuned learning rate (sae.lr, conf/sae/*.yaml), so the LR splits
# series *within* an architecture (an LR sweep) but never stops two architectures comparing.
# The eval set (the held-out windows: corpus and its version, split, site) also splits only where
# one architecture has several, so SAEs measured on other text never share a frontier; then only
# series on the same eval set compare. Architectures each on one, different eval set still
# compare, bootstrapped unpaired, and the report says so. The width splits series within an
# architecture too, and never stops a comparison: the paper's is at equal compute, its baselines
# 1.5x as wide as the Gated SAE (§4.1), beside which gsae also shows equal widths.
_ARCH_SCOPED = {"lr", "eval_set", WIDTH_KEY}

# Fixed colours so an architecture looks the same in every plot; the paper's comparison first.
ARCH_ORDER = ["gated", "rescale_shift", "relu"]
ARCH_COLOURS = {"gated": "tab:blue", "relu": "tab:orange", "rescale_shift": "tab:green"}
_EXTRA_COLOURS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]

Point = tuple[float, float]


def notice(text: str) -> None:
    """A line on stderr, printed verbatim: paths and overrides may hold [brackets] that rich
    would take for markup."""
    print(text, file=sys.stderr, flush=True)


# ---- pure functions: Pareto frontier and matched-L0 ratios -------------------------------------

def _finite(p: Point) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)


def pareto_frontier(points: Sequence[Point]) -> list[int]:
    """Indices of the points (l0, loss_recovered) on the Pareto frontier, by increasing L0.
    A point is on it unless another has L0 <= and loss recovered >=, one of them strictly
    (lower L0 is sparser, higher loss recovered more faithful). Non-finite points never are."""
    keep = []
    for i, (l0, lr) in enumerate(points):
        if not _finite((l0, lr)):
            continue
        dominated = any(_finite(q) and q[0] <= l0 and q[1] >= lr and (q[0] < l0 or q[1] > lr)
                        for j, q in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], points[i][1]))


def _frontier(points: Sequence[Point]) -> list[Point]:
    """Frontier points with L0 > 0 (log L0 is what we interpolate), by increasing L0, which on a
    frontier is also increasing loss recovered."""
    return [points[i] for i in pareto_frontier(points) if points[i][0] > 0]


def l0_at_loss_recovered(frontier_points: Sequence[Point], target: float) -> Optional[float]:
    """The L0 the frontier needs to reach `target` loss recovered: log(L0) interpolated linearly in
    loss recovered between the neighbouring frontier points. None outside the frontier's range
    (no extrapolation). Dominated points in the input are ignored."""
    front = _frontier(frontier_points)
    if not front or not math.isfinite(target):
        return None
    if target < front[0][1] or target > front[-1][1]:
        return None
    for (l0_a, lr_a), (l0_b, lr_b) in zip(front, front[1:]):
        if lr_a <= target <= lr_b:
            if lr_b == lr_a:
                return l0_a
            t = (target - lr_a) / (lr_b - lr_a)
            return math.exp((1 - t) * math.log(l0_a) + t * math.log(l0_b))
    return front[0][0]  # a single-point frontier whose loss recovered equals the target


def matched_l0_ratios(series_a: Sequence[Point], series_b: Sequence[Point], n_targets: int = 5,
                      span: Optional[tuple[float, float]] = None) -> dict:
    """L0(a) / L0(b) at matched loss recovered (the paper's headline: about 0.5 for gated vs
    relu). Evaluated at `n_targets` evenly spaced loss-recovered values across `span`, by default
    the overlap of the two frontiers' ranges (pass common_range(...) to compare several pairs at
    the same targets); `geomean` summarises them. When there is no overlap, `geomean` is None and
    `reason` says why."""
    fa, fb = _frontier(series_a), _frontier(series_b)
    out: dict[str, Any] = {"targets": [], "l0_a": [], "l0_b": [], "ratios": [], "geomean": None,
                           "overlap": None, "reason": None}
    if not fa or not fb:
        out["reason"] = f"no usable points in {'the first' if not fa else 'the second'} series"
        return out
    lo, hi = span if span is not None else (max(fa[0][1], fb[0][1]), min(fa[-1][1], fb[-1][1]))
    if lo > hi:
        out["reason"] = (f"the loss-recovered ranges do not overlap ({fa[0][1]:.3f}-{fa[-1][1]:.3f} vs "
                         f"{fb[0][1]:.3f}-{fb[-1][1]:.3f}); add coefficients that extend one towards the other")
        return out
    targets = [lo] if hi == lo or n_targets < 2 else [lo + (hi - lo) * k / (n_targets - 1) for k in range(n_targets - 1)] + [hi]
    for t in targets:
        a, b = l0_at_loss_recovered(fa, t), l0_at_loss_recovered(fb, t)
        if a is None or b is None:  # a span reaching outside one of the frontiers
            continue
        out["targets"].append(t)
        out["l0_a"].append(a)
        out["l0_b"].append(b)
        out["ratios"].append(a / b)
    out["overlap"] = (lo, hi)
    if len(out["ratios"]) == len(targets):
        out["geomean"] = math.exp(sum(math.log(r) for r in out["ratios"]) / len(out["ratios"]))
    else:
        out["reason"] = "no matched points" if span is None else "the span is not inside both frontiers"
    return out


def common_range(series: Sequence[Sequence[Point]]) -> Optional[tuple[float, float]]:
    """The loss-recovered range that every series' frontier covers (the intersection of their
    ranges), or None when they share none or a series has no usable point."""
    fronts = [_frontier(s) for s in series]
    if not fronts or not all(fronts):
        return None
    lo, hi = max(f[0][1] for f in fronts), min(f[-1][1] for f in fronts)
    return (lo, hi) if lo <= hi else None


def ratios_at_common_targets(pairs: Sequence[tuple[Sequence[Point], Sequence[Point]]],
                             n_targets: int = 5) -> tuple[Optional[tuple[float, float]], list[Optional[float]]]:
    """(span, geomeans): each pair's matched-L0 ratio at the same loss-recovered targets, spread
    over the range every frontier of every pair covers (docs/method.md §4.1). Ratios of lengths or
    seeds are only comparable this way: the ratio varies along the frontier. (None, [None, ...])
    when the frontiers share no range."""
    span = common_range([s for pair in pairs for s in pair])
    if span is None:
        return None, [None] * len(pairs)
    return span, [matched_l0_ratios(a, b, n_targets, span)["geomean"] for a, b in pairs]


def equivalence_verdict(interval: Optional[Sequence[float]], margin: float) -> str:
    """The convergence criterion fixed before the data (docs/method.md §4.2): "converged" when the
    interval of ratio(2T) / ratio(T) lies inside [1 - margin, 1 + margin]; "not converged" when it
    lies wholly outside; "undetermined" when it straddles a bound or there is no interval."""
    if interval is None:
        return "undetermined"
    lo, hi = interval
    if 1 - margin <= lo and hi <= 1 + margin:
        return "converged"
    if hi < 1 - margin or lo > 1 + margin:
        return "not converged"
    return "undetermined"


# ---- bootstrap interval of the matched-L0 ratio ------------------------------------------------

@dataclass
class WindowData:
    """One evaluation's per-window scalar sums (metrics.WINDOW_SCALARS, each [n_windows])."""

    label: str                 # for messages: the eval folder
    eval_set: Optional[str]    # hash of the eval windows; equal hashes mean the same windows
    sums: dict                 # name -> float64 tensor [n_windows]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_windows(self) -> int:
        return int(next(iter(self.sums.values())).shape[0])

    def metrics(self, index=None) -> dict:
        """metrics_from_window_sums on the scalar sums only: L0 and loss recovered need no
        per-dimension sums, and leaving them out skips [B, k, d_model] gathers (~0.5 GB for
        1,000 resamples of 128 windows at d_model 576)."""
        from gsae_cli import metrics

        return metrics.metrics_from_window_sums(self.sums, index)

    def resampled(self, n_samples: int, seed: int) -> tuple[list[float], list[float]]:
        """(L0, loss recovered) of each of the `n_samples` resamples drawn with `seed`."""
        key = (n_samples, seed)
        if key not in self._cache:
            from gsae_cli import metrics

            m = self.metrics(metrics.bootstrap_indices(self.n_windows, n_samples, seed))
            self._cache[key] = (m["l0"].tolist(), m["loss_recovered"].tolist())
        return self._cache[key]


def load_window_data(directory: Path) -> WindowData:
    """An eval folder's per_window.safetensors; ArtifactError naming what is wrong."""
    import torch
    from safetensors import safe_open

    from gsae_cli import metrics

    path = Path(directory) / WINDOW_FILE
    if not path.exists():
        raise ArtifactError(f"{path} is missing (evaluations made before gsae recorded per-window sums)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            names = set(fh.keys())
            missing = [n for n in metrics.WINDOW_SCALARS if n not in names]
            if missing:
                raise ArtifactError(f"{path} lacks the per-window sums {', '.join(missing)}")
            sums = {n: fh.get_tensor(n).to(torch.float64) for n in metrics.WINDOW_SCALARS}
    except ArtifactError:
        raise
    except Exception as e:  # noqa: BLE001 — safetensors raises its own types for a damaged header
        raise ArtifactError(f"{path} cannot be read ({e})") from None
    if meta.get("format") != metrics.WINDOW_FORMAT:
        raise ArtifactError(f"{path} has format {meta.get('format')!r}, not {metrics.WINDOW_FORMAT!r}")
    shapes = {tuple(t.shape) for t in sums.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] == 0:
        raise ArtifactError(f"{path}: the per-window sums are not all [n_windows] with n_windows > 0 "
                            f"(shapes {sorted(shapes)})")
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


def bootstrap_ratio(a: Sequence[WindowData], b: Sequence[WindowData], n_samples: int, seed: int,
                    n_targets: int = 5, level: float = 0.95) -> dict:
    """The percentile interval of matched_l0_ratios(...)["geomean"] over `n_samples` resamples of
    eval windows. Every resample recomputes every SAE's (L0, loss recovered) from its window
    sums, rebuilds both Pareto frontiers and the ratio. A resample whose frontiers do not overlap
    has no ratio; the interval is over those that do (`n_valid` of `n_resamples`)."""
    import torch

    from gsae_cli import metrics

    members = list(a) + list(b)
    paired, seeds = resample_seeds(members, seed)
    draws = [m.resampled(n_samples, s) for m, s in zip(members, seeds)]
    da, db = draws[:len(a)], draws[len(a):]
    aligned = [matched_l0_ratios([(l0[k], lr[k]) for l0, lr in da], [(l0[k], lr[k]) for l0, lr in db],
                                 n_targets)["geomean"] for k in range(n_samples)]
    ratios = [r for r in aligned if r is not None]
    interval = (metrics.percentile_interval(torch.tensor(ratios, dtype=torch.float64), level)
                if ratios else None)
    eval_sets = sorted({m.eval_set or "unknown" for m in members})
    return {"interval": interval, "samples": ratios, "aligned": aligned, "n_resamples": n_samples,
            "n_valid": len(ratios), "paired": paired,
            "eval_sets": eval_sets, "n_windows": sorted({m.n_windows for m in members}), "level": level}


def bootstrap_common_targets(pairs: Sequence[tuple[Sequence[WindowData], Sequence[WindowData]]], n_samples: int,
                             seed: int, n_targets: int = 5) -> dict:
    """ratios_at_common_targets on each of `n_samples` resamples of eval windows: every SAE of
    every pair is resampled with the same draws (paired when all share one eval set), the common
    range is rebuilt from the resampled frontiers, and `samples[k]` is the list of the pairs'
    ratios in resample k, or None when the frontiers share no range there."""
    members = [m for a, b in pairs for m in (*a, *b)]
    paired, seeds = resample_seeds(members, seed)
    draws = iter([m.resampled(n_samples, s) for m, s in zip(members, seeds)])
    grouped = [([next(draws) for _ in a], [next(draws) for _ in b]) for a, b in pairs]
    samples: list[Optional[list[float]]] = []
    for k in range(n_samples):
        pts = [([(l0[k], lr[k]) for l0, lr in da], [(l0[k], lr[k]) for l0, lr in db]) for da, db in grouped]
        span, gs = ratios_at_common_targets(pts, n_targets)
        samples.append(None if span is None or None in gs else gs)
    return {"samples": samples, "paired": paired, "eval_sets": sorted({m.eval_set or "unknown" for m in members}),
            "n_windows": sorted({m.n_windows for m in members})}


# ---- collecting eval artifacts ---------------------------------------------------------------

@dataclass
class Result:
    row: dict                      # the results.csv columns
    config: dict                   # the full resolved config of the evaluation
    flat: dict = field(default_factory=dict)         # config flattened to dotted keys (--where)
    series_keys: dict = field(default_factory=dict)  # what may split series (see group_series)
    ci: dict = field(default_factory=dict)           # metric -> (lo, hi), from metrics.json "ci"

    @property
    def directory(self) -> Path:
        return Path(self.row["eval_path"])


def _flatten(node: Any, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out: dict = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _eval_dirs(paths: Sequence[str | Path], out_dir: Path) -> tuple[list[Path], str]:
    """Complete eval artifact folders under the given paths (or OUT_DIR/eval), and a description
    of where we looked, for messages."""
    roots = [Path(p).expanduser() for p in paths] or [Path(out_dir).expanduser() / "eval"]
    where = ", ".join(str(r) for r in roots)
    found: dict[Path, None] = {}
    for root in roots:
        if not root.exists():
            if paths:  # an explicit path that is not there is a typo worth stopping for
                raise ConfigError(
                    f"{root} does not exist. Arguments without `=` are eval artifacts (outputs/eval/...) or "
                    f"folders holding them; to read the evaluations of another outputs folder write "
                    f"`gsae report out_dir=DIR`.")
            continue
        if root.is_file():
            root = root.parent
        if not (root / "metrics.json").exists() and (root / "eval").is_dir():
            root = root / "eval"  # an outputs folder: its other stages hold no evaluations
        candidates = [root / "metrics.json"] if (root / "metrics.json").exists() else sorted(root.rglob("metrics.json"))
        for m in candidates:
            d = m.parent
            if any(part.startswith(".") for part in d.relative_to(root).parts):
                continue  # .trash-* folders of a --force rebuild
            if not artifacts.is_complete(d):
                notice(f"skipping unfinished evaluation {d} (no {artifacts.COMPLETE} marker)")
                continue
            found[d.resolve()] = None
    return list(found), where


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _interval(value: Any) -> Optional[tuple[float, float]]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = _num(value[0]), _num(value[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


def _eval_set(directory: Path) -> Optional[str]:
    """The eval-set hash in per_window.safetensors' header (reads the header only), else the one
    summary.json records (a missing or damaged per-window file is reported where the sums are
    needed; the SAE still belongs to its eval set's frontier)."""
    path = directory / WINDOW_FILE
    if path.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                found = (fh.metadata() or {}).get("eval_set")
            if found:
                return found
        except Exception:  # noqa: BLE001
            pass
    try:
        summary = artifacts.read_json(directory / "summary.json")
        return (summary.get("eval_set") or {}).get("hash") or None
    except Exception:  # noqa: BLE001 — older artifacts have no summary.json
        return None


def _load(directory: Path) -> Result:
    metrics = artifacts.read_json(directory / "metrics.json")
    if not isinstance(metrics, dict):
        raise ArtifactError(f"{directory / 'metrics.json'} is not a JSON object.")
    config = metrics.get("config") or {}
    sae = metrics.get("sae") or {}
    # An SAE given by sae.path may differ from config.sae.name: trust what the eval recorded.
    arch = sae.get("architecture") or config.get("sae", {}).get("name")
    flat = _flatten(config)
    if arch != "gated":
        flat = {k: v for k, v in flat.items() if k not in _GATED_ONLY}
    from gsae_cli.metrics import NO_BOOTSTRAP  # (evaluations made before it recorded one for frac_dead: not shown)

    ci = {k: iv for k, v in (metrics.get("ci") or {}).items()
          if k not in NO_BOOTSTRAP and (iv := _interval(v)) is not None}
    row = {
        "model": config.get("model", {}).get("name") or sae.get("model"),
        "hook": config.get("hook") or sae.get("hook"),
        "architecture": arch,
        "l1_coefficient": _num(sae.get("l1_coefficient", config.get("sae", {}).get("l1_coefficient"))),
        "train_tokens": config.get("train", {}).get("n_tokens"),
        **{k: _num(metrics.get(k)) for k in METRIC_KEYS},
        **{f"{k}_{end}": (ci[k][i] if k in ci else None) for k in METRIC_KEYS for i, end in enumerate(("lo", "hi"))},
        "d_sae": (d_sae := _num(sae.get("d_sae"))),
        # (evaluations made before the eval recorded it: judged from the training log, if still there)
        "diverged_at_step": (div := divergence_of_sae(sae.get("path"), sae)) and div["step"],
        "eval_set": _eval_set(directory),
        "eval_path": str(directory),
    }
    # The learning rate that trained the SAE: train.lr when set, else the architecture's sae.lr.
    keys = {k: v for k, v in flat.items() if k not in ("train.lr", "sae.lr")}
    if keys.get("train.data_streams") == 1:  # one stream is the order of SAEs from before the key existed
        del keys["train.data_streams"]
    if "train.lr" in flat or "sae.lr" in flat:
        keys["lr"] = flat["train.lr"] if flat.get("train.lr") is not None else flat.get("sae.lr")
    if row["eval_set"] is not None:  # the config alone does not show the default corpus's version
        keys["eval_set"] = row["eval_set"]
    row["mean_density"] = row["l0"] / d_sae if d_sae and row["l0"] is not None else None
    return Result(row, config, flat, keys, ci)


def is_dense(r: Result) -> bool:
    """Not a sparse code: its features fire on more than DENSE_CODE of the tokens on average."""
    return r.row.get("mean_density") is not None and r.row["mean_density"] > DENSE_CODE


def collect(paths: Sequence[str | Path], out_dir: Path) -> tuple[list[Result], str]:
    dirs, where = _eval_dirs(paths, out_dir)
    results = []
    for d in dirs:
        try:
            results.append(_load(d))
        except (ArtifactError, AttributeError, TypeError) as e:
            notice(f"skipping damaged evaluation {d}: {e}")
    return results, where


# ---- --where filtering -----------------------------------------------------------------------

_SUFFIX = {"k": 1e3, "M": 1e6, "B": 1e9}


def _wanted_num(text: str) -> Optional[float]:
    """A number as a user types it: 0.1, 2_000_000, 2e6, or 2M / 500k."""
    text = text.strip()
    if text[-1:] in _SUFFIX and _num(text[:-1]) is not None:
        return _num(text[:-1]) * _SUFFIX[text[-1]]  # type: ignore[operator]
    return _num(text)


def _matches(actual: Any, wanted: str) -> bool:
    """Numbers compare as numbers (l1=0.1 matches 0.10, tokens=2M matches 2000000),
    everything else as text; true/false match booleans."""
    if actual is None:
        return wanted.lower() in ("none", "null", "")
    if isinstance(actual, bool):
        return str(actual).lower() == wanted.lower()
    a, w = _num(actual), _wanted_num(wanted)
    if a is not None and w is not None:
        return math.isclose(a, w, rel_tol=1e-9, abs_tol=0.0)
    return str(actual) == wanted


def _lookup(result: Result, key: str) -> tuple[bool, Any]:
    if key in ALIASES:
        return True, result.row[ALIASES[key]]
    if key in result.row:
        return True, result.row[key]
    if key in result.flat:
        return True, result.flat[key]
    return False, None


def filter_results(results: list[Result], where: Sequence[str]) -> list[Result]:
    """Keep rows matching every `key=value` item; `value` may list alternatives: sae=relu,gated."""
    for item in where:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--where {item!r}: expected key=value, e.g. --where model=smollm2-135m "
                              "or --where train.n_tokens=2000000.")
        if results and not any(_lookup(r, key)[0] for r in results):
            raise ConfigError(f"--where {item!r}: no evaluation has a config key {key!r}. Use a dotted config "
                              f"key (model.name, sae.name, train.n_tokens, ...), a results.csv column, or one "
                              f"of {', '.join(sorted(ALIASES))}.")
        options = [v.strip() for v in value.split(",")]
        results = [r for r in results if _lookup(r, key)[0] and any(_matches(_lookup(r, key)[1], v) for v in options)]
    return results


# ---- series ----------------------------------------------------------------------------------

@dataclass
class Series:
    model: str
    hook: str
    architecture: str
    extras: tuple[tuple[str, Any], ...]   # distinguishing config values beyond model/hook/arch
    results: list[Result]

    @property
    def label(self) -> str:
        return ", ".join([self.architecture] + [f"{k}={_fmt_value(v)}" for k, v in self.extras])

    @property
    def points(self) -> list[Point]:
        return [(r.row["l0"], r.row["loss_recovered"]) for r in self.results]


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) and abs(v) >= 1000:
        for div, unit in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
            if abs(v) >= div:
                return f"{v / div:g}{unit}"
    return f"{v:g}"


def _natural(text: str) -> tuple:
    """Sort key reading digit runs as numbers: blocks.6 before blocks.12."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def _arch_rank(arch: str) -> tuple[int, str]:
    return (ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER), str(arch))


def group_series(results: list[Result]) -> dict[tuple[str, str], list[Series]]:
    """(model, hook) -> its series, each sorted by L0."""
    by_site: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        by_site.setdefault((str(r.row["model"]), str(r.row["hook"])), []).append(r)
    out: dict[tuple[str, str], list[Series]] = {}
    for site, rows in sorted(by_site.items(), key=lambda kv: tuple(_natural(t) for t in kv[0])):
        keys = sorted(set().union(*(r.series_keys.keys() for r in rows)) - _NOT_SERIES_KEYS)

        def disagree(k: str, rs: list[Result]) -> bool:
            # A gated-only switch varies only if the rows that have it disagree. Any other key a
            # row lacks (an evaluation from an older gsae) counts as a value of its own, so old
            # and new results never merge into one frontier.
            if k in _GATED_ONLY:
                return len({repr(r.series_keys[k]) for r in rs if k in r.series_keys}) > 1
            return len({repr(r.series_keys.get(k, "<absent>")) for r in rs}) > 1

        archs: dict[str, list[Result]] = {}
        for r in rows:
            archs.setdefault(str(r.row["architecture"]), []).append(r)
        varying = [k for k in keys if (any(disagree(k, rs) for rs in archs.values()) if k in _ARCH_SCOPED
                                       else disagree(k, rows))]
        groups: dict[tuple, list[Result]] = {}
        for r in rows:
            extras = tuple((k, r.series_keys[k]) for k in varying if k in r.series_keys)
            groups.setdefault((str(r.row["architecture"]), extras), []).append(r)
        series = [Series(site[0], site[1], arch, extras,
                         sorted(rs, key=lambda r: (r.row["l0"] is None, r.row["l0"] or 0.0)))
                  for (arch, extras), rs in groups.items()]
        out[site] = sorted(series, key=lambda s: (_arch_rank(s.architecture), repr(s.extras)))
    return out


def _comparable(a: Series, b: Series) -> bool:
    """Same value for every distinguishing key both have: gated(tie_weights=false) still
    compares with relu, which has no such switch; a 4M-token series does not with a 2M one.
    The learning rate and the width never block a comparison; the eval set blocks one only where
    it splits series."""
    ea, eb = dict(a.extras), dict(b.extras)
    return all(repr(ea[k]) == repr(eb[k]) for k in (ea.keys() & eb.keys()) - {"lr", WIDTH_KEY})


def _width(s: Series) -> Optional[float]:
    return next((_num(r.series_keys.get(WIDTH_KEY)) for r in s.results if WIDTH_KEY in r.series_keys), None)


def compute_footing(a: Series, b: Series) -> str:
    """How the pair's widths compare: "equal width", "equal compute" (the paper's §4.1: a gated
    `a` against a baseline `b` with 1.5x its features, which costs about the same to train), or
    "other widths"."""
    wa, wb = _width(a), _width(b)
    if wa is None or wb is None or wa == wb:
        return "equal width"
    if a.architecture == "gated" and b.architecture != "gated" and math.isclose(wb, 1.5 * wa):
        return "equal compute"
    return "other widths"


def _window_data(result: Result, cache: dict) -> WindowData:
    """The result's per-window sums, checked against its metrics.json: sums that do not give the
    reported L0 and loss recovered belong to some other run and must not make its interval."""
    d = result.directory
    if d not in cache:
        try:
            data = load_window_data(d)
            full = data.metrics()
            for key in ("l0", "loss_recovered"):
                want, got = result.row[key], float(full[key])
                same = want is not None and (math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
                                             or (math.isnan(got) and math.isnan(want)))
                if not same:
                    raise ArtifactError(f"{d / WINDOW_FILE} gives {key} {got:.6g} but metrics.json says "
                                        f"{want}; the two files are from different runs")
            cache[d] = data
        except ArtifactError as e:
            cache[d] = e
    return cache[d]


def ratio_with_interval(a: Series, b: Series, n_samples: int, seed: int, cache: Optional[dict] = None) -> dict:
    """matched_l0_ratios of two series' (metrics.json) points, plus bootstrap_ratio's interval
    when every SAE of both has usable per-window sums; `interval_reason` says why not otherwise."""
    out = matched_l0_ratios(a.points, b.points)
    out.update({"interval": None, "n_resamples": 0, "n_valid": 0, "paired": None, "eval_sets": [],
                "n_windows": [], "level": 0.95, "interval_reason": None})
    if out["geomean"] is None:
        out["interval_reason"] = "no point estimate"
        return out
    if n_samples <= 0:
        out["interval_reason"] = "eval.bootstrap_samples=0"
        return out
    cache = {} if cache is None else cache
    data = [_window_data(r, cache) for r in a.results + b.results]
    bad = [d for d in data if isinstance(d, ArtifactError)]
    if bad:
        out["interval_reason"] = (f"{len(bad)} of {len(data)} evaluations have no usable per-window sums "
                                  f"({bad[0]}); re-evaluate them with `gsae eval --force` and their overrides")
        return out
    boot = bootstrap_ratio(data[:len(a.results)], data[len(a.results):], n_samples, seed)
    boot.pop("samples")  # thousands of numbers: the interval is what the report shows
    boot.pop("aligned")
    out.update(boot)
    if out["interval"] is None:
        out["interval_reason"] = f"no resample out of {n_samples} left the two frontiers overlapping"
    return out


def _sparse_part(s: Series) -> Series:
    return Series(s.model, s.hook, s.architecture, s.extras, [r for r in s.results if not is_dense(r)])


def pairwise_ratios(sites: dict[tuple[str, str], list[Series]], n_samples: int = 0, seed: int = 0) -> list[dict]:
    """Matched-L0 ratios (with bootstrap intervals when n_samples > 0) for every pair of series at
    one site that differ only in architecture, ordered so the paper's comparison reads gated / relu."""
    out = []
    cache: dict = {}
    for (model, hook), series in sites.items():
        for a, b in combinations(series, 2):
            if not _comparable(a, b) or a.architecture == b.architecture:
                continue
            if _arch_rank(b.architecture) < _arch_rank(a.architecture):
                a, b = b, a
            entry = {"model": model, "hook": hook, "a": a.label, "b": b.label, "footing": compute_footing(a, b),
                     "widths": [_width(a), _width(b)], "_series": (a, b),
                     **ratio_with_interval(a, b, n_samples, seed, cache), "sparse": None}
            dense = sum(is_dense(r) for r in a.results + b.results)
            if dense:  # the same ratio over the sparse codes alone
                part = ratio_with_interval(_sparse_part(a), _sparse_part(b), n_samples, seed, cache)
                entry["sparse"] = {k: part[k] for k in ("geomean", "interval", "overlap", "reason", "interval_reason")}
                entry["sparse"]["n_dense_left_out"] = dense
            out.append(entry)
    return out


TOKENS_KEY = "train.n_tokens"
HARVEST_KEY = "harvest.n_tokens"
LENGTH_KEYS = (TOKENS_KEY, HARVEST_KEY)  # what a longer run changes: its tokens, and the store it may need


def _at_common_targets(pairs: Sequence[tuple[Series, Series]], n_samples: int, seed: int, cache: dict,
                       level: float) -> dict:
    """ratios_at_common_targets of the pairs' (metrics.json) points, with each ratio's interval and
    the per-resample ratios (`samples`) of bootstrap_common_targets when every SAE has usable
    per-window sums; `interval_reason` says why there is no interval otherwise."""
    import torch

    from gsae_cli import metrics

    span, point = ratios_at_common_targets([(a.points, b.points) for a, b in pairs])
    out: dict[str, Any] = {"span": span, "ratios": point, "intervals": [None] * len(pairs), "samples": None,
                           "n_resamples": 0, "n_valid": 0, "paired": None, "eval_sets": [], "n_windows": [],
                           "interval_reason": None}
    if span is None or None in point:
        out["interval_reason"] = "the frontiers share no loss-recovered range"
        return out
    if n_samples <= 0:
        out["interval_reason"] = "eval.bootstrap_samples=0"
        return out
    data = [[_window_data(r, cache) for r in s.results] for pair in pairs for s in pair]
    bad = [d for ds in data for d in ds if isinstance(d, ArtifactError)]
    if bad:
        out["interval_reason"] = (f"{len(bad)} evaluations have no usable per-window sums ({bad[0]}); re-evaluate "
                                  "them with `gsae eval --force` and their overrides")
        return out
    boot = bootstrap_common_targets(list(zip(data[::2], data[1::2])), n_samples, seed)
    valid = [x for x in boot["samples"] if x is not None]
    out.update(samples=boot["samples"], n_resamples=n_samples, n_valid=len(valid), paired=boot["paired"],
               eval_sets=boot["eval_sets"], n_windows=boot["n_windows"])
    if valid:
        out["intervals"] = [metrics.percentile_interval(torch.tensor([v[i] for v in valid], dtype=torch.float64), level)
                            for i in range(len(pairs))]
    else:
        out["interval_reason"] = f"no resample out of {n_samples} left the frontiers a common range"
    return out


def length_checks(ratios: list[dict], margin: float = 0.05, level: float = 0.95, n_samples: int = 0,
                  seed: int = 0) -> list[dict]:
    """The convergence check (docs/method.md §4.2): for every ratio at T training tokens whose two
    series also exist at a longer T' (all else equal but the store's size, which a longer run may
    need), ratio(T') against ratio(T), both at the same loss-recovered targets: the range all four
    frontiers cover ("not comparable" when they share none). `change` = ratio(T') / ratio(T), with
    a paired bootstrap interval (the same window resamples give both ratios), and `verdict` from
    equivalence_verdict with `margin`. The criterion is a doubling (`factor` 2); other lengths are
    compared too, since the data may not allow a doubling of the longest runs. When more than
    1 - `level` of the resamples lose the common range, the interval is conditional on it holding,
    and the verdict is "undetermined"."""
    import torch

    from gsae_cli import metrics

    def key(r: dict) -> tuple:
        a, b = r["_series"]
        strip = lambda s: tuple((k, repr(v)) for k, v in s.extras if k not in LENGTH_KEYS)  # noqa: E731
        return (r["model"], r["hook"], a.architecture, b.architecture, strip(a), strip(b))

    def shared(r: dict, k: str) -> Optional[int]:
        """The value of `k` (train tokens, store size) both series have, where it distinguishes series."""
        a, b = r["_series"]
        va, vb = dict(a.extras).get(k), dict(b.extras).get(k)
        return int(va) if va is not None and va == vb else None

    out = []
    cache: dict = {}
    for r1 in ratios:
        t = shared(r1, TOKENS_KEY)
        if t is None:
            continue
        for r2 in ratios:
            t2 = shared(r2, TOKENS_KEY)
            if key(r2) != key(r1) or t2 is None or t2 <= t:
                continue
            res = _at_common_targets([r1["_series"], r2["_series"]], n_samples, seed, cache, level)
            (g1, g2), valid = res["ratios"], [x for x in res["samples"] or [] if x is not None]
            change = g2 / g1 if g1 and g2 else None
            interval = (metrics.percentile_interval(torch.tensor([y / x for x, y in valid], dtype=torch.float64), level)
                        if valid else None)
            if res["span"] is None:
                verdict, why = "not comparable", "the four frontiers share no loss-recovered range"
            elif interval is None:
                verdict, why = "undetermined", f"no interval: {res['interval_reason']}"
            elif res["n_valid"] < level * res["n_resamples"]:
                verdict, why = "undetermined", (f"the common range vanished in {res['n_resamples'] - res['n_valid']:,} "
                                                f"of {res['n_resamples']:,} resamples")
            else:
                verdict, why = equivalence_verdict(interval, margin), None
            out.append({"model": r1["model"], "hook": r1["hook"], "a": r1["a"], "b": r1["b"], "tokens": [t, t2],
                        "factor": t2 / t, "stores": [shared(r1, HARVEST_KEY), shared(r2, HARVEST_KEY)],
                        "span": res["span"], "ratio": [g1, g2], "interval": res["intervals"], "change": change,
                        "change_interval": interval, "margin": margin, "verdict": verdict, "verdict_reason": why,
                        "level": level, "n_resamples": res["n_resamples"], "n_valid": res["n_valid"],
                        "paired": res["paired"]})
    return sorted(out, key=lambda c: (c["model"], c["hook"], _strip_lengths(c["a"]), _strip_lengths(c["b"]),
                                      c["tokens"]))


SEED_KEY = "train.seed"
GAMMA_CENTRED = "relative_reconstruction_bias_centred"  # the shrinkage plot's y


def _but_seed(s: Series) -> tuple:
    """A series' distinguishing values other than its training seed."""
    return tuple((k, repr(v)) for k, v in s.extras if k != SEED_KEY)


def seed_summary(ratios: Sequence[float], level: float = 0.95) -> dict:
    """Run-to-run spread of a ratio measured once per training seed (n >= 2), on the log scale
    where ratios are symmetric: the geometric mean, a Student-t `level` interval for it
    (exp(m ± t·s/√n)), and the prediction interval for one more run (exp(m ± t·s·√(1 + 1/n))).
    s is the sample standard deviation of log ratio; t the t quantile with n - 1 degrees of freedom."""
    from scipy.stats import t as student_t

    logs = [math.log(r) for r in ratios]
    n = len(logs)
    if n < 2:
        raise ValueError("a spread over seeds needs at least two runs")
    m = sum(logs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / (n - 1))
    q = float(student_t.ppf(0.5 + level / 2, n - 1))
    band = lambda w: [math.exp(m - q * sd * w), math.exp(m + q * sd * w)]  # noqa: E731
    return {"geomean": math.exp(m), "sd_log": sd, "n": n, "t": q, "interval": band(1 / math.sqrt(n)),
            "prediction": band(math.sqrt(1 + 1 / n)), "level": level}


def seed_spreads(ratios: list[dict], level: float = 0.95, n_samples: int = 0, seed: int = 0) -> list[dict]:
    """For every pair of series compared at several training seeds (train.seed; all else equal,
    so once per training length): each seed's ratio at the same loss-recovered targets, the range
    every seed's two frontiers cover (the ratio varies along the frontier), and seed_summary of
    them. This is the run-to-run variation (initialisation, which rows of the store a run reads,
    their order) that the window bootstrap of a single run does not see. A seed whose own pair has
    no overlap is named in `dropped`; when the rest share no range, `span` is None and `reason`
    says so."""
    groups: dict[tuple, list[dict]] = {}
    for r in ratios:
        a, b = r["_series"]
        sa, sb = dict(a.extras).get(SEED_KEY), dict(b.extras).get(SEED_KEY)
        if sa is None or sa != sb:
            continue
        groups.setdefault((r["model"], r["hook"], a.architecture, b.architecture, _but_seed(a), _but_seed(b)), []).append(r)
    out = []
    cache: dict = {}
    for rs in groups.values():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: dict(r["_series"][0].extras)[SEED_KEY])
        seed_of = [dict(r["_series"][0].extras)[SEED_KEY] for r in rs]
        # A seed without a ratio is named, not silently left out: it may be the informative extreme.
        dropped = [{"seed": s, "reason": r.get("reason") or "no ratio"} for s, r in zip(seed_of, rs) if r["geomean"] is None]
        usable = [(s, r) for s, r in zip(seed_of, rs) if r["geomean"] is not None]
        if len(usable) < 2:
            continue
        res = _at_common_targets([r["_series"] for _, r in usable], n_samples, seed, cache, level)
        first = rs[0]
        entry = {"model": first["model"], "hook": first["hook"],
                 "a": _strip_key(first["a"], SEED_KEY), "b": _strip_key(first["b"], SEED_KEY),
                 "tokens": dict(first["_series"][0].extras).get(TOKENS_KEY), "span": res["span"],
                 "seeds": [s for s, _ in usable], "dropped": dropped, "reason": None}
        if res["span"] is None:
            out.append(entry | {"reason": "the seeds' frontiers share no loss-recovered range"})
            continue
        out.append(entry | {"ratios": res["ratios"], "windows_interval": res["intervals"],
                            **seed_summary(res["ratios"], level)})
    return out


# ---- outputs ---------------------------------------------------------------------------------

def _sort_key(r: Result) -> tuple:
    return (_natural(str(r.row["model"])), _natural(str(r.row["hook"])), _arch_rank(str(r.row["architecture"])),
            r.row["l0"] or 0.0)


def _csv_text(results: list[Result], report_dir: Path) -> str:
    """results.csv; eval_path relative to the report folder, so that no machine's layout is in it."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(results, key=_sort_key):
        row = r.row | {"eval_path": os.path.relpath(Path(r.row["eval_path"]).resolve(), Path(report_dir).resolve())}
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})
    return buf.getvalue()


def _style(series: list[Series]) -> dict[int, tuple[str, str, str]]:
    """(colour, line style, marker) per series: colour by architecture, style by extras."""
    extra_colours = iter(_EXTRA_COLOURS * 10)
    colours: dict[str, str] = {}
    extras_order: dict[tuple, int] = {}
    out = {}
    for i, s in enumerate(series):
        if s.architecture not in colours:
            colours[s.architecture] = ARCH_COLOURS.get(s.architecture) or next(extra_colours)
        k = extras_order.setdefault(s.extras, len(extras_order))
        out[i] = (colours[s.architecture], _STYLES[k % len(_STYLES)], _MARKERS[k % len(_MARKERS)])
    return out


@dataclass
class _Plotted:
    x: float
    y: float
    x_ci: Optional[tuple[float, float]]
    y_ci: Optional[tuple[float, float]]
    diverged: bool = False  # its training diverged (divergence.py): crossed out in the plots
    dense: bool = False     # not a sparse code (is_dense): ringed in the plots


def _plottable(s: Series, y_key: str) -> list[_Plotted]:
    pts = [_Plotted(r.row["l0"], r.row[y_key], r.ci.get("l0"), r.ci.get(y_key), bool(r.row.get("diverged_at_step")),
                    is_dense(r))
           for r in s.results]
    pts = [p for p in pts if _finite((p.x, p.y)) and p.x > 0]  # log x: L0 must be positive
    return sorted(pts, key=lambda p: (p.x, p.y))


def _error_bars(ax, pts: list[_Plotted], colour: str, x: bool, alpha: float = 1.0) -> None:
    """95 % interval whiskers: vertical always, horizontal when `x`; only points with an interval
    (artifacts made before eval recorded "ci" have none)."""
    def err(p: _Plotted, ci, value):
        return (max(value - ci[0], 0.0), max(ci[1] - value, 0.0)) if ci and _finite(ci) else None

    for axis in ("y", "x") if x else ("y",):
        with_ci = [(p, e) for p in pts if (e := err(p, p.x_ci if axis == "x" else p.y_ci, p.x if axis == "x" else p.y))]
        if not with_ci:
            continue
        xs, ys = [p.x for p, _ in with_ci], [p.y for p, _ in with_ci]
        bars = [[e[0] for _, e in with_ci], [e[1] for _, e in with_ci]]
        ax.errorbar(xs, ys, **{f"{axis}err": bars}, fmt="none", ecolor=colour, elinewidth=1.1, capsize=2.5,
                    alpha=alpha)


def _mark_diverged(ax, pts: Sequence[_Plotted]) -> None:
    """Cross out the points of SAEs whose training diverged, as † does in the table."""
    if pts:
        ax.plot([p.x for p in pts], [p.y for p in pts], linestyle="none", marker="x", color="red",
                markersize=12, markeredgewidth=2, zorder=5, label="† training diverged")


def _mark_dense(ax, pts: Sequence[_Plotted]) -> None:
    """Ring the points that are not a sparse code, as ‡ marks them in the table."""
    if pts:
        ax.plot([p.x for p in pts], [p.y for p in pts], linestyle="none", marker="o", markersize=15,
                markerfacecolor="none", markeredgecolor="0.4", markeredgewidth=1.2, zorder=4,
                label=f"‡ mean feature density > {DENSE_CODE:.0%}: not a sparse code")


def _figure(n_panels: int):
    # A Figure on the Agg canvas directly: no pyplot global state, no display needed, and it
    # works whatever backend the caller's process has selected.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # One panel per row, its legend and ratios to its right: below or between panels they would
    # run into the next panel, and inside they cover the frontier's ends.
    fig = Figure(figsize=(7.5, 5.5 * n_panels))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, squeeze=False)
    fig.subplots_adjust(hspace=0.3, top=1 - 0.9 / (5.5 * n_panels))  # the suptitle ~0.9 in above the first panel
    return fig, list(axes.flat)


def _log_x(ax) -> None:
    """Log x with plain numbers at 1-2-5 steps: '20', not '2×10¹'."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L0 (mean active features per token, log scale)")


def _legend(ax, title: str | None = None) -> None:
    ax.legend(title=title, fontsize=9, title_fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False, alignment="left")


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    artifacts.atomic_write_bytes(path, buf.getvalue())


def _ratio_short(r: dict) -> str:
    if r["geomean"] is None:
        return f"{r['a']} / {r['b']}: no overlap"
    ci = f" [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]" if r["interval"] else ""
    unpaired = " (unpaired)" if r["interval"] and not r["paired"] else ""
    footing = "" if r.get("footing", "equal width") == "equal width" else f" ({r['footing']})"
    return f"{r['a']} / {r['b']}{footing}: {r['geomean']:.2f}{ci}{unpaired}"


def plot_frontier(sites: dict[tuple[str, str], list[Series]], path: Path, ratios: Sequence[dict] = ()) -> None:
    """L0 vs loss recovered, one panel per (model, hook): each series' Pareto frontier drawn bold
    and connected, dominated points faded, 95 % intervals as whiskers in both directions, and the
    site's matched-L0 ratios to the right, below the legend."""
    fig, axes = _figure(len(sites))
    for ax, ((model, hook), series) in zip(axes, sites.items()):
        replicas = _seed_replicas(series)
        styles = _styles_but_replicas(series, replicas)
        legended: set = set()
        diverged: list[_Plotted] = []
        dense: list[_Plotted] = []
        for i, s in enumerate(series):
            pts = _plottable(s, "loss_recovered")
            if not pts:
                continue
            diverged += [p for p in pts if p.diverged]
            dense += [p for p in pts if p.dense]
            if id(s) in replicas:
                _plot_replica(ax, s, pts, styles[replicas[id(s)]], legended)
                continue
            colour, ls, marker = styles[i]
            front = set(pareto_frontier([(p.x, p.y) for p in pts]))
            on = [p for j, p in enumerate(pts) if j in front]
            off = [p for j, p in enumerate(pts) if j not in front]
            ax.plot([p.x for p in on], [p.y for p in on], color=colour, linestyle=ls, marker=marker,
                    linewidth=2.2, markersize=7, label=f"{s.label} ({len(front)} on frontier / {len(pts)})")
            _error_bars(ax, on, colour, x=True)
            if off:
                ax.plot([p.x for p in off], [p.y for p in off], color=colour, marker=marker, linestyle="none",
                        alpha=0.3, markersize=7)
                _error_bars(ax, off, colour, x=True, alpha=0.3)
        _mark_diverged(ax, diverged)
        _mark_dense(ax, dense)
        _mark_reference(ax, [r.row["loss_recovered_mean_ablation"] for _, r in mean_ablation_references(series)])
        others = {s.label for s in series if id(s) in replicas}  # their ratios are in the seed table
        site_ratios = [r for r in ratios if (r["model"], r["hook"]) == (model, hook)
                       and r["a"] not in others and r["b"] not in others]
        if site_ratios:
            ax.text(1.03, 0.0, "L0 ratio at matched loss recovered (95 % CI)\n"
                    + "\n".join(_ratio_short(r) for r in site_ratios),
                    transform=ax.transAxes, ha="left", va="bottom", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        _log_x(ax)
        ax.set_ylabel("Loss recovered (fraction)")
        ax.set_title(f"{model} · {hook}")
        ax.grid(True, which="both", alpha=0.25)
        _legend(ax, "Pareto frontier in bold; faded points are dominated; whiskers: 95 % CI")
    fig.suptitle("Sparsity vs fidelity (up and to the left is better)", fontsize=13)
    _save(fig, path)


def _mark_reference(ax, levels: Sequence[float]) -> None:
    """The mean-ablation reference: a line where it falls inside the SAEs' range, else a note
    (at the residual stream it lies far below them, and a line there would squash the frontier)."""
    lo, hi = ax.get_ylim()
    for k, y in enumerate(levels):
        if lo <= y <= hi:
            ax.axhline(y, color="0.45", linestyle=(0, (4, 3)), linewidth=1,
                       label="mean activation alone (x̂ = b_dec)" if k == 0 else None)
        else:
            ax.text(0.01, 0.01 + 0.05 * k, f"mean activation alone (x̂ = b_dec): loss recovered {y:.3f}, off the axis",
                    transform=ax.transAxes, fontsize=8, color="0.35")


def _styles_but_replicas(series: Sequence[Series], replicas: dict[int, int]) -> dict[int, tuple]:
    """_style over the series that are not further seeds of another (`replicas`, from
    _seed_replicas), keyed by index in `series`."""
    own = [i for i, s in enumerate(series) if id(s) not in replicas]
    return dict(zip(own, _style([series[i] for i in own]).values()))


def _plot_replica(ax, s: Series, pts: list[_Plotted], style: tuple, legended: set, suffix: str = "") -> None:
    """A further training seed: hollow points in its first seed's colour and marker, one legend
    entry for all of an architecture's other seeds."""
    name = f"{_strip_key(s.label, SEED_KEY)}, other seeds{suffix}"
    ax.plot([p.x for p in pts], [p.y for p in pts], color=style[0], marker=style[2], linestyle="none",
            markerfacecolor="none", alpha=0.7, markersize=7, label=name if name not in legended else "_nolegend_")
    legended.add(name)


def _seed_replicas(series: Sequence[Series]) -> dict[int, int]:
    """id(series) -> index of the series it repeats with another train.seed (the lowest seed of a
    group that is otherwise the same): plotted as points around that series, not as their own line."""
    first: dict[tuple, int] = {}
    for i, s in sorted(enumerate(series), key=lambda x: _natural(repr(dict(x[1].extras).get(SEED_KEY)))):
        if SEED_KEY not in dict(s.extras):
            continue
        first.setdefault((s.architecture, _but_seed(s)), i)
    out = {}
    for i, s in enumerate(series):
        if SEED_KEY in dict(s.extras):
            j = first[(s.architecture, _but_seed(s))]
            if j != i:
                out[id(s)] = j
    return out


def plot_shrinkage(sites: dict[tuple[str, str], list[Series]], path: Path) -> None:
    """L0 vs relative reconstruction bias γ centred (whiskers: its 95 % interval); γ < 1 means the
    SAE shrinks its reconstructions. Centred, because where the mean direction carries much of
    E‖x‖² the raw γ hides shrinkage; an evaluation made before γ centred existed shows its raw γ,
    labelled so. Further training seeds are hollow points, as in the frontier."""
    fig, axes = _figure(len(sites))
    for ax, ((model, hook), series) in zip(axes, sites.items()):
        replicas = _seed_replicas(series)
        styles = _styles_but_replicas(series, replicas)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, label="γ = 1: no shrinkage")
        legended: set = set()
        diverged: list[_Plotted] = []
        for i, s in enumerate(series):
            pts, raw = _plottable(s, GAMMA_CENTRED), ""
            if not pts:
                pts, raw = _plottable(s, "relative_reconstruction_bias"), " (raw γ)"
            if not pts:
                continue
            diverged += [p for p in pts if p.diverged]
            if id(s) in replicas:
                _plot_replica(ax, s, pts, styles[replicas[id(s)]], legended, raw)
                continue
            colour, ls, marker = styles[i]
            ax.plot([p.x for p in pts], [p.y for p in pts], color=colour, linestyle=ls, marker=marker,
                    linewidth=1.8, markersize=7, label=s.label + raw)
            _error_bars(ax, pts, colour, x=False)
        _mark_diverged(ax, diverged)
        _log_x(ax)
        ax.set_ylabel("γ centred (< 1: shrinkage)")
        ax.set_title(f"{model} · {hook}")
        ax.grid(True, which="both", alpha=0.25)
        ax.text(0.99, 1.0, "no shrinkage ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=9, color="black")
        _legend(ax, "whiskers: 95 % CI")
    fig.suptitle("Shrinkage: relative reconstruction bias about the means, "
                 "γ centred = E‖x̂ − E x̂‖² / E[(x̂ − E x̂)·(x − E x)]", fontsize=12)
    _save(fig, path)


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _fci(r: Result, key: str, digits: int = 4) -> str:
    """'0.9761 [0.9702, 0.9813]': the value and its 95 % interval, or the value alone where there
    is none or it is a single point (pass-through is the same in every resample)."""
    value = _f(r.row[key], digits)
    ci = r.ci.get(key)
    if not ci or r.row[key] is None or ci[0] == ci[1] == r.row[key]:
        return value
    return f"{value} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


# (header, key, digits) for the markdown and terminal tables.
TABLE = [("L0", "l0", 4), ("L0 gate", "l0_gate", 4), ("loss recovered", "loss_recovered", 4), ("Δ loss", "delta_loss", 3),
         ("KL", "kl_div", 3), ("γ", "relative_reconstruction_bias", 4),
         ("γ centred", "relative_reconstruction_bias_centred", 4), ("NMSE", "nmse", 3),
         ("expl. var.", "explained_variance", 3), ("dead", "frac_dead", 3), ("dense", "frac_dense", 3),
         ("pass-through", "frac_passthrough", 3)]


def _cells(s: Series, r: Result) -> list[str]:
    row = r.row
    return ([s.label, _f(row["l1_coefficient"]),
             _fmt_value(row["train_tokens"]) if row["train_tokens"] is not None else "–"]
            + [_fci(r, key, d) for _, key, d in TABLE])


def mean_ablation_references(series: Sequence[Series]) -> list[tuple[str, Result]]:
    """(eval set, one of its results) for every eval set at a site whose evaluations recorded the
    mean-ablation reference (the site at its mean activation: what b_dec alone recovers)."""
    seen: dict[str, Result] = {}
    for s in series:
        for r in s.results:
            if r.row["loss_recovered_mean_ablation"] is not None:
                seen.setdefault(str(r.row["eval_set"] or "unknown"), r)
    return sorted(seen.items())


def _reference_cells(eval_set: str, r: Result, several: bool) -> list[str]:
    label = "reference: mean activation (x̂ = b_dec alone)" + (f", eval set {eval_set}" if several else "")
    delta = _f(r.row["ce_mean_ablation"] - r.row["ce_clean"], 3) if r.row["ce_clean"] is not None else "–"
    cells = {"l0": "0", "loss_recovered": _fci(r, "loss_recovered_mean_ablation"), "delta_loss": delta}
    return [label, "–", "–"] + [cells.get(key, "–") for _, key, _ in TABLE]


def _sparse_lines(sp: dict) -> list[str]:
    head = f"  Over the sparse part alone ({sp['n_dense_left_out']} ‡ point(s) left out): "
    if sp["geomean"] is None:
        return [head + f"no ratio ({sp['reason']}).", ""]
    lo, hi = sp["overlap"]
    ci = (f", 95 % CI **{sp['interval'][0]:.3f}–{sp['interval'][1]:.3f}**" if sp["interval"]
          else f"; no interval: {sp['interval_reason']}")
    return [head + f"**{sp['geomean']:.3f}** over loss recovered {lo:.3f}–{hi:.3f}{ci}.", ""]


def _footing_words(r: dict) -> str:
    wa, wb = r.get("widths") or (None, None)
    if r.get("footing") == "equal compute":
        return f"equal compute ({r['b'].split(',')[0]} {wb:g}x, 1.5x the gated {wa:g}x: the paper's footing)"
    if r.get("footing") == "other widths":
        return f"widths {wa:g}x / {wb:g}x"
    return "equal width" + (f" ({wa:g}x)" if wa is not None else "")


def _resampling(r: dict) -> str:
    """How the interval was made, in words."""
    windows = "/".join(str(n) for n in r["n_windows"])
    if r["paired"]:
        how = f"paired bootstrap over the {windows} windows of eval set {r['eval_sets'][0]}"
    else:
        if "unknown" in r["eval_sets"]:
            why = "some per-window files record no eval set, so which windows the SAEs share is unknown"
        elif len(r["eval_sets"]) > 1:
            why = f"the SAEs were evaluated on {len(r['eval_sets'])} different eval sets ({', '.join(r['eval_sets'])})"
        else:
            why = f"the evaluations of eval set {r['eval_sets'][0]} hold different numbers of windows ({windows})"
        how = f"UNPAIRED bootstrap: {why}; each eval set was resampled on its own, so the interval is wider than a paired one"
    valid = (f"{r['n_resamples']:,} resamples" if r["n_valid"] == r["n_resamples"] else
             f"{r['n_resamples']:,} resamples, of which the {r['n_valid']:,} whose frontiers still overlap give the interval")
    return f"{how}; {valid}"


def _ratio_line(r: dict) -> str:
    head = f"{r['a']} / {r['b']} ({r['model']}, {r['hook']})"
    if r["geomean"] is None:
        return f"{head}: no matched-L0 ratio: {r['reason']}"
    lo, hi = r["overlap"]
    text = (f"{head}: L0 ratio at matched loss recovered = {r['geomean']:.3f} (geometric mean of "
            f"{len(r['ratios'])} points over loss recovered {lo:.3f}-{hi:.3f})")
    if r["interval"]:
        text += f"; 95 % CI [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}], {_resampling(r)}"
    else:
        text += f"; no interval: {r['interval_reason']}"
    return text


def _span(span: Optional[Sequence[float]]) -> str:
    return "–" if span is None else f"{span[0]:.3f}–{span[1]:.3f}"


def _spread_line(sp: dict) -> str:
    head = f"{sp['a']} / {sp['b']} at {sp['hook']}, seeds {', '.join(str(x) for x in sp['seeds'])}"
    if sp["span"] is None:
        return f"{head}: not comparable: {sp['reason']}"
    per = ", ".join(f"{r:.3f}" for r in sp["ratios"])
    return (f"{head}, loss recovered {_span(sp['span'])}: ratios {per}; geometric mean {sp['geomean']:.3f}, 95 % CI "
            f"over seeds [{sp['interval'][0]:.3f}, {sp['interval'][1]:.3f}]; one more run would fall in "
            f"[{sp['prediction'][0]:.3f}, {sp['prediction'][1]:.3f}]")


def _check_line(c: dict) -> str:
    head = (f"{_strip_lengths(c['a'])} / {_strip_lengths(c['b'])} at {c['hook']}, {_fmt_value(c['tokens'][0])} → "
            f"{_fmt_value(c['tokens'][1])} tokens{_factor(c)}")
    if c["span"] is None:
        return f"{head}: not comparable ({c['verdict_reason']})"
    ci = (f", 95 % CI [{c['change_interval'][0]:.3f}, {c['change_interval'][1]:.3f}]" if c["change_interval"] else "")
    return (f"{head}, at loss recovered {_span(c['span'])}: ratio {c['ratio'][0]:.3f} → {c['ratio'][1]:.3f} (change "
            f"{c['change']:.3f}{ci}): {c['verdict']} at margin ±{c['margin']:g}"
            + (f" ({c['verdict_reason']})" if c["verdict_reason"] else ""))


def _filtered(filters: Sequence[str]) -> str:
    return f", filtered by {', '.join(f'`{w}`' for w in filters)}" if filters else ""


def _markdown(sites: dict[tuple[str, str], list[Series]], ratios: list[dict], source: str,
              checks: Sequence[dict] = (), spreads: Sequence[dict] = ()) -> str:
    lines = ["# gsae report", "",
             source + ".",
             "L0: mean non-zero features per site token (‖f‖₀, the paper's); L0 gate: mean open gates, the support "
             "the architecture decides (equal to L0 for relu; blank for evaluations made before gsae recorded it). "
             "Loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean). "
             "γ: relative reconstruction bias (1 = no shrinkage); γ centred: the same about the means. "
             "KL: KL(clean ‖ spliced) per token. Pass-through: site positions left at their clean activation. "
             "[lo, hi]: 95 % bootstrap interval over eval windows.", "",
             "![L0 vs loss recovered](frontier.png)", "", "![shrinkage](shrinkage.png)", ""]
    diverged = [r for s in (x for ss in sites.values() for x in ss) for r in s.results if r.row["diverged_at_step"]]
    if diverged:
        lines += ["## Warning: SAEs whose training diverged", "",
                  "Their points below are real measurements of a broken run, not of the architecture; "
                  "retrain them with a lower learning rate.", ""]
        lines += [f"- {r.row['architecture']} λ {_fmt_value(r.row['l1_coefficient'])} at {r.row['hook']} "
                  f"({_fmt_value(r.row['train_tokens'])} tokens): diverged at step {r.row['diverged_at_step']:,} "
                  f"(`{r.directory.name}`)" for r in sorted(diverged, key=_sort_key)]
        lines.append("")
    head = ["series", "λ", "train tokens"] + [h for h, *_ in TABLE] + ["eval"]
    for (model, hook), series in sites.items():
        lines += [f"## {model} · {hook}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        marked = dense_marked = False
        for s in series:  # already by architecture, then L0
            for r in s.results:
                cells = _cells(s, r) + [f"`{Path(r.row['eval_path']).name}`"]
                if r.row["diverged_at_step"]:
                    cells[1] += " †"
                    marked = True
                if is_dense(r):
                    cells[1] += " ‡"
                    dense_marked = True
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        refs = mean_ablation_references(series)
        for eval_set, r in refs:
            cells = _reference_cells(eval_set, r, len(refs) > 1) + ["–"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
        if marked:
            lines += ["† training diverged (warning above): a measurement of a broken run.", ""]
        if dense_marked:
            lines += [f"‡ mean feature density (L0 / d_sae) above {DENSE_CODE:.0%}: not a sparse code; each ratio "
                      "below is also given over the sparse part alone.", ""]
        site_ratios = [r for r in ratios if (r["model"], r["hook"]) == (model, hook)]
        lines += ["### L0 ratio at matched loss recovered", "",
                  "The paper's headline (docs/method.md §4, L0 ratio at matched loss recovered): how many active features one architecture needs, relative to "
                  "another, for the same loss recovered; log L0 interpolated along each Pareto frontier, geometric "
                  "mean over the overlap of the two frontiers' loss-recovered ranges. < 1 means the first needs "
                  "fewer. The 95 % interval recomputes every SAE's L0 and loss recovered, both frontiers and "
                  "the ratio on each bootstrap resample of the eval windows.", ""]
        if not site_ratios:
            lines += ["Only one architecture here: nothing to compare.", ""]
        for r in site_ratios:
            if r["geomean"] is None:
                lines += [f"- **{r['a']} / {r['b']}**: no ratio: {r['reason']}.", ""]
                continue
            lo, hi = r["overlap"]
            ci = (f", 95 % CI **{r['interval'][0]:.3f}–{r['interval'][1]:.3f}**: {_resampling(r)}."
                  if r["interval"] else f"; no interval: {r['interval_reason']}.")
            lines += [f"- **{r['a']} / {r['b']}**, {_footing_words(r)}: **{r['geomean']:.3f}** (geometric mean over "
                      f"loss recovered {lo:.3f}–{hi:.3f}){ci}", "",
                      *(_sparse_lines(r["sparse"]) if r.get("sparse") else []),
                      "  | loss recovered | L0 " + r["a"] + " | L0 " + r["b"] + " | ratio |", "  |---|---|---|---|"]
            for t, la, lb, q in zip(r["targets"], r["l0_a"], r["l0_b"], r["ratios"]):
                lines.append(f"  | {t:.3f} | {la:.1f} | {lb:.1f} | {q:.3f} |")
            lines.append("")
        site_spreads = [sp for sp in spreads if (sp["model"], sp["hook"]) == (model, hook)]
        if site_spreads:
            lines += ["### Run-to-run spread: the ratio over training seeds", "",
                      "The same pair trained with several `train.seed` (initialisation, which rows of the store a run "
                      "reads, and their order), at each training length, every seed's ratio at the same "
                      "loss-recovered targets: the range all their frontiers cover. The window bootstrap above "
                      "holds the SAEs fixed; this is the variation of training, on these eval windows (every seed "
                      "is evaluated on the same ones, so window sampling is not in it). CI: Student t over seeds "
                      "on log ratio; one more run: the t prediction interval for a further seed. With 3 seeds "
                      "both are wide (t = 4.30) and assume log-normal ratios.", "",
                      "| pair | train tokens | loss recovered | ratio per seed | geometric mean [95 % CI over seeds] "
                      "| one more run |", "|---|---|---|---|---|---|"]
            for sp in site_spreads:
                pair = f"| {_strip_tokens(sp['a'])} / {_strip_tokens(sp['b'])} | " + (
                    f"{_fmt_value(sp['tokens']) if sp['tokens'] is not None else '–'} | {_span(sp['span'])} | ")
                if sp["span"] is None:
                    lines.append(pair + f"not comparable: {sp['reason']} (seeds "
                                 f"{', '.join(str(x) for x in sp['seeds'])}) | – | – |")
                    continue
                per = ", ".join(f"{r:.3f} (seed {x})" for x, r in zip(sp["seeds"], sp["ratios"]))
                lines.append(pair + f"{per} | {sp['geomean']:.3f} [{sp['interval'][0]:.3f}, {sp['interval'][1]:.3f}] | "
                             f"[{sp['prediction'][0]:.3f}, {sp['prediction'][1]:.3f}] |")
            lines.append("")
            for sp in site_spreads:
                for d in sp["dropped"]:
                    lines += [f"- Left out of {_strip_tokens(sp['a'])} / {_strip_tokens(sp['b'])}: seed {d['seed']}, "
                              f"which gives no ratio ({d['reason']}).", ""]
        site_checks = [c for c in checks if (c["model"], c["hook"]) == (model, hook)]
        if site_checks:
            margin = ", ".join(sorted({f"±{c['margin']:g}" for c in site_checks}))
            lines += ["### Convergence: the ratio as the training tokens grow", "",
                      "Each ratio at T training tokens against the same pair of series at a longer T′, both at the "
                      "same loss-recovered targets: the range all four frontiers cover (docs/method.md §4.2). The "
                      "criterion is a doubling (T′ = 2T); other lengths are shown where they ran (the factor, and "
                      "the store sizes where they differ). Change = ratio(T′) / ratio(T), with a paired bootstrap "
                      "interval (the same window resamples give both ratios). Fixed before the data: **converged** "
                      f"when the change's 95 % interval lies inside 1 {margin} (`report.equivalence_margin`), **not "
                      "converged** when it lies wholly outside, **undetermined** when it straddles a bound, "
                      "**not comparable** when the frontiers share no range. The interval is over eval windows "
                      "only: run-to-run variation is in the seed table, not in this verdict.", "",
                      "| pair | T → T′ | loss recovered | ratio at T [95 % CI] | ratio at T′ [95 % CI] | change [95 % CI] "
                      "| verdict |", "|---|---|---|---|---|---|---|"]
            for c in site_checks:
                iv = lambda x: f" [{x[0]:.3f}, {x[1]:.3f}]" if x else ""  # noqa: E731
                num = lambda v, x: "–" if v is None else f"{v:.3f}{iv(x)}"  # noqa: E731
                verdict = f"**{c['verdict']}**" + (f" ({c['verdict_reason']})" if c["verdict_reason"] else "")
                lines.append(f"| {_strip_lengths(c['a'])} / {_strip_lengths(c['b'])} | {_lengths(c)} | {_span(c['span'])} | "
                             f"{num(c['ratio'][0], c['interval'][0])} | {num(c['ratio'][1], c['interval'][1])} | "
                             f"{num(c['change'], c['change_interval'])} | {verdict} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _strip_key(label: str, key: str) -> str:
    return ", ".join(p for p in label.split(", ") if not p.startswith(key + "="))


def _strip_tokens(label: str) -> str:
    return _strip_key(label, TOKENS_KEY)


def _strip_lengths(label: str) -> str:
    """A check's pair label without the lengths it compares (train tokens, store size)."""
    for key in LENGTH_KEYS:
        label = _strip_key(label, key)
    return label


def _factor(c: dict) -> str:
    """' (1.47x)' for a check that is not a doubling, else ''."""
    return "" if math.isclose(c["factor"], 2.0) else f" ({c['factor']:.2f}x)"


def _lengths(c: dict) -> str:
    """'2M → 4M', with the factor when it is not a doubling and the stores when they differ."""
    text = f"{_fmt_value(c['tokens'][0])} → {_fmt_value(c['tokens'][1])}{_factor(c)}"
    s1, s2 = c.get("stores") or (None, None)
    if s1 != s2 and s1 is not None and s2 is not None:
        text += f", stores of {_fmt_value(s1)} and {_fmt_value(s2)} rows"
    return text


def print_table(sites: dict[tuple[str, str], list[Series]]) -> None:
    """The results on stderr (stdout carries only the report folder), one table per site."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    probe = Console(stderr=True)
    # Not a terminal (a log file): do not fold every interval onto three lines at 80 columns.
    console = Console(stderr=True, highlight=False, soft_wrap=False, width=None if probe.is_terminal else 250)
    for (model, hook), series in sites.items():
        table = Table(title=Text(f"{model} · {hook}  ([lo, hi]: 95 % CI)"), title_justify="left", header_style="bold")
        for h in ["series", "λ", "tokens"] + [h for h, *_ in TABLE]:
            table.add_column(h, justify="left" if h == "series" else "right")
        for s in series:
            for r in s.results:
                table.add_row(*[Text(c) for c in _cells(s, r)])  # Text: "[lo, hi]" is not markup
        console.print(table)


def _ratios_json(ratios: list[dict]) -> str:
    return json.dumps(ratios, indent=2, default=lambda v: list(v) if isinstance(v, tuple) else str(v)) + "\n"


def run_report(paths: Sequence[str | Path], out_dir: Path, report_dir: Path, where: Sequence[str],
               bootstrap_samples: int = 1000, bootstrap_seed: int = 0, equivalence_margin: float = 0.05,
               evidence: Optional[Path] = None) -> Path:
    """Collect, filter, compare and write the report (see the module docstring). With `evidence`,
    the kept evaluations' evidence is written there first (gsae_cli/evidence.py) and the report is
    made from it, so that `gsae report EVIDENCE` rebuilds the same files byte for byte."""
    results, looked = collect(paths, out_dir)
    if not results:
        raise ConfigError(
            f"No evaluation results were found under {looked}. Make some with "
            "`gsae eval sae=relu sae.l1_coefficient=0.1` (it harvests and trains first), a sweep like "
            "`gsae eval -m sae=relu,gated sae.l1_coefficient=0.05,0.1,0.2`, or `sweeps/frontier.sh`; "
            "or point `gsae report` at the right folder (out_dir=DIR, or eval folders as arguments).")
    kept = filter_results(results, where)
    if not kept:
        present = {k: sorted({str(r.row[c]) for r in results}) for k, c in
                   (("model", "model"), ("hook", "hook"), ("sae", "architecture"))}
        raise ConfigError(
            f"{len(results)} evaluation result(s) were found under {looked}, but none matches "
            f"{' and '.join(f'--where {w}' for w in where)}. Present: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in present.items()) + ".")
    from gsae_cli.evidence import export_evidence, provenance

    source = f"Evaluations collected from {looked}" + _filtered(where)
    if evidence is not None:
        export_evidence([r.directory for r in kept], evidence, source)
        kept, looked = collect([evidence], out_dir)
        source += f"; their evidence is in {looked}"
    elif (origin := provenance(paths)) is not None:  # a report made from evidence says where it came from
        source = f"{origin}; their evidence is in {looked}" + _filtered(where)
    sites = group_series(kept)
    ratios = pairwise_ratios(sites, bootstrap_samples, bootstrap_seed)
    checks = length_checks(ratios, margin=equivalence_margin, n_samples=bootstrap_samples, seed=bootstrap_seed)
    spreads = seed_spreads(ratios, n_samples=bootstrap_samples, seed=bootstrap_seed)
    ratios = [{k: v for k, v in r.items() if not k.startswith("_")} for r in ratios]

    report_dir = Path(report_dir).expanduser()
    report_dir.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(report_dir / "results.csv", _csv_text(kept, report_dir))
    artifacts.atomic_write_text(report_dir / "ratios.json", _ratios_json(ratios))
    plot_frontier(sites, report_dir / "frontier.png", ratios)
    plot_shrinkage(sites, report_dir / "shrinkage.png")
    artifacts.atomic_write_text(report_dir / "results.md", _markdown(sites, ratios, source, checks, spreads))
    artifacts.atomic_write_text(report_dir / "convergence.json", _ratios_json(checks))
    artifacts.atomic_write_text(report_dir / "seeds.json", _ratios_json(spreads))
    print_table(sites)
    n_series = sum(len(s) for s in sites.values())
    notice(f"{len(kept)} evaluation(s) in {n_series} series at {len(sites)} site(s) written to {report_dir}")
    for r in sorted((r for r in kept if r.row["diverged_at_step"]), key=_sort_key):
        notice(f"WARNING: the {r.row['architecture']} SAE at λ {_fmt_value(r.row['l1_coefficient'])} "
               f"({r.row['hook']}, {r.directory.name}) diverged in training at step {r.row['diverged_at_step']:,}: "
               "its point is not trustworthy; retrain it with a lower learning rate, or leave such SAEs out "
               "with --where diverged_at_step=none")
    for r in ratios:
        notice(_ratio_line(r))
    for c in checks:
        notice(_check_line(c))
    for sp in spreads:
        notice(_spread_line(sp))
    return report_dir


def report_command(args: Sequence[str], report_dir: Path, where: Sequence[str],
                   legacy_out_dir: Optional[str] = None, evidence: Optional[Path] = None) -> Path:
    """`gsae report ARGS`: `key=value` arguments are config overrides composed like every stage's
    (out_dir=, eval.bootstrap_samples / eval.bootstrap_seed for the ratio's interval, and
    report.equivalence_margin for the convergence verdict); any
    other argument is an eval artifact or a folder holding them."""
    from gsae_cli.listing import is_override, reader_config

    overrides = [a for a in args if is_override(a)]
    paths = [a for a in args if not is_override(a)]
    cfg = reader_config(overrides, command="report", legacy_out_dir=legacy_out_dir,
                        uses={"out_dir", "eval.bootstrap_samples", "eval.bootstrap_seed", "report.equivalence_margin"},
                        hint="; to keep some rows only, use --where KEY=VALUE")
    return run_report(paths, Path(cfg.out_dir), report_dir, where,
                      bootstrap_samples=int(cfg.eval.bootstrap_samples), bootstrap_seed=int(cfg.eval.bootstrap_seed),
                      equivalence_margin=float(cfg.report.equivalence_margin), evidence=evidence)


def ratings_command(args: Sequence[str], report_dir: Path, ratings: Sequence[Path]) -> Path:
    """`gsae report --ratings FILE ... [out_dir=DIR]`: unblind a study's ratings (the study is
    found under out_dir/study/) and write study.md and study.json to the report folder."""
    from gsae_cli.listing import is_override, reader_config
    from gsae_cli.study import ratings_markdown, ratings_report

    extra = [a for a in args if not is_override(a)]
    if extra:
        raise ConfigError(f"With --ratings, report takes only out_dir=DIR (where the study is), not {extra[0]!r}.")
    cfg = reader_config([a for a in args if is_override(a)], command="report --ratings", legacy_out_dir=None,
                        uses={"out_dir"}, hint="")
    rows = ratings_report(list(ratings), Path(cfg.out_dir))
    report_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(report_dir / "study.json", rows)
    text = ratings_markdown(rows)
    artifacts.atomic_write_text(report_dir / "study.md", text)
    sys.stderr.write(text)
    return report_dir / "study.md"
