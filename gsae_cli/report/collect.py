"""Finished evaluations as report rows (Result), filtered by --where and grouped into series: one
per (model, hook, architecture) plus every other config value that differs between the rows, so
that a frontier never mixes models, sites, budgets or widths. λ (or k, for topk and batchtopk) is
what varies along a series."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsae_cli.config import ARCH_ONLY_KEYS, NON_IDENTITY_KEYS, applies
from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.report.bootstrap import WINDOW_FILE
from gsae_cli.report.frontier import Point
from gsae_cli.train.divergence import divergence_of_sae

ID_COLUMNS = ["model", "hook", "architecture", "l1_coefficient", "train_tokens"]

METRIC_KEYS = [
    "l0",
    "l0_gate",
    "loss_recovered",
    "delta_loss",
    "kl_div",
    "relative_reconstruction_bias",
    "relative_reconstruction_bias_centred",
    "nmse",
    "explained_variance",
    "frac_dead",
    "frac_dense",
    "frac_passthrough",
    "ce_clean",
    "ce_spliced",
    "ce_zero_ablation",
    "ce_mean_ablation",
    "loss_recovered_mean_ablation",
]


# Each metric with its 95 % interval from metrics.json "ci" (blank where an eval recorded none).
# diverged_at_step: the training step at which the SAE's training diverged (gsae_cli/train/divergence.py), else empty
# d_sae and mean_density = l0 / d_sae: above DENSE_CODE a point is not a sparse code (below)
COLUMNS = (
    ID_COLUMNS
    + [c for k in METRIC_KEYS for c in (k, f"{k}_lo", f"{k}_hi")]
    + ["d_sae", "mean_density", "diverged_at_step", "eval_set", "eval_path"]
)

# An SAE whose features fire on more than this fraction of tokens on average is not a sparse
# code: marked ‡ in tables and plots, and left out of the "sparse part" ratios (docs/method.md §4).
DENSE_CODE = 0.10

# Short names for --where, mapped to result columns.
ALIASES = {
    "model": "model",
    "model.name": "model",
    "sae": "architecture",
    "sae.name": "architecture",
    "arch": "architecture",
    "l1": "l1_coefficient",
    "sae.l1_coefficient": "l1_coefficient",
    "sae.k": "k",
    "tokens": "train_tokens",
    "train.n_tokens": "train_tokens",
    "hook": "hook",
}

WIDTH_KEY = "sae.expansion_factor"


# Config keys that change speed, logging, intervals or where files go, never what an SAE or a
# measurement is; the coefficient is what varies *along* a series. Differences elsewhere split series
# (the shuffle window among them: it changes which rows share a batch).
_NOT_SERIES_KEYS = {
    "sae.l1_coefficient",
    "sae.k",  # (what varies along a fixed-k architecture's series)
    "sae.path",
    "sae.name",
    "model.name",
    "hook",
    "hooks",
    "out_dir",
    "device",
    "train.checkpoint_every",
    "train.log_every",
    "train.wandb",
    "train.wandb_project",
    "train.compile",
    "harvest.batch_size",
    "harvest.chunk_rows",
    "harvest.shard_chunks",
    "eval.batch_size",
    "eval.cache",
    "eval.bootstrap_samples",
    "eval.bootstrap_seed",
    "eval.density_bins",
} | NON_IDENTITY_KEYS  # speed, place, logging: never a series

_ARCH_ONLY = {f"sae.{k}" for k in ARCH_ONLY_KEYS}


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
ARCH_ORDER = ["gated", "rescale_shift", "relu", "scaled_relu", "jumprelu", "topk", "batchtopk"]


@dataclass
class Result:
    row: dict  # the results.csv columns
    config: dict  # the full resolved config of the evaluation
    flat: dict = field(default_factory=dict)  # config flattened to dotted keys (--where)
    series_keys: dict = field(default_factory=dict)  # what may split series (see group_series)
    ci: dict = field(default_factory=dict)  # metric -> (lo, hi), from metrics.json "ci"

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
                    f"`gsae report out_dir=DIR`."
                )
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


def num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = num(value[0]), num(value[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


def _eval_set(directory: Path) -> str | None:
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
    flat = {k: v for k, v in flat.items() if k not in _ARCH_ONLY or applies(k[4:], str(arch))}
    from gsae_cli.evaluate.metrics import (
        NO_BOOTSTRAP,  # (evaluations made before it recorded one for frac_dead: not shown)
    )

    ci = {
        k: iv
        for k, v in (metrics.get("ci") or {}).items()
        if k not in NO_BOOTSTRAP and (iv := _interval(v)) is not None
    }
    row = {
        "model": config.get("model", {}).get("name") or sae.get("model"),
        "hook": config.get("hook") or sae.get("hook"),
        "architecture": arch,
        "l1_coefficient": num(sae.get("l1_coefficient", config.get("sae", {}).get("l1_coefficient")))
        if applies("l1_coefficient", str(arch))
        else None,
        "k": num(config.get("sae", {}).get("k")) if applies("k", str(arch)) else None,
        "train_tokens": config.get("train", {}).get("n_tokens"),
        **{k: num(metrics.get(k)) for k in METRIC_KEYS},
        **{f"{k}_{end}": (ci[k][i] if k in ci else None) for k in METRIC_KEYS for i, end in enumerate(("lo", "hi"))},
        "d_sae": (d_sae := num(sae.get("d_sae"))),
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


_SUFFIX = {"k": 1e3, "M": 1e6, "B": 1e9}


def _wanted_num(text: str) -> float | None:
    """A number as a user types it: 0.1, 2_000_000, 2e6, or 2M / 500k."""
    text = text.strip()
    if text[-1:] in _SUFFIX and num(text[:-1]) is not None:
        return num(text[:-1]) * _SUFFIX[text[-1]]  # type: ignore[operator]
    return num(text)


def _matches(actual: Any, wanted: str) -> bool:
    """Numbers compare as numbers (l1=0.1 matches 0.10, tokens=2M matches 2000000),
    everything else as text; true/false match booleans."""
    if actual is None:
        return wanted.lower() in ("none", "null", "")
    if isinstance(actual, bool):
        return str(actual).lower() == wanted.lower()
    a, w = num(actual), _wanted_num(wanted)
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
            raise ConfigError(
                f"--where {item!r}: expected key=value, e.g. --where model=smollm2-135m "
                "or --where train.n_tokens=2000000."
            )
        if results and not any(_lookup(r, key)[0] for r in results):
            raise ConfigError(
                f"--where {item!r}: no evaluation has a config key {key!r}. Use a dotted config "
                f"key (model.name, sae.name, train.n_tokens, ...), a results.csv column, or one "
                f"of {', '.join(sorted(ALIASES))}."
            )
        options = [v.strip() for v in value.split(",")]
        results = [r for r in results if _lookup(r, key)[0] and any(_matches(_lookup(r, key)[1], v) for v in options)]
    return results


@dataclass
class Series:
    model: str
    hook: str
    architecture: str
    extras: tuple[tuple[str, Any], ...]  # distinguishing config values beyond model/hook/arch
    results: list[Result]

    @property
    def label(self) -> str:
        return ", ".join([self.architecture] + [f"{k}={fmt_value(v)}" for k, v in self.extras])

    @property
    def points(self) -> list[Point]:
        return [(r.row["l0"], r.row["loss_recovered"]) for r in self.results]


def fmt_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) and abs(v) >= 1000:
        for div, unit in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
            if abs(v) >= div:
                return f"{v / div:g}{unit}"
    return f"{v:g}"


def natural_key(text: str) -> tuple:
    """Sort key reading digit runs as numbers: blocks.6 before blocks.12."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def arch_rank(arch: str) -> tuple[int, str]:
    return (ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER), str(arch))


def group_series(results: list[Result]) -> dict[tuple[str, str], list[Series]]:
    """(model, hook) -> its series, each sorted by L0."""
    by_site: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        by_site.setdefault((str(r.row["model"]), str(r.row["hook"])), []).append(r)
    out: dict[tuple[str, str], list[Series]] = {}
    for site, rows in sorted(by_site.items(), key=lambda kv: tuple(natural_key(t) for t in kv[0])):
        keys = sorted(set().union(*(r.series_keys.keys() for r in rows)) - _NOT_SERIES_KEYS)

        def disagree(k: str, rs: list[Result]) -> bool:
            # An architecture's own key (gated's switches, k) varies only if the rows that have it
            # disagree. Any other key a row lacks (an evaluation from an older gsae) counts as a
            # value of its own, so old and new results never merge into one frontier.
            if k in _ARCH_ONLY:
                return len({repr(r.series_keys[k]) for r in rs if k in r.series_keys}) > 1
            return len({repr(r.series_keys.get(k, "<absent>")) for r in rs}) > 1

        archs: dict[str, list[Result]] = {}
        for r in rows:
            archs.setdefault(str(r.row["architecture"]), []).append(r)
        varying = [
            k
            for k in keys
            if (any(disagree(k, rs) for rs in archs.values()) if k in _ARCH_SCOPED else disagree(k, rows))
        ]
        groups: dict[tuple, list[Result]] = {}
        for r in rows:
            extras = tuple((k, r.series_keys[k]) for k in varying if k in r.series_keys)
            groups.setdefault((str(r.row["architecture"]), extras), []).append(r)
        series = [
            Series(site[0], site[1], arch, extras, sorted(rs, key=lambda r: (r.row["l0"] is None, r.row["l0"] or 0.0)))
            for (arch, extras), rs in groups.items()
        ]
        out[site] = sorted(series, key=lambda s: (arch_rank(s.architecture), repr(s.extras)))
    return out


def mean_ablation_references(series: Sequence[Series]) -> list[tuple[str, Result]]:
    """(eval set, one of its results) for every eval set at a site whose evaluations recorded the
    mean-ablation reference (the site at its mean activation: what b_dec alone recovers)."""
    seen: dict[str, Result] = {}
    for s in series:
        for r in s.results:
            if r.row["loss_recovered_mean_ablation"] is not None:
                seen.setdefault(str(r.row["eval_set"] or "unknown"), r)
    return sorted(seen.items())
