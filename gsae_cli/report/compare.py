"""The comparisons a report makes: every pair of architectures at a site (with its footing:
equal width or equal compute, and over the sparse part), each ratio at T training tokens against
longer runs (the convergence check), and the spread of a ratio over training seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from gsae_cli.errors import ArtifactError
from gsae_cli.report.bootstrap import (
    WINDOW_FILE,
    WindowData,
    bootstrap_common_targets,
    bootstrap_ratio,
    load_window_data,
)
from gsae_cli.report.collect import WIDTH_KEY, Result, Series, arch_rank, is_dense, num
from gsae_cli.report.frontier import (
    equivalence_verdict,
    matched_l0_ratios,
    ratios_at_common_targets,
    why_no_common_range,
)


def _comparable(a: Series, b: Series) -> bool:
    """Same value for every distinguishing key both have: gated(tie_weights=false) still
    compares with relu, which has no such switch; a 4M-token series does not with a 2M one.
    The learning rate and the width never block a comparison; the eval set blocks one only where
    it splits series."""
    ea, eb = dict(a.extras), dict(b.extras)
    return all(repr(ea[k]) == repr(eb[k]) for k in (ea.keys() & eb.keys()) - {"lr", WIDTH_KEY})


def _width(s: Series) -> float | None:
    return next((num(r.series_keys.get(WIDTH_KEY)) for r in s.results if WIDTH_KEY in r.series_keys), None)


def compute_footing(a: Series, b: Series) -> str:
    """How the pair's widths compare: "equal width", "equal compute" (the paper's §4.1: a gated
    `a` against a baseline `b` with 1.5x its features, which costs about the same to train),
    "other widths", or "unknown widths" (an evaluation that does not record its width)."""
    wa, wb = _width(a), _width(b)
    if wa is None or wb is None:
        return "unknown widths"
    if wa == wb:
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
                same = want is not None and (
                    math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(got) and math.isnan(want))
                )
                if not same:
                    raise ArtifactError(
                        f"{d.name}/{WINDOW_FILE} gives {key} {got:.6g} but metrics.json says "
                        f"{want}; the two files are from different runs"
                    )
            cache[d] = data
        except ArtifactError as e:
            cache[d] = e
    return cache[d]


def _usable_windows(results: Sequence[Result], n_samples: int, cache: dict) -> tuple[list | None, str | None]:
    """(every result's per-window sums, None), or (None, why no interval can be drawn from them)."""
    if n_samples <= 0:
        return None, "eval.bootstrap_samples=0"
    data = [_window_data(r, cache) for r in results]
    bad = [d for d in data if isinstance(d, ArtifactError)]
    if bad:
        return None, (
            f"{len(bad)} of {len(data)} evaluations have no usable per-window sums ({bad[0]}); "
            "re-evaluate them with `gsae eval --force` and their overrides"
        )
    return data, None


def ratio_with_interval(a: Series, b: Series, n_samples: int, seed: int, cache: dict | None = None) -> dict:
    """matched_l0_ratios of two series' (metrics.json) points, plus bootstrap_ratio's interval
    when every SAE of both has usable per-window sums; `interval_reason` says why not otherwise."""
    out = matched_l0_ratios(a.points, b.points)
    out.update(
        {
            "interval": None,
            "n_resamples": 0,
            "n_valid": 0,
            "paired": None,
            "eval_sets": [],
            "n_windows": [],
            "level": 0.95,
            "interval_reason": None,
        }
    )
    if out["geomean"] is None:
        out["interval_reason"] = "no point estimate"
        return out
    data, out["interval_reason"] = _usable_windows(a.results + b.results, n_samples, {} if cache is None else cache)
    if data is None:
        return out
    boot = bootstrap_ratio(data[: len(a.results)], data[len(a.results) :], n_samples, seed)
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
            if arch_rank(b.architecture) < arch_rank(a.architecture):
                a, b = b, a
            entry = {
                "model": model,
                "hook": hook,
                "a": a.label,
                "b": b.label,
                "footing": compute_footing(a, b),
                "widths": [_width(a), _width(b)],
                "_series": (a, b),
                **ratio_with_interval(a, b, n_samples, seed, cache),
                "sparse": None,
            }
            dense = sum(is_dense(r) for r in a.results + b.results)
            if dense:  # the same ratio over the sparse codes alone
                part = ratio_with_interval(_sparse_part(a), _sparse_part(b), n_samples, seed, cache)
                entry["sparse"] = {k: part[k] for k in ("geomean", "interval", "overlap", "reason", "interval_reason")}
                entry["sparse"]["n_dense_left_out"] = dense
            out.append(entry)
    return out


TOKENS_KEY = "train.n_tokens"

HARVEST_KEY = "harvest.n_tokens"


NO_RANGE = "the frontiers share no loss-recovered range"
LENGTH_KEYS = (TOKENS_KEY, HARVEST_KEY)  # what a longer run changes: its tokens, and the store it may need


def at_common_targets(
    pairs: Sequence[tuple[Series, Series]], n_samples: int, seed: int, cache: dict, level: float
) -> dict:
    """ratios_at_common_targets of the pairs' (metrics.json) points, with each ratio's interval and
    the per-resample ratios (`samples`) of bootstrap_common_targets when every SAE has usable
    per-window sums; `interval_reason` says why there is no interval otherwise."""
    import torch

    from gsae_cli.evaluate import metrics

    span, point = ratios_at_common_targets([(a.points, b.points) for a, b in pairs])
    out: dict[str, Any] = {
        "span": span,
        "ratios": point,
        "intervals": [None] * len(pairs),
        "samples": None,
        "n_resamples": 0,
        "n_valid": 0,
        "paired": None,
        "eval_sets": [],
        "n_windows": [],
        "interval_reason": None,
    }
    if span is None or None in point:
        out["interval_reason"] = NO_RANGE
        return out
    series = [s for pair in pairs for s in pair]
    flat, out["interval_reason"] = _usable_windows([r for s in series for r in s.results], n_samples, cache)
    if flat is None:
        return out
    it = iter(flat)
    data = [[next(it) for _ in s.results] for s in series]
    boot = bootstrap_common_targets(list(zip(data[::2], data[1::2])), n_samples, seed)
    valid = [x for x in boot["samples"] if x is not None]
    out.update(
        samples=boot["samples"],
        n_resamples=n_samples,
        n_valid=len(valid),
        paired=boot["paired"],
        eval_sets=boot["eval_sets"],
        n_windows=boot["n_windows"],
    )
    if valid:
        out["intervals"] = [
            metrics.percentile_interval(torch.tensor([v[i] for v in valid], dtype=torch.float64), level)
            for i in range(len(pairs))
        ]
    else:
        out["interval_reason"] = f"no resample out of {n_samples} left the frontiers a common range"
    return out


def _change(r1: dict, r2: dict, margin: float, level: float, n_samples: int, seed: int, cache: dict) -> dict:
    """ratio(r2) against ratio(r1) at the targets all four frontiers cover: `change` = ratio(r2) /
    ratio(r1) with a paired bootstrap interval (the same window resamples give both ratios) and
    the equivalence verdict at `margin` (docs/method.md §4.2). When more than 1 - `level` of the
    resamples lose the common range, the interval is conditional on it holding: "undetermined"."""
    import torch

    from gsae_cli.evaluate import metrics

    res = at_common_targets([r1["_series"], r2["_series"]], n_samples, seed, cache, level)
    (g1, g2), valid = res["ratios"], [x for x in res["samples"] or [] if x is not None]
    change = g2 / g1 if g1 and g2 else None
    interval = (
        metrics.percentile_interval(torch.tensor([y / x for x, y in valid], dtype=torch.float64), level)
        if valid
        else None
    )
    if res["span"] is None:
        verdict, why = "not comparable", "the four frontiers share no loss-recovered range"
    elif interval is None:
        verdict, why = "undetermined", f"no interval: {res['interval_reason']}"
    elif res["n_valid"] < level * res["n_resamples"]:
        lost = res["n_resamples"] - res["n_valid"]
        verdict, why = "undetermined", f"the common range vanished in {lost:,} of {res['n_resamples']:,} resamples"
    else:
        verdict, why = equivalence_verdict(interval, margin), None
    return {
        "model": r1["model"],
        "hook": r1["hook"],
        "a": r1["a"],
        "b": r1["b"],
        "span": res["span"],
        "ratio": [g1, g2],
        "interval": res["intervals"],
        "change": change,
        "change_interval": interval,
        "margin": margin,
        "verdict": verdict,
        "verdict_reason": why,
        "level": level,
        "n_resamples": res["n_resamples"],
        "n_valid": res["n_valid"],
        "paired": res["paired"],
    }


def length_checks(
    ratios: list[dict], margin: float = 0.05, level: float = 0.95, n_samples: int = 0, seed: int = 0
) -> list[dict]:
    """The convergence check (docs/method.md §4.2): for every ratio at T training tokens whose two
    series also exist at a longer T' (all else equal but the store's size, which a longer run may
    need), ratio(T') against ratio(T) by `_change`. The criterion is a doubling (`factor` 2); other
    lengths are compared too, since the data may not allow a doubling of the longest runs."""

    def key(r: dict) -> tuple:
        a, b = r["_series"]
        strip = lambda s: tuple((k, repr(v)) for k, v in s.extras if k not in LENGTH_KEYS)  # noqa: E731
        return (r["model"], r["hook"], a.architecture, b.architecture, strip(a), strip(b))

    out = []
    cache: dict = {}
    for r1 in ratios:
        t = _int_or_none(_shared(r1, TOKENS_KEY))
        if t is None:
            continue
        for r2 in ratios:
            t2 = _int_or_none(_shared(r2, TOKENS_KEY))
            if key(r2) != key(r1) or t2 is None or t2 <= t:
                continue
            c = _change(r1, r2, margin, level, n_samples, seed, cache)
            c.update(
                tokens=[t, t2],
                factor=t2 / t,
                tests_criterion=math.isclose(t2 / t, 2.0),
                stores=[_int_or_none(_shared(r1, HARVEST_KEY)), _int_or_none(_shared(r2, HARVEST_KEY))],
            )
            out.append(c)
    order = ("model", "hook", "a", "b", "tokens", "factor", "tests_criterion", "stores", "span")
    out = [{k: c[k] for k in order} | {k: v for k, v in c.items() if k not in order} for c in out]
    return sorted(out, key=lambda c: (c["model"], c["hook"], strip_lengths(c["a"]), strip_lengths(c["b"]), c["tokens"]))


def _int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


def _shared(r: dict, k: str) -> Any:
    """The value of `k` both series of a ratio have, where it distinguishes series (else None)."""
    a, b = r["_series"]
    va, vb = dict(a.extras).get(k), dict(b.extras).get(k)
    return va if va is not None and va == vb else None


def _setting_value(r: dict, k: str) -> Any:
    """The one value of setting `k` in a ratio's series that have it (an architecture's own
    setting, such as `sae.tie_weights`, only its series have), or None when they disagree."""
    values = {repr(v): v for s in r["_series"] if (v := dict(s.extras).get(k)) is not None}
    return next(iter(values.values())) if len(values) == 1 else None


def _before(v1: Any, v2: Any) -> bool:
    """An order on a setting's values, so each pair of values is checked once, smaller first."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (v1, v2))
    return v1 < v2 if numbers else repr(v1) < repr(v2)


# Settings with checks of their own (lengths, seeds) or that set the footing (width): the rest,
# such as the shuffle window, get a setting check when series differ in them.
_NOT_SETTINGS = {TOKENS_KEY, HARVEST_KEY, "train.seed", WIDTH_KEY}


def setting_checks(
    ratios: list[dict], margin: float = 0.05, level: float = 0.95, n_samples: int = 0, seed: int = 0
) -> list[dict]:
    """Does a setting move the ratio? For every setting that distinguishes series at a site (other
    than lengths, seeds and width; e.g. `train.shuffle_buffer_chunks`, or a Gated SAE's ablation
    `sae.tie_weights`, which only gated series have), each ratio whose series share one value of it
    against the same pair at another value, all else equal, by `_change`:
    ratio(value 2) / ratio(value 1), judged by the same margin as convergence."""
    out = []
    cache: dict = {}
    for r1 in ratios:
        a1, b1 = r1["_series"]
        for r2 in ratios:
            a2, b2 = r2["_series"]
            if (r1["model"], r1["hook"], a1.architecture, b1.architecture) != (
                r2["model"],
                r2["hook"],
                a2.architecture,
                b2.architecture,
            ):
                continue
            ea1, eb1, ea2, eb2 = (dict(s.extras) for s in (a1, b1, a2, b2))
            differ = {
                k
                for k in set(ea1) | set(eb1) | set(ea2) | set(eb2)
                if (ea1.get(k), eb1.get(k)) != (ea2.get(k), eb2.get(k))
            }
            if len(differ) != 1:
                continue
            (k,) = differ
            v1, v2 = _setting_value(r1, k), _setting_value(r2, k)
            if k in _NOT_SETTINGS or v1 is None or v2 is None or not _before(v1, v2):
                continue
            out.append({"setting": k, "values": [v1, v2]} | _change(r1, r2, margin, level, n_samples, seed, cache))
    return sorted(out, key=lambda c: (c["model"], c["hook"], c["setting"], c["a"], c["b"], repr(c["values"])))


SEED_KEY = "train.seed"


def but_seed(s: Series) -> tuple:
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
    return {
        "geomean": math.exp(m),
        "sd_log": sd,
        "n": n,
        "t": q,
        "interval": band(1 / math.sqrt(n)),
        "prediction": band(math.sqrt(1 + 1 / n)),
        "level": level,
    }


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
        groups.setdefault((r["model"], r["hook"], a.architecture, b.architecture, but_seed(a), but_seed(b)), []).append(
            r
        )
    out = []
    cache: dict = {}
    for rs in groups.values():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: dict(r["_series"][0].extras)[SEED_KEY])
        seed_of = [dict(r["_series"][0].extras)[SEED_KEY] for r in rs]
        # A seed without a ratio is named, not silently left out: it may be the informative extreme.
        dropped = [
            {"seed": s, "reason": r.get("reason") or "no ratio"} for s, r in zip(seed_of, rs) if r["geomean"] is None
        ]
        usable = [(s, r) for s, r in zip(seed_of, rs) if r["geomean"] is not None]
        first = rs[0]
        entry = {
            "model": first["model"],
            "hook": first["hook"],
            "a": strip_key(first["a"], SEED_KEY),
            "b": strip_key(first["b"], SEED_KEY),
            "tokens": dict(first["_series"][0].extras).get(TOKENS_KEY),
            "span": None,
            "seeds": [s for s, _ in usable],
            "dropped": dropped,
            "reason": None,
        }
        if len(usable) < 2:
            out.append(entry | {"reason": "fewer than two seeds give a ratio"})
            continue
        res = spreads_over_seeds([[r["_series"] for _, r in usable]], level, n_samples, seed, cache)
        if not res["summaries"]:
            a, b = first["_series"]
            names = (a.architecture, b.architecture) if a.architecture != b.architecture else (entry["a"], entry["b"])
            named = [(f"{n} at seed {s}", x.points) for s, r in usable for n, x in zip(names, r["_series"])]
            out.append(
                entry | {"reason": f"the seeds' frontiers share no loss-recovered range: {why_no_common_range(named)}"}
            )
            continue
        out.append(
            entry
            | {
                "span": res["span"],
                "ratios": res["ratios"],
                "windows_interval": res["intervals"],
                "n_resamples": res["n_resamples"],
                "n_valid": res["n_valid"],
                **res["summaries"][0],
            }
        )
    return out


def spreads_over_seeds(
    groups: Sequence[Sequence[tuple[Series, Series]]],
    level: float = 0.95,
    n_samples: int = 0,
    seed: int = 0,
    cache: dict | None = None,
) -> dict:
    """at_common_targets of every group's pairs together (each group one pair per training seed,
    the seeds in the same order in every group), so all share one set of targets, and per group
    seed_summary of its seeds' ratios: `summaries`, in group order, empty when the frontiers share
    no range."""
    res = at_common_targets([p for g in groups for p in g], n_samples, seed, {} if cache is None else cache, level)
    if res["span"] is None or None in res["ratios"]:
        return res | {"summaries": []}
    it = iter(res["ratios"])
    return res | {"summaries": [seed_summary([next(it) for _ in g], level) for g in groups]}


def strip_key(label: str, key: str) -> str:
    return ", ".join(p for p in label.split(", ") if not p.startswith(key + "="))


def strip_tokens(label: str) -> str:
    return strip_key(label, TOKENS_KEY)


def strip_lengths(label: str) -> str:
    """A check's pair label without the lengths it compares (train tokens, store size)."""
    for key in LENGTH_KEYS:
        label = strip_key(label, key)
    return label
