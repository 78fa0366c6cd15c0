"""Every architecture at a site against Gated at the same loss-recovered targets: the L0 ratio
gated / X of each equal-width series X to the plain gated series, all at the targets every one of
their frontiers covers (docs/method.md §4.4), each with its paired 95 % interval and a verdict
by the report's equivalence margin. Written where a site has three architectures or more (with
two, `ratios.json` already says it). Where the site was trained at several `train.seed`, one table
per seed, and the run-to-run spread of each ratio over the seeds at the targets every seed's
frontiers cover (Student t on log ratio, as `seed_spreads`)."""

from __future__ import annotations

from typing import Any

from gsae_cli.report.collect import WIDTH_KEY
from gsae_cli.report.compare import NO_RANGE, SEED_KEY, at_common_targets, spreads_over_seeds, strip_key
from gsae_cli.report.frontier import why_no_common_range

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
    """Nothing distinguishes the series but its width and its training seed."""
    return all(k in (WIDTH_KEY, SEED_KEY) for k, _ in series.extras)


def _seed(series: Any) -> Any:
    return dict(series.extras).get(SEED_KEY)


def against_reference(
    ratios: list[dict], margin: float = 0.05, level: float = 0.95, n_samples: int = 0, seed: int = 0
) -> list[dict]:
    """Per site with three or more architectures: gated / X for every other plain equal-width
    series X (pairs from `pairwise_ratios`, before their series are dropped), at common targets:
    one table per training seed where there are several (gated and X of the same seed), then,
    per such site, the spread of each ratio over the seeds (`_over_seeds`)."""
    by_site: dict[tuple[str, str, Any], list[dict]] = {}
    for r in ratios:
        a, b = r["_series"]
        gated_vs_other = a.architecture == REFERENCE and b.architecture != REFERENCE
        if gated_vs_other and _plain(a) and _plain(b) and r["footing"] == "equal width" and _seed(a) == _seed(b):
            by_site.setdefault((r["model"], r["hook"], _seed(a)), []).append(r)
    out = []
    cache: dict = {}
    for (model, hook, train_seed), rs in sorted(by_site.items(), key=lambda kv: (kv[0][:2], kv[0][2] or 0)):
        if len({r["_series"][0].label for r in rs}) != 1 or len(rs) < 2:
            continue  # one gated series, and at least two others to set beside each other
        res = at_common_targets([r["_series"] for r in rs], n_samples, seed, cache, level)
        if res["span"] is None:
            named = [(strip_key(rs[0]["a"], SEED_KEY), rs[0]["_series"][0].points)]
            named += [(strip_key(r["b"], SEED_KEY), r["_series"][1].points) for r in rs]
            res["interval_reason"] = f"{NO_RANGE}: {why_no_common_range(named)}"
        rows = [
            {"b": r["b"], "ratio": point, "interval": interval, "verdict": verdict(interval, margin)}
            for r, point, interval in zip(rs, res["ratios"], res["intervals"])
        ]
        out.append(
            {
                "model": model,
                "hook": hook,
                "reference": rs[0]["a"],
                **({} if train_seed is None else {"seed": train_seed}),
                "span": res["span"],
                "margin": margin,
                "n_resamples": res["n_resamples"],
                "n_valid": res["n_valid"],
                "interval_reason": res["interval_reason"],
                "rows": rows,
                "_pairs": [r["_series"] for r in rs],
            }
        )
    out += _over_seeds(out, margin, level)
    return [{k: v for k, v in e.items() if not k.startswith("_")} for e in out]


def _over_seeds(tables: list[dict], margin: float, level: float) -> list[dict]:
    """Per site with tables at two seeds or more: each X's gated / X at every seed, at the targets
    every seed's frontiers cover, and the spread of those ratios over the seeds with its verdict by
    the margin. Only the X every seed ran are in it."""
    by_site: dict[tuple[str, str], list[dict]] = {}
    for t in tables:
        if "seed" in t:
            by_site.setdefault((t["model"], t["hook"]), []).append(t)
    out = []
    for (model, hook), ts in by_site.items():
        if len(ts) < 2:
            continue
        per_seed = [{strip_key(r["b"], SEED_KEY): pair for r, pair in zip(t["rows"], t["_pairs"])} for t in ts]
        shared = [b for b in per_seed[0] if all(b in p for p in per_seed[1:])]
        entry: dict[str, Any] = {
            "model": model,
            "hook": hook,
            "reference": strip_key(ts[0]["reference"], SEED_KEY),
            "seeds": [t["seed"] for t in ts],
            "span": None,
            "margin": margin,
            "rows": [],
        }
        res = spreads_over_seeds([[p[b] for p in per_seed] for b in shared], level)
        if not res["summaries"]:
            named = [(f"{entry['reference']} at seed {t['seed']}", t["_pairs"][0][0].points) for t in ts]
            named += [(f"{b} at seed {t['seed']}", p[b][1].points) for b in shared for t, p in zip(ts, per_seed)]
            out.append(entry | {"reason": f"{NO_RANGE}: {why_no_common_range(named)}"})
            continue
        n = len(ts)
        rows = [
            {"b": b, "ratios": res["ratios"][i * n : (i + 1) * n], **s, "verdict": verdict(s["interval"], margin)}
            for i, (b, s) in enumerate(zip(shared, res["summaries"]))
        ]
        out.append(entry | {"span": res["span"], "reason": None, "rows": rows})
    return out
