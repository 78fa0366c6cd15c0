"""Every architecture at a site against Gated at the same loss-recovered targets: the L0 ratio
gated / X of each equal-width series X to the plain gated series, all at the targets every one of
their frontiers covers (docs/method.md §4.4), each with its paired 95 % interval and a verdict
by the report's equivalence margin. Written where a site has three architectures or more (with
two, `ratios.json` already says it)."""

from __future__ import annotations

from typing import Any

from gsae_cli.report.collect import WIDTH_KEY
from gsae_cli.report.compare import at_common_targets

REFERENCE = "gated"


def verdict(interval: Any, margin: float) -> str:
    """Who needs fewer active features at the same loss recovered, judged by the interval of
    gated / X against 1 ± margin; "not settled" when it straddles a bound or there is none."""
    if interval is None:
        return "not settled"
    lo, hi = interval
    if hi < 1 - margin:
        return "gated needs fewer"
    if lo > 1 + margin:
        return "gated needs more"
    if 1 - margin <= lo and hi <= 1 + margin:
        return f"equal within ±{margin:.0%}"
    return "not settled"


def _plain(series: Any) -> bool:
    return all(k == WIDTH_KEY for k, _ in series.extras)


def against_reference(
    ratios: list[dict], margin: float = 0.05, level: float = 0.95, n_samples: int = 0, seed: int = 0
) -> list[dict]:
    """Per site with three or more architectures: gated / X for every other plain equal-width
    series X (pairs from `pairwise_ratios`, before their series are dropped), at common targets."""
    by_site: dict[tuple[str, str], list[dict]] = {}
    for r in ratios:
        a, b = r["_series"]
        gated_vs_other = a.architecture == REFERENCE and b.architecture != REFERENCE
        if gated_vs_other and _plain(a) and _plain(b) and r["footing"] == "equal width":
            by_site.setdefault((r["model"], r["hook"]), []).append(r)
    out = []
    cache: dict = {}
    for (model, hook), rs in sorted(by_site.items()):
        if len({r["_series"][0].label for r in rs}) != 1 or len(rs) < 2:
            continue  # one gated series, and at least two others to set beside each other
        res = at_common_targets([r["_series"] for r in rs], n_samples, seed, cache, level)
        rows = [
            {"b": r["b"], "ratio": point, "interval": interval, "verdict": verdict(interval, margin)}
            for r, point, interval in zip(rs, res["ratios"], res["intervals"])
        ]
        out.append(
            {
                "model": model,
                "hook": hook,
                "reference": rs[0]["a"],
                "span": res["span"],
                "margin": margin,
                "n_resamples": res["n_resamples"],
                "n_valid": res["n_valid"],
                "interval_reason": res["interval_reason"],
                "rows": rows,
            }
        )
    return out
