"""Pareto frontiers of (L0, loss recovered) and the L0 ratio between two of them at matched loss
recovered (docs/method.md §4): pure functions of point lists, including the common-target
comparison of several pairs and the equivalence verdict of the convergence check (§4.1-4.2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Point = tuple[float, float]


def finite(p: Point) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)


def pareto_frontier(points: Sequence[Point]) -> list[int]:
    """Indices of the points (l0, loss_recovered) on the Pareto frontier, by increasing L0.
    A point is on it unless another has L0 <= and loss recovered >=, one of them strictly
    (lower L0 is sparser, higher loss recovered more faithful). Non-finite points never are."""
    keep = []
    for i, (l0, lr) in enumerate(points):
        if not finite((l0, lr)):
            continue
        dominated = any(
            finite(q) and q[0] <= l0 and q[1] >= lr and (q[0] < l0 or q[1] > lr) for j, q in enumerate(points) if j != i
        )
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], points[i][1]))


def _frontier(points: Sequence[Point]) -> list[Point]:
    """The frontier of the points with L0 > 0 (log L0 is what we interpolate: an L0-0 point is
    left out before the frontier is taken, so it cannot knock out the points it dominates), by
    increasing L0, which on a frontier is also increasing loss recovered."""
    positive = [p for p in points if finite(p) and p[0] > 0]
    return [positive[i] for i in pareto_frontier(positive)]


def l0_at_loss_recovered(frontier_points: Sequence[Point], target: float) -> float | None:
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


def matched_l0_ratios(
    series_a: Sequence[Point], series_b: Sequence[Point], n_targets: int = 5, span: tuple[float, float] | None = None
) -> dict:
    """L0(a) / L0(b) at matched loss recovered (the paper's headline: about 0.5 for gated vs
    relu). Evaluated at `n_targets` evenly spaced loss-recovered values across `span`, by default
    the overlap of the two frontiers' ranges (pass common_range(...) to compare several pairs at
    the same targets); `geomean` summarises them. When there is no overlap, `geomean` is None and
    `reason` says why."""
    fa, fb = _frontier(series_a), _frontier(series_b)
    out: dict[str, Any] = {
        "targets": [],
        "l0_a": [],
        "l0_b": [],
        "ratios": [],
        "geomean": None,
        "overlap": None,
        "reason": None,
    }
    if not fa or not fb:
        out["reason"] = f"no usable points in {'the first' if not fa else 'the second'} series"
        return out
    lo, hi = span if span is not None else (max(fa[0][1], fb[0][1]), min(fa[-1][1], fb[-1][1]))
    if lo > hi:
        out["reason"] = (
            f"the loss-recovered ranges do not overlap ({fa[0][1]:.3f}-{fa[-1][1]:.3f} vs "
            f"{fb[0][1]:.3f}-{fb[-1][1]:.3f}); add coefficients that extend one towards the other"
        )
        return out
    targets = (
        [lo]
        if hi == lo or n_targets < 2
        else [lo + (hi - lo) * k / (n_targets - 1) for k in range(n_targets - 1)] + [hi]
    )
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


def common_range(series: Sequence[Sequence[Point]]) -> tuple[float, float] | None:
    """The loss-recovered range that every series' frontier covers (the intersection of their
    ranges), or None when they share none or a series has no usable point."""
    fronts = [_frontier(s) for s in series]
    if not fronts or not all(fronts):
        return None
    lo, hi = max(f[0][1] for f in fronts), min(f[-1][1] for f in fronts)
    return (lo, hi) if lo <= hi else None


def why_no_common_range(named: Sequence[tuple[str, Sequence[Point]]]) -> str:
    """Why common_range of the named series is None, in words: the series with no usable point,
    or the frontier that ends lowest in loss recovered and the one that begins highest (the two
    to extend towards each other), with their ranges."""
    fronts = [(name, _frontier(points)) for name, points in named]
    empty = [name for name, f in fronts if not f]
    if empty:
        return f"{', '.join(empty)} {'has' if len(empty) == 1 else 'have'} no usable point"
    (low, f_low), (high, f_high) = min(fronts, key=lambda nf: nf[1][-1][1]), max(fronts, key=lambda nf: nf[1][0][1])
    return (
        f"{low}'s frontier ends at loss recovered {f_low[-1][1]:.3f} ({f_low[0][1]:.3f}-{f_low[-1][1]:.3f}), "
        f"below where {high}'s begins ({f_high[0][1]:.3f}-{f_high[-1][1]:.3f})"
    )


def ratios_at_common_targets(
    pairs: Sequence[tuple[Sequence[Point], Sequence[Point]]], n_targets: int = 5
) -> tuple[tuple[float, float] | None, list[float | None]]:
    """(span, geomeans): each pair's matched-L0 ratio at the same loss-recovered targets, spread
    over the range every frontier of every pair covers (docs/method.md §4.1). Ratios of lengths or
    seeds are only comparable this way: the ratio varies along the frontier. (None, [None, ...])
    when the frontiers share no range."""
    span = common_range([s for pair in pairs for s in pair])
    if span is None:
        return None, [None] * len(pairs)
    return span, [matched_l0_ratios(a, b, n_targets, span)["geomean"] for a, b in pairs]


def equivalence_verdict(interval: Sequence[float] | None, margin: float) -> str:
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
