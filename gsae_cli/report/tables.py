"""The report's text: results.csv, the markdown tables and paragraphs of results.md, the lines
printed on stderr, and the JSON of ratios, checks and seeds."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsae_cli.report.collect import (
    COLUMNS,
    DENSE_CODE,
    Result,
    Series,
    arch_rank,
    fmt_value,
    is_dense,
    mean_ablation_references,
    natural_key,
)
from gsae_cli.report.compare import SEED_KEY, strip_key, strip_lengths, strip_tokens


def result_sort_key(r: Result) -> tuple:
    return (
        natural_key(str(r.row["model"])),
        natural_key(str(r.row["hook"])),
        arch_rank(str(r.row["architecture"])),
        r.row["l0"] or 0.0,
    )


def csv_text(results: list[Result], report_dir: Path) -> str:
    """results.csv; eval_path relative to the report folder, so that no machine's layout is in it."""
    columns = list(COLUMNS)
    if any(r.row.get("k") is not None for r in results):  # a fixed-k architecture: its k beside λ
        columns.insert(columns.index("l1_coefficient") + 1, "k")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in sorted(results, key=result_sort_key):
        row = r.row | {"eval_path": os.path.relpath(Path(r.row["eval_path"]).resolve(), Path(report_dir).resolve())}
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buf.getvalue()


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
TABLE = [
    ("L0", "l0", 4),
    ("L0 gate", "l0_gate", 4),
    ("loss recovered", "loss_recovered", 4),
    ("Δ loss", "delta_loss", 3),
    ("KL", "kl_div", 3),
    ("γ", "relative_reconstruction_bias", 4),
    ("γ centred", "relative_reconstruction_bias_centred", 4),
    ("NMSE", "nmse", 3),
    ("expl. var.", "explained_variance", 3),
    ("dead", "frac_dead", 3),
    ("dense", "frac_dense", 3),
    ("pass-through", "frac_passthrough", 3),
]


def sparsity_setting(row: dict) -> str:
    """What sets an SAE's sparsity: its λ, or "k 32" for a fixed-k architecture."""
    return f"k {row['k']:g}" if row.get("k") is not None else _f(row["l1_coefficient"])


def sparsity_header(results: Sequence[Result]) -> str:
    return "λ / k" if any(r.row.get("k") is not None for r in results) else "λ"


def _cells(s: Series, r: Result) -> list[str]:
    row = r.row
    return [
        s.label,
        sparsity_setting(row),
        fmt_value(row["train_tokens"]) if row["train_tokens"] is not None else "–",
    ] + [_fci(r, key, d) for _, key, d in TABLE]


def setting_words(row: dict) -> str:
    """ "λ 0.1" or "k 32", for sentences."""
    return sparsity_setting(row) if row.get("k") is not None else f"λ {fmt_value(row['l1_coefficient'])}"


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
    ci = (
        f", 95 % CI **{sp['interval'][0]:.3f}–{sp['interval'][1]:.3f}**"
        if sp["interval"]
        else f"; no interval: {sp['interval_reason']}"
    )
    return [head + f"**{sp['geomean']:.3f}** over loss recovered {lo:.3f}–{hi:.3f}{ci}.", ""]


def _footing_words(r: dict) -> str:
    wa, wb = r.get("widths") or (None, None)
    if r.get("footing") == "equal compute":
        return f"equal compute ({r['b'].split(',')[0]} {wb:g}x, 1.5x the gated {wa:g}x: the paper's footing)"
    if r.get("footing") == "other widths":
        return f"widths {wa:g}x / {wb:g}x"
    if r.get("footing") == "unknown widths":
        return "widths not recorded"
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
        how = (
            f"UNPAIRED bootstrap: {why}; each eval set was resampled on its own, so the interval is wider "
            "than a paired one"
        )
    valid = (
        f"{r['n_resamples']:,} resamples"
        if r["n_valid"] == r["n_resamples"]
        else f"{r['n_resamples']:,} resamples, of which the {r['n_valid']:,} whose frontiers still overlap "
        "give the interval"
    )
    return f"{how}; {valid}"


def ratio_line(r: dict) -> str:
    head = f"{r['a']} / {r['b']} ({r['model']}, {r['hook']})"
    if r["geomean"] is None:
        return f"{head}: no matched-L0 ratio: {r['reason']}"
    lo, hi = r["overlap"]
    text = (
        f"{head}: L0 ratio at matched loss recovered = {r['geomean']:.3f} (geometric mean of "
        f"{len(r['ratios'])} points over loss recovered {lo:.3f}-{hi:.3f})"
    )
    if r["interval"]:
        text += f"; 95 % CI [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}], {_resampling(r)}"
    else:
        text += f"; no interval: {r['interval_reason']}"
    return text


def _num(v: float | None, interval: Sequence[float] | None) -> str:
    """A value to 3 places with its interval, or a dash when there is none."""
    if v is None:
        return "–"
    return f"{v:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _span(span: Sequence[float] | None) -> str:
    return "–" if span is None else f"{span[0]:.3f}–{span[1]:.3f}"


def spread_line(sp: dict) -> str:
    head = f"{sp['a']} / {sp['b']} at {sp['hook']}, seeds {', '.join(str(x) for x in sp['seeds'])}"
    if sp["span"] is None:
        return f"{head}: not comparable: {sp['reason']}"
    per = ", ".join(f"{r:.3f}" for r in sp["ratios"])
    return (
        f"{head}, loss recovered {_span(sp['span'])}: ratios {per}; geometric mean {sp['geomean']:.3f}, 95 % CI "
        f"over seeds [{sp['interval'][0]:.3f}, {sp['interval'][1]:.3f}]; one more run would fall in "
        f"[{sp['prediction'][0]:.3f}, {sp['prediction'][1]:.3f}]"
    )


def check_line(c: dict) -> str:
    head = (
        f"{strip_lengths(c['a'])} / {strip_lengths(c['b'])} at {c['hook']}, {fmt_value(c['tokens'][0])} → "
        f"{fmt_value(c['tokens'][1])} tokens{_factor(c)}"
    )
    if c["span"] is None:
        return f"{head}: not comparable ({c['verdict_reason']})"
    ci = f", 95 % CI [{c['change_interval'][0]:.3f}, {c['change_interval'][1]:.3f}]" if c["change_interval"] else ""
    return (
        f"{head}, at loss recovered {_span(c['span'])}: ratio {c['ratio'][0]:.3f} → {c['ratio'][1]:.3f} (change "
        f"{c['change']:.3f}{ci}): {c['verdict']} at margin ±{c['margin']:g}"
        + (f" ({c['verdict_reason']})" if c["verdict_reason"] else "")
    )


def filtered_by(filters: Sequence[str]) -> str:
    return f", filtered by {', '.join(f'`{w}`' for w in filters)}" if filters else ""


def markdown(
    sites: dict[tuple[str, str], list[Series]],
    ratios: list[dict],
    source: str,
    checks: Sequence[dict] = (),
    spreads: Sequence[dict] = (),
    settings: Sequence[dict] = (),
    against: Sequence[dict] = (),
) -> str:
    lines = [
        "# gsae report",
        "",
        source + ".",
        "L0: mean non-zero features per site token (‖f‖₀, the paper's); L0 gate: mean open gates, the support "
        "the architecture decides (equal to L0 for relu; blank for evaluations made before gsae recorded it). "
        "Loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean). "
        "γ: relative reconstruction bias (1 = no shrinkage); γ centred: the same about the means. "
        "KL: KL(clean ‖ spliced) per token. Pass-through: site positions left at their clean activation. "
        "[lo, hi]: 95 % bootstrap interval over eval windows.",
        "",
        "![L0 vs loss recovered](frontier.png)",
        "",
        "![shrinkage](shrinkage.png)",
        "",
    ]
    diverged = [r for s in (x for ss in sites.values() for x in ss) for r in s.results if r.row["diverged_at_step"]]
    if diverged:
        lines += [
            "## Warning: SAEs whose training diverged",
            "",
            "Their points below are real measurements of a broken run, not of the architecture; "
            "retrain them with a lower learning rate.",
            "",
        ]
        lines += [
            f"- {r.row['architecture']} {setting_words(r.row)} at {r.row['hook']} "
            f"({fmt_value(r.row['train_tokens'])} tokens): diverged at step {r.row['diverged_at_step']:,} "
            f"(`{r.directory.name}`)"
            for r in sorted(diverged, key=result_sort_key)
        ]
        lines.append("")
    every = [r for series in sites.values() for s in series for r in s.results]
    head = ["series", sparsity_header(every), "train tokens"] + [h for h, *_ in TABLE] + ["eval"]
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
            lines += [
                f"‡ mean feature density (L0 / d_sae) above {DENSE_CODE:.0%}: not a sparse code; each ratio "
                "below is also given over the sparse part alone.",
                "",
            ]
        site_ratios = [r for r in ratios if (r["model"], r["hook"]) == (model, hook)]
        lines += [
            "### L0 ratio at matched loss recovered",
            "",
            "The paper's headline (docs/method.md §4, L0 ratio at matched loss recovered): how many active "
            "features one architecture needs, relative to "
            "another, for the same loss recovered; log L0 interpolated along each Pareto frontier, geometric "
            "mean over the overlap of the two frontiers' loss-recovered ranges. < 1 means the first needs "
            "fewer. The 95 % interval recomputes every SAE's L0 and loss recovered, both frontiers and "
            "the ratio on each bootstrap resample of the eval windows.",
            "",
        ]
        if not site_ratios:
            lines += ["Only one architecture here: nothing to compare.", ""]
        for ratio in site_ratios:
            if ratio["geomean"] is None:
                lines += [f"- **{ratio['a']} / {ratio['b']}**: no ratio: {ratio['reason']}.", ""]
                continue
            lo, hi = ratio["overlap"]
            ci = (
                f", 95 % CI **{ratio['interval'][0]:.3f}–{ratio['interval'][1]:.3f}**: {_resampling(ratio)}."
                if ratio["interval"]
                else f"; no interval: {ratio['interval_reason']}."
            )
            lines += [
                f"- **{ratio['a']} / {ratio['b']}**, {_footing_words(ratio)}: **{ratio['geomean']:.3f}** "
                f"(geometric mean over loss recovered {lo:.3f}–{hi:.3f}){ci}",
                "",
                *(_sparse_lines(ratio["sparse"]) if ratio.get("sparse") else []),
                "  | loss recovered | L0 " + ratio["a"] + " | L0 " + ratio["b"] + " | ratio |",
                "  |---|---|---|---|",
            ]
            for t, la, lb, q in zip(ratio["targets"], ratio["l0_a"], ratio["l0_b"], ratio["ratios"]):
                lines.append(f"  | {t:.3f} | {la:.1f} | {lb:.1f} | {q:.3f} |")
            lines.append("")
        site_spreads = [sp for sp in spreads if (sp["model"], sp["hook"]) == (model, hook)]
        if site_spreads:
            lines += [
                "### Run-to-run spread: the ratio over training seeds",
                "",
                "The same pair trained with several `train.seed` (initialisation, which rows of the store a run "
                "reads, and their order), at each training length, every seed's ratio at the same "
                "loss-recovered targets: the range all their frontiers cover. The window bootstrap above "
                "holds the SAEs fixed; this is the variation of training, on these eval windows (every seed "
                "is evaluated on the same ones, so window sampling is not in it). CI: Student t over seeds "
                "on log ratio; one more run: the t prediction interval for a further seed. With 3 seeds "
                "both are wide (t = 4.30) and assume log-normal ratios.",
                "",
                "| pair | train tokens | loss recovered | ratio per seed | geometric mean [95 % CI over seeds] "
                "| one more run |",
                "|---|---|---|---|---|---|",
            ]
            for sp in site_spreads:
                pair = f"| {strip_tokens(sp['a'])} / {strip_tokens(sp['b'])} | " + (
                    f"{fmt_value(sp['tokens']) if sp['tokens'] is not None else '–'} | {_span(sp['span'])} | "
                )
                if sp["span"] is None:
                    lines.append(
                        pair + f"not comparable: {sp['reason']} (seeds "
                        f"{', '.join(str(x) for x in sp['seeds'])}) | – | – |"
                    )
                    continue
                per = ", ".join(f"{r:.3f} (seed {x})" for x, r in zip(sp["seeds"], sp["ratios"]))
                lines.append(
                    pair + f"{per} | {sp['geomean']:.3f} [{sp['interval'][0]:.3f}, {sp['interval'][1]:.3f}] | "
                    f"[{sp['prediction'][0]:.3f}, {sp['prediction'][1]:.3f}] |"
                )
            lines.append("")
            for sp in site_spreads:
                for d in sp["dropped"]:
                    lines += [
                        f"- Left out of {strip_tokens(sp['a'])} / {strip_tokens(sp['b'])}: seed {d['seed']}, "
                        f"which gives no ratio ({d['reason']}).",
                        "",
                    ]
        site_checks = [c for c in checks if (c["model"], c["hook"]) == (model, hook)]
        if site_checks:
            margin = ", ".join(sorted({f"±{c['margin']:g}" for c in site_checks}))
            lines += [
                "### Convergence: the ratio as the training tokens grow",
                "",
                "Each ratio at T training tokens against the same pair of series at a longer T′, both at the "
                "same loss-recovered targets: the range all four frontiers cover (docs/method.md §4.2). The "
                "criterion is a doubling (T′ = 2T); other lengths are shown where they ran (the factor, and "
                "the store sizes where they differ). Change = ratio(T′) / ratio(T), with a paired bootstrap "
                "interval (the same window resamples give both ratios). Fixed before the data: **converged** "
                f"when the change's 95 % interval lies inside 1 {margin} (`report.equivalence_margin`), **not "
                "converged** when it lies wholly outside, **undetermined** when it straddles a bound, "
                "**not comparable** when the frontiers share no range. The interval is over eval windows "
                "only: run-to-run variation is in the seed table, not in this verdict.",
                "",
                "| pair | T → T′ | loss recovered | ratio at T [95 % CI] | ratio at T′ [95 % CI] | change [95 % CI] "
                "| verdict |",
                "|---|---|---|---|---|---|---|",
            ]
            for c in site_checks:
                verdict = f"**{c['verdict']}**" + (f" ({c['verdict_reason']})" if c["verdict_reason"] else "")
                lines.append(
                    f"| {strip_lengths(c['a'])} / {strip_lengths(c['b'])} | {_lengths(c)} | {_span(c['span'])} | "
                    f"{_num(c['ratio'][0], c['interval'][0])} | {_num(c['ratio'][1], c['interval'][1])} | "
                    f"{_num(c['change'], c['change_interval'])} | {verdict} |"
                )
            lines.append("")
        lines += _setting_lines([c for c in settings if (c["model"], c["hook"]) == (model, hook)])
        lines += _against_lines([c for c in against if (c["model"], c["hook"]) == (model, hook)])
    return "\n".join(lines).rstrip() + "\n"


def _against_lines(site: Sequence[dict]) -> list[str]:
    """Every architecture against gated at common targets (report/against.py), or nothing: one
    table, or one per training seed and the spread over seeds."""
    if not site:
        return []
    tables = [c for c in site if "seeds" not in c]
    c, seeded = tables[0], "seed" in tables[0]
    where = (
        "the range all these frontiers cover at one training seed, given with its table"
        if seeded
        else f"loss recovered {_span(c['span'])}, the range all these frontiers cover"
    )
    lines = [
        "### Every architecture against gated, at the same loss-recovered targets",
        "",
        f"gated / X: the ratio of active features at matched loss recovered, every pair at the same targets "
        f"({where}), with a paired bootstrap interval; below 1, gated needs fewer features. "
        f"Verdict by the margin ±{c['margin']:g}: **equal** when the interval lies inside 1 ± margin, "
        "**not settled** when it straddles a bound."
        + (
            f" {'No interval' if c['span'] is not None else 'No table'}: {c['interval_reason']}."
            if c["interval_reason"] and not seeded
            else ""
        ),
        "",
    ]
    if not seeded:
        return [*lines, *(_against_table(c) if c["span"] is not None else []), ""]
    for c in tables:
        if c["span"] is None:  # no targets, so no ratio to tabulate: the reason names the frontiers
            lines += [f"Seed {c['seed']}: no table, {c['interval_reason']}.", ""]
            continue
        reason = f" No interval: {c['interval_reason']}." if c["interval_reason"] else ""
        lines += [f"Seed {c['seed']}, loss recovered {_span(c['span'])}.{reason}", "", *_against_table(c), ""]
    for sp in (c for c in site if "seeds" in c):
        lines += _against_seed_lines(sp)
    return lines


def _against_table(c: dict) -> list[str]:
    return [
        f"| {strip_key(c['reference'], SEED_KEY)} / X | ratio [95 % CI] | verdict |",
        "|---|---|---|",
        *(
            f"| {strip_key(r['b'], SEED_KEY)} | {_num(r['ratio'], r['interval'])} | **{r['verdict']}** |"
            for r in c["rows"]
        ),
    ]


def _against_seed_lines(sp: dict) -> list[str]:
    seeds = ", ".join(str(x) for x in sp["seeds"])
    head = ["#### Over training seeds", ""]
    if sp["span"] is None:
        return [*head, f"Seeds {seeds}: not comparable: {sp['reason']}.", ""]
    return [
        *head,
        f"Each seed's gated / X at the same targets (loss recovered {_span(sp['span'])}, the range every seed's "
        f"frontiers cover), their geometric mean with a Student-t 95 % interval over the {len(sp['seeds'])} seeds "
        "on log ratio, and where one more run would land; the verdict applies the same rule to the interval "
        f"over seeds (margin ±{sp['margin']:g}).",
        "",
        f"| {sp['reference']} / X | ratio per seed ({seeds}) | geometric mean [95 % CI over seeds] | one more run "
        "| verdict over seeds |",
        "|---|---|---|---|---|",
        *(
            f"| {r['b']} | {', '.join(f'{x:.3f}' for x in r['ratios'])} | {_num(r['geomean'], r['interval'])} | "
            f"[{r['prediction'][0]:.3f}, {r['prediction'][1]:.3f}] | **{r['verdict']}** |"
            for r in sp["rows"]
        ),
        "",
    ]


def _setting_lines(site_settings: Sequence[dict]) -> list[str]:
    """The setting checks of one site: a table, or nothing where no series differ in a setting."""
    if not site_settings:
        return []
    margin = ", ".join(sorted({f"±{c['margin']:g}" for c in site_settings}))
    lines = [
        "### Does a setting move the ratio?",
        "",
        "Each ratio whose two series share one value of a setting against the same pair at another "
        "value, all else equal, at the loss-recovered targets all four frontiers cover. Change = "
        "ratio(value 2) / ratio(value 1), with a paired bootstrap interval; the verdict uses the "
        f"convergence margin (1 {margin}): **converged** here reads *no change beyond the margin*, "
        "**not converged** *a change*.",
        "",
        "| pair | setting: value 1 → value 2 | loss recovered | ratio at 1 [95 % CI] | ratio at 2 [95 % CI] "
        "| change [95 % CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in site_settings:
        k = c["setting"]
        pair = f"{strip_key(c['a'], k)} / {strip_key(c['b'], k)}"
        values = f"`{k}`: {fmt_value(c['values'][0])} → {fmt_value(c['values'][1])}"
        verdict = f"**{c['verdict']}**" + (f" ({c['verdict_reason']})" if c["verdict_reason"] else "")
        lines.append(
            f"| {pair} | {values} | {_span(c['span'])} | {_num(c['ratio'][0], c['interval'][0])} | "
            f"{_num(c['ratio'][1], c['interval'][1])} | {_num(c['change'], c['change_interval'])} | {verdict} |"
        )
    return [*lines, ""]


def _factor(c: dict) -> str:
    """' (1.47x)' for a check that is not a doubling, else ''."""
    return "" if math.isclose(c["factor"], 2.0) else f" ({c['factor']:.2f}x)"


def _lengths(c: dict) -> str:
    """'2M → 4M', with the factor when it is not a doubling and the stores when they differ."""
    text = f"{fmt_value(c['tokens'][0])} → {fmt_value(c['tokens'][1])}{_factor(c)}"
    s1, s2 = c.get("stores") or (None, None)
    if s1 != s2 and s1 is not None and s2 is not None:
        text += f", stores of {fmt_value(s1)} and {fmt_value(s2)} rows"
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
        every = [r for s in series for r in s.results]
        for h in ["series", sparsity_header(every), "tokens"] + [h for h, *_ in TABLE]:
            table.add_column(h, justify="left" if h == "series" else "right")
        for s in series:
            for r in s.results:
                table.add_row(*[Text(c) for c in _cells(s, r)])  # Text: "[lo, hi]" is not markup
        console.print(table)


def to_json(ratios: list[dict]) -> str:
    return json.dumps(ratios, indent=2, default=lambda v: list(v) if isinstance(v, tuple) else str(v)) + "\n"
