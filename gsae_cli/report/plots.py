"""The report's two figures: L0 against loss recovered (each series' Pareto frontier, with
whiskers, the site's ratios and its mean-ablation reference) and shrinkage (γ centred) against L0."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gsae_cli.core import artifacts
from gsae_cli.report.collect import DENSE_CODE, Series, is_dense, mean_ablation_references, natural_key
from gsae_cli.report.compare import SEED_KEY, but_seed, strip_key
from gsae_cli.report.frontier import finite, pareto_frontier

ARCH_COLOURS = {
    "gated": "tab:blue",
    "relu": "tab:orange",
    "rescale_shift": "tab:green",
    "scaled_relu": "tab:olive",
    "jumprelu": "tab:red",
    "topk": "tab:purple",
    "batchtopk": "tab:brown",
}

_EXTRA_COLOURS = ["tab:pink", "tab:cyan", "tab:gray"]


_STYLES = ["-", "--", ":", "-."]

_MARKERS = ["o", "s", "^", "D", "v", "P"]


GAMMA_CENTRED = "relative_reconstruction_bias_centred"  # the shrinkage plot's y


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
    x_ci: tuple[float, float] | None
    y_ci: tuple[float, float] | None
    diverged: bool = False  # its training diverged (train/divergence.py): crossed out in the plots
    dense: bool = False  # not a sparse code (is_dense): ringed in the plots


def _plottable(s: Series, y_key: str) -> list[_Plotted]:
    pts = [
        _Plotted(
            r.row["l0"], r.row[y_key], r.ci.get("l0"), r.ci.get(y_key), bool(r.row.get("diverged_at_step")), is_dense(r)
        )
        for r in s.results
    ]
    pts = [p for p in pts if finite((p.x, p.y)) and p.x > 0]  # log x: L0 must be positive
    return sorted(pts, key=lambda p: (p.x, p.y))


def _error_bars(ax, pts: list[_Plotted], colour: str, x: bool, alpha: float = 1.0) -> None:
    """95 % interval whiskers: vertical always, horizontal when `x`; only points with an interval
    (artifacts made before eval recorded "ci" have none)."""

    def err(p: _Plotted, ci, value):
        return (max(value - ci[0], 0.0), max(ci[1] - value, 0.0)) if ci and finite(ci) else None

    for axis in ("y", "x") if x else ("y",):
        with_ci = [(p, e) for p in pts if (e := err(p, p.x_ci if axis == "x" else p.y_ci, p.x if axis == "x" else p.y))]
        if not with_ci:
            continue
        xs, ys = [p.x for p, _ in with_ci], [p.y for p, _ in with_ci]
        bars = [[e[0] for _, e in with_ci], [e[1] for _, e in with_ci]]
        ax.errorbar(xs, ys, **{f"{axis}err": bars}, fmt="none", ecolor=colour, elinewidth=1.1, capsize=2.5, alpha=alpha)


def _mark_diverged(ax, pts: Sequence[_Plotted]) -> None:
    """Cross out the points of SAEs whose training diverged, as † does in the table."""
    if pts:
        ax.plot(
            [p.x for p in pts],
            [p.y for p in pts],
            linestyle="none",
            marker="x",
            color="red",
            markersize=12,
            markeredgewidth=2,
            zorder=5,
            label="† training diverged",
        )


def _mark_dense(ax, pts: Sequence[_Plotted]) -> None:
    """Ring the points that are not a sparse code, as ‡ marks them in the table."""
    if pts:
        ax.plot(
            [p.x for p in pts],
            [p.y for p in pts],
            linestyle="none",
            marker="o",
            markersize=15,
            markerfacecolor="none",
            markeredgecolor="0.4",
            markeredgewidth=1.2,
            zorder=4,
            label=f"‡ mean feature density > {DENSE_CODE:.0%}: not a sparse code",
        )


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


def _legend(ax, title: str | None = None):
    return ax.legend(
        title=title,
        fontsize=9,
        title_fontsize=9,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        alignment="left",
    )


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
    site's matched-L0 ratios to the right, under the legend."""
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
            ax.plot(
                [p.x for p in on],
                [p.y for p in on],
                color=colour,
                linestyle=ls,
                marker=marker,
                linewidth=2.2,
                markersize=7,
                label=f"{s.label} ({len(front)} on frontier / {len(pts)})",
            )
            _error_bars(ax, on, colour, x=True)
            if off:
                ax.plot(
                    [p.x for p in off],
                    [p.y for p in off],
                    color=colour,
                    marker=marker,
                    linestyle="none",
                    alpha=0.3,
                    markersize=7,
                )
                _error_bars(ax, off, colour, x=True, alpha=0.3)
        _mark_diverged(ax, diverged)
        _mark_dense(ax, dense)
        _mark_reference(ax, [r.row["loss_recovered_mean_ablation"] for _, r in mean_ablation_references(series)])
        others = {s.label for s in series if id(s) in replicas}  # their ratios are in the seed table
        site_ratios = [
            r
            for r in ratios
            if (r["model"], r["hook"]) == (model, hook) and r["a"] not in others and r["b"] not in others
        ]
        _log_x(ax)
        ax.set_ylabel("Loss recovered (fraction)")
        ax.set_title(f"{model} · {hook}")
        ax.grid(True, which="both", alpha=0.25)
        legend = _legend(ax, "Pareto frontier in bold; faded points are dominated; whiskers: 95 % CI")
        if site_ratios:
            # Hung from the legend's measured bottom: anchored to the axes' foot, seven series'
            # 21 ratios ran up into the legend.
            bottom = legend.get_window_extent(fig.canvas.get_renderer()).transformed(ax.transAxes.inverted()).y0
            ax.text(
                1.03,
                bottom - 0.03,
                "L0 ratio at matched loss recovered (95 % CI)\n" + "\n".join(_ratio_short(r) for r in site_ratios),
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
            )
    fig.suptitle("Sparsity vs fidelity (up and to the left is better)", fontsize=13)
    _save(fig, path)


def _mark_reference(ax, levels: Sequence[float]) -> None:
    """The mean-ablation reference: a line where it falls inside the SAEs' range, else a note
    (at the residual stream it lies far below them, and a line there would squash the frontier)."""
    lo, hi = ax.get_ylim()
    for k, y in enumerate(levels):
        if lo <= y <= hi:
            ax.axhline(
                y,
                color="0.45",
                linestyle=(0, (4, 3)),
                linewidth=1,
                label="mean activation alone (x̂ = b_dec)" if k == 0 else None,
            )
        else:
            ax.text(
                0.01,
                0.01 + 0.05 * k,
                f"mean activation alone (x̂ = b_dec): loss recovered {y:.3f}, off the axis",
                transform=ax.transAxes,
                fontsize=8,
                color="0.35",
            )


def _styles_but_replicas(series: Sequence[Series], replicas: dict[int, int]) -> dict[int, tuple]:
    """_style over the series that are not further seeds of another (`replicas`, from
    _seed_replicas), keyed by index in `series`."""
    own = [i for i, s in enumerate(series) if id(s) not in replicas]
    return dict(zip(own, _style([series[i] for i in own]).values()))


def _plot_replica(ax, s: Series, pts: list[_Plotted], style: tuple, legended: set, suffix: str = "") -> None:
    """A further training seed: hollow points in its first seed's colour and marker, one legend
    entry for all of an architecture's other seeds."""
    name = f"{strip_key(s.label, SEED_KEY)}, other seeds{suffix}"
    ax.plot(
        [p.x for p in pts],
        [p.y for p in pts],
        color=style[0],
        marker=style[2],
        linestyle="none",
        markerfacecolor="none",
        alpha=0.7,
        markersize=7,
        label=name if name not in legended else "_nolegend_",
    )
    legended.add(name)


def _seed_replicas(series: Sequence[Series]) -> dict[int, int]:
    """id(series) -> index of the series it repeats with another train.seed (the lowest seed of a
    group that is otherwise the same): plotted as points around that series, not as their own line."""
    first: dict[tuple, int] = {}
    for i, s in sorted(enumerate(series), key=lambda x: natural_key(repr(dict(x[1].extras).get(SEED_KEY)))):
        if SEED_KEY not in dict(s.extras):
            continue
        first.setdefault((s.architecture, but_seed(s)), i)
    out = {}
    for i, s in enumerate(series):
        if SEED_KEY in dict(s.extras):
            j = first[(s.architecture, but_seed(s))]
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
            ax.plot(
                [p.x for p in pts],
                [p.y for p in pts],
                color=colour,
                linestyle=ls,
                marker=marker,
                linewidth=1.8,
                markersize=7,
                label=s.label + raw,
            )
            _error_bars(ax, pts, colour, x=False)
        _mark_diverged(ax, diverged)
        _log_x(ax)
        ax.set_ylabel("γ centred (< 1: shrinkage)")
        ax.set_title(f"{model} · {hook}")
        ax.grid(True, which="both", alpha=0.25)
        ax.text(
            0.99,
            1.0,
            "no shrinkage ",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=9,
            color="black",
        )
        _legend(ax, "whiskers: 95 % CI")
    fig.suptitle(
        "Shrinkage: relative reconstruction bias about the means, γ centred = E‖x̂ − E x̂‖² / E[(x̂ − E x̂)·(x − E x)]",
        fontsize=12,
    )
    _save(fig, path)
