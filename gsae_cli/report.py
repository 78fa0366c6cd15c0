"""`gsae report`: collect finished evaluations into results.csv, Pareto plots and a markdown
table, and compute the paper's headline number (spec §6): the L0 ratio between architectures
at matched loss recovered.

Rows are grouped into *series*: one per (model, hook, architecture) plus any other config value
that differs between the rows (train tokens, expansion factor, corpus, ...), so that a frontier
never mixes models, sites or training budgets. The sparsity coefficient is what varies along a
series.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

from gsae_cli import artifacts
from gsae_cli.errors import ArtifactError, ConfigError

COLUMNS = ["model", "hook", "architecture", "l1_coefficient", "train_tokens", "l0", "loss_recovered",
           "delta_loss", "kl_div", "relative_reconstruction_bias", "nmse", "explained_variance",
           "frac_dead", "frac_dense", "ce_clean", "ce_spliced", "ce_zero_ablation", "eval_path"]
METRIC_KEYS = COLUMNS[5:-1]

# Short names for --where, mapped to result columns.
ALIASES = {"model": "model", "model.name": "model", "sae": "architecture", "sae.name": "architecture",
           "arch": "architecture", "l1": "l1_coefficient", "sae.l1_coefficient": "l1_coefficient",
           "tokens": "train_tokens", "train.n_tokens": "train_tokens", "hook": "hook"}

# Config keys that change speed, logging or where files go, never what an SAE or a measurement
# is; the coefficient is what varies *along* a series. Differences elsewhere split series.
_NOT_SERIES_KEYS = {"sae.l1_coefficient", "sae.path", "sae.name", "model.name", "hook", "hooks", "out_dir",
                    "device", "train.checkpoint_every", "train.log_every", "train.wandb",
                    "train.wandb_project", "train.compile", "train.shuffle_buffer_chunks",
                    "train.autocast", "harvest.batch_size", "harvest.chunk_rows", "eval.batch_size"}
_GATED_ONLY = {"sae.tie_weights", "sae.aux_loss", "sae.freeze_aux_decoder"}

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


def matched_l0_ratios(series_a: Sequence[Point], series_b: Sequence[Point], n_targets: int = 5) -> dict:
    """L0(a) / L0(b) at matched loss recovered (the paper's headline: about 0.5 for gated vs
    relu). Evaluated at `n_targets` evenly spaced loss-recovered values across the overlap of the
    two frontiers' ranges; `geomean` summarises them. When there is no overlap, `geomean` is None
    and `reason` says why."""
    fa, fb = _frontier(series_a), _frontier(series_b)
    out: dict[str, Any] = {"targets": [], "l0_a": [], "l0_b": [], "ratios": [], "geomean": None,
                           "overlap": None, "reason": None}
    if not fa or not fb:
        out["reason"] = f"no usable points in {'the first' if not fa else 'the second'} series"
        return out
    lo, hi = max(fa[0][1], fb[0][1]), min(fa[-1][1], fb[-1][1])
    if lo > hi:
        out["reason"] = (f"the loss-recovered ranges do not overlap ({fa[0][1]:.3f}-{fa[-1][1]:.3f} vs "
                         f"{fb[0][1]:.3f}-{fb[-1][1]:.3f}); add coefficients that extend one towards the other")
        return out
    targets = [lo] if hi == lo or n_targets < 2 else [lo + (hi - lo) * k / (n_targets - 1) for k in range(n_targets)]
    for t in targets:
        a, b = l0_at_loss_recovered(fa, t), l0_at_loss_recovered(fb, t)
        if a is None or b is None:  # only float round-off at the ends can get here
            continue
        out["targets"].append(t)
        out["l0_a"].append(a)
        out["l0_b"].append(b)
        out["ratios"].append(a / b)
    out["overlap"] = (lo, hi)
    if out["ratios"]:
        out["geomean"] = math.exp(sum(math.log(r) for r in out["ratios"]) / len(out["ratios"]))
    else:
        out["reason"] = "no matched points"
    return out


# ---- collecting eval artifacts ---------------------------------------------------------------

@dataclass
class Result:
    row: dict                      # the results.csv columns
    config: dict                   # the full resolved config of the evaluation
    flat: dict = field(default_factory=dict)  # config flattened to dotted keys


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
                raise ConfigError(f"{root} does not exist; give eval artifact folders (outputs/eval/...) "
                                  "or folders that contain them.")
            continue
        if root.is_file():
            root = root.parent
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
    try:
        return float(value)
    except (TypeError, ValueError):
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
    row = {
        "model": config.get("model", {}).get("name") or sae.get("model"),
        "hook": config.get("hook") or sae.get("hook"),
        "architecture": arch,
        "l1_coefficient": _num(sae.get("l1_coefficient", config.get("sae", {}).get("l1_coefficient"))),
        "train_tokens": config.get("train", {}).get("n_tokens"),
        **{k: _num(metrics.get(k)) for k in METRIC_KEYS},
        "eval_path": str(directory),
    }
    return Result(row, config, flat)


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


def _arch_rank(arch: str) -> tuple[int, str]:
    return (ARCH_ORDER.index(arch) if arch in ARCH_ORDER else len(ARCH_ORDER), str(arch))


def group_series(results: list[Result]) -> dict[tuple[str, str], list[Series]]:
    """(model, hook) -> its series, each sorted by L0."""
    by_site: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        by_site.setdefault((str(r.row["model"]), str(r.row["hook"])), []).append(r)
    out: dict[tuple[str, str], list[Series]] = {}
    for site, rows in sorted(by_site.items()):
        keys = sorted(set().union(*(r.flat.keys() for r in rows)) - _NOT_SERIES_KEYS)
        # A key only some rows have (gated-only switches) varies only if those rows disagree.
        varying = [k for k in keys if len({repr(r.flat[k]) for r in rows if k in r.flat}) > 1]
        groups: dict[tuple, list[Result]] = {}
        for r in rows:
            extras = tuple((k, r.flat[k]) for k in varying if k in r.flat)
            groups.setdefault((str(r.row["architecture"]), extras), []).append(r)
        series = [Series(site[0], site[1], arch, extras,
                         sorted(rs, key=lambda r: (r.row["l0"] is None, r.row["l0"] or 0.0)))
                  for (arch, extras), rs in groups.items()]
        out[site] = sorted(series, key=lambda s: (_arch_rank(s.architecture), repr(s.extras)))
    return out


def _comparable(a: Series, b: Series) -> bool:
    """Same value for every distinguishing key both have: gated(tie_weights=false) still
    compares with relu, which has no such switch; a 4M-token series does not with a 2M one."""
    ea, eb = dict(a.extras), dict(b.extras)
    return all(repr(ea[k]) == repr(eb[k]) for k in ea.keys() & eb.keys())


def pairwise_ratios(sites: dict[tuple[str, str], list[Series]]) -> list[dict]:
    """Matched-L0 ratios for every pair of series that differ only in architecture, ordered so the
    paper's comparison reads gated / relu."""
    out = []
    for (model, hook), series in sites.items():
        for a, b in combinations(series, 2):
            if not _comparable(a, b) or a.architecture == b.architecture:
                continue
            if _arch_rank(b.architecture) < _arch_rank(a.architecture):
                a, b = b, a
            out.append({"model": model, "hook": hook, "a": a.label, "b": b.label,
                        **matched_l0_ratios(a.points, b.points)})
    return out


# ---- outputs ---------------------------------------------------------------------------------

def _csv_text(results: list[Result]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in sorted(results, key=lambda r: (str(r.row["model"]), str(r.row["hook"]),
                                            _arch_rank(str(r.row["architecture"])), r.row["l0"] or 0.0)):
        writer.writerow({k: ("" if r.row[k] is None else r.row[k]) for k in COLUMNS})
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


def _plottable(s: Series, y_key: str) -> list[tuple[float, float]]:
    pts = [(r.row["l0"], r.row[y_key]) for r in s.results]
    return sorted(p for p in pts if _finite(p) and p[0] > 0)  # log x: L0 must be positive


def _figure(n_panels: int):
    # A Figure on the Agg canvas directly: no pyplot global state, no display needed, and it
    # works whatever backend the caller's process has selected.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(n_panels, 2)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(7.5 * cols, 5.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _log_x(ax) -> None:
    """Log x with plain numbers at 1-2-5 steps: '20', not '2×10¹'."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L0 (mean active features per token, log scale)")


def _legend(ax, n_entries: int, title: str | None = None) -> None:
    # Below the axes: inside, it would cover the points that matter most (the frontier's ends).
    ax.legend(title=title, fontsize=9, title_fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=1 if n_entries > 4 else min(n_entries, 2), frameon=False)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    artifacts.atomic_write_bytes(path, buf.getvalue())


def plot_frontier(sites: dict[tuple[str, str], list[Series]], path: Path) -> None:
    """L0 vs loss recovered, one panel per (model, hook): each series' Pareto frontier drawn bold
    and connected, dominated points faded."""
    fig, axes = _figure(len(sites))
    for ax, ((model, hook), series) in zip(axes, sites.items()):
        styles = _style(series)
        for i, s in enumerate(series):
            colour, ls, marker = styles[i]
            pts = _plottable(s, "loss_recovered")
            if not pts:
                continue
            front = set(pareto_frontier(pts))
            dominated = [p for j, p in enumerate(pts) if j not in front]
            fx, fy = zip(*[pts[j] for j in sorted(front, key=lambda j: pts[j][0])])
            ax.plot(fx, fy, color=colour, linestyle=ls, marker=marker, linewidth=2.2, markersize=7,
                    label=f"{s.label} ({len(front)} on frontier / {len(pts)})")
            if dominated:
                dx, dy = zip(*dominated)
                ax.plot(dx, dy, color=colour, marker=marker, linestyle="none", alpha=0.3, markersize=7)
        _log_x(ax)
        ax.set_ylabel("Loss recovered (fraction)")
        ax.set_title(f"{model} · {hook}")
        ax.grid(True, which="both", alpha=0.25)
        _legend(ax, len(series), "Pareto frontier in bold; faded points are dominated")
    fig.suptitle("Sparsity vs fidelity (up and to the left is better)", fontsize=13)
    _save(fig, path)


def plot_shrinkage(sites: dict[tuple[str, str], list[Series]], path: Path) -> None:
    """L0 vs relative reconstruction bias γ; γ < 1 means the SAE shrinks its reconstructions."""
    fig, axes = _figure(len(sites))
    for ax, ((model, hook), series) in zip(axes, sites.items()):
        styles = _style(series)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2, label="γ = 1: no shrinkage")
        for i, s in enumerate(series):
            colour, ls, marker = styles[i]
            pts = _plottable(s, "relative_reconstruction_bias")
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, color=colour, linestyle=ls, marker=marker, linewidth=1.8, markersize=7,
                        label=s.label)
        _log_x(ax)
        ax.set_ylabel("Relative reconstruction bias γ (< 1: shrinkage)")
        ax.set_title(f"{model} · {hook}")
        ax.grid(True, which="both", alpha=0.25)
        ax.text(0.99, 1.0, "no shrinkage ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=9, color="black")
        _legend(ax, len(series) + 1)
    fig.suptitle("Shrinkage: relative reconstruction bias γ = E‖x̂‖² / E[x̂·x]", fontsize=13)
    _save(fig, path)


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _ratio_line(r: dict) -> str:
    head = f"{r['a']} / {r['b']} ({r['model']}, {r['hook']})"
    if r["geomean"] is None:
        return f"{head}: no matched-L0 ratio: {r['reason']}"
    lo, hi = r["overlap"]
    return (f"{head}: L0 ratio at matched loss recovered = {r['geomean']:.3f} (geometric mean of "
            f"{len(r['ratios'])} points over loss recovered {lo:.3f}-{hi:.3f})")


def _markdown(sites: dict[tuple[str, str], list[Series]], ratios: list[dict], where: str, filters: Sequence[str]) -> str:
    lines = ["# gsae report", "",
             f"Evaluations collected from {where}" + (f", filtered by {', '.join(f'`{w}`' for w in filters)}" if filters else "") + ".",
             "L0: mean active features per token. Loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean). "
             "γ: relative reconstruction bias (1 = no shrinkage). KL: KL(clean ‖ spliced) per token.", "",
             "![L0 vs loss recovered](frontier.png)", "", "![shrinkage](shrinkage.png)", ""]
    head = ["series", "λ", "train tokens", "L0", "loss recovered", "Δ loss", "KL", "γ", "NMSE",
            "expl. var.", "dead", "dense", "eval"]
    for (model, hook), series in sites.items():
        lines += [f"## {model} · {hook}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in series:  # already by architecture, then L0
            for r in s.results:
                row = r.row
                cells = [s.label, _f(row["l1_coefficient"]), _fmt_value(row["train_tokens"]) if row["train_tokens"] is not None else "–",
                         _f(row["l0"]), _f(row["loss_recovered"]), _f(row["delta_loss"]), _f(row["kl_div"]),
                         _f(row["relative_reconstruction_bias"]), _f(row["nmse"]), _f(row["explained_variance"]),
                         _f(row["frac_dead"], 3), _f(row["frac_dense"], 3), f"`{Path(row['eval_path']).name}`"]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
        site_ratios = [r for r in ratios if (r["model"], r["hook"]) == (model, hook)]
        lines += ["### L0 ratio at matched loss recovered", "",
                  "The paper's headline (spec §6): how many active features one architecture needs, relative to "
                  "another, for the same loss recovered; log L0 interpolated along each Pareto frontier. "
                  "< 1 means the first needs fewer.", ""]
        if not site_ratios:
            lines += ["Only one architecture here: nothing to compare.", ""]
        for r in site_ratios:
            if r["geomean"] is None:
                lines += [f"- **{r['a']} / {r['b']}**: no ratio: {r['reason']}.", ""]
                continue
            lines += [f"- **{r['a']} / {r['b']}**: **{r['geomean']:.3f}** (geometric mean)", "",
                      "  | loss recovered | L0 " + r["a"] + " | L0 " + r["b"] + " | ratio |", "  |---|---|---|---|"]
            for t, la, lb, q in zip(r["targets"], r["l0_a"], r["l0_b"], r["ratios"]):
                lines.append(f"  | {t:.3f} | {la:.1f} | {lb:.1f} | {q:.3f} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run_report(paths: Sequence[str | Path], out_dir: Path, report_dir: Path, where: Sequence[str]) -> Path:
    results, looked = collect(paths, out_dir)
    if not results:
        raise ConfigError(
            f"No evaluation results were found under {looked}. Make some with "
            "`gsae eval sae=relu sae.l1_coefficient=0.1` (it harvests and trains first), a sweep like "
            "`gsae eval -m sae=relu,gated sae.l1_coefficient=0.05,0.1,0.2`, or `sweeps/frontier.sh`; "
            "or point `gsae report` at the right folder (--out-dir, or eval folders as arguments).")
    kept = filter_results(results, where)
    if not kept:
        present = {k: sorted({str(r.row[c]) for r in results}) for k, c in
                   (("model", "model"), ("hook", "hook"), ("sae", "architecture"))}
        raise ConfigError(
            f"{len(results)} evaluation result(s) were found under {looked}, but none matches "
            f"{' and '.join(f'--where {w}' for w in where)}. Present: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in present.items()) + ".")
    sites = group_series(kept)
    ratios = pairwise_ratios(sites)

    report_dir = Path(report_dir).expanduser()
    report_dir.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(report_dir / "results.csv", _csv_text(kept))
    plot_frontier(sites, report_dir / "frontier.png")
    plot_shrinkage(sites, report_dir / "shrinkage.png")
    artifacts.atomic_write_text(report_dir / "results.md", _markdown(sites, ratios, looked, where))
    n_series = sum(len(s) for s in sites.values())
    notice(f"{len(kept)} evaluation(s) in {n_series} series written to {report_dir}")
    for r in ratios:
        notice(_ratio_line(r))
    return report_dir
