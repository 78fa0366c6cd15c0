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

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice
from gsae_cli.errors import ConfigError
from gsae_cli.report.against import against_reference
from gsae_cli.report.bootstrap import WindowData, bootstrap_common_targets, bootstrap_ratio, load_window_data
from gsae_cli.report.collect import Result, Series, collect, filter_results, group_series
from gsae_cli.report.compare import (
    compute_footing,
    length_checks,
    pairwise_ratios,
    ratio_with_interval,
    seed_spreads,
    seed_summary,
    setting_checks,
)
from gsae_cli.report.frontier import (
    common_range,
    equivalence_verdict,
    l0_at_loss_recovered,
    matched_l0_ratios,
    pareto_frontier,
    ratios_at_common_targets,
    why_no_common_range,
)
from gsae_cli.report.plots import plot_frontier, plot_shrinkage
from gsae_cli.report.tables import (
    check_line,
    csv_text,
    filtered_by,
    markdown,
    print_table,
    ratio_line,
    result_sort_key,
    setting_words,
    spread_line,
    to_json,
)

__all__ = [
    "Result",
    "Series",
    "WindowData",
    "bootstrap_common_targets",
    "bootstrap_ratio",
    "collect",
    "common_range",
    "compute_footing",
    "equivalence_verdict",
    "filter_results",
    "group_series",
    "l0_at_loss_recovered",
    "length_checks",
    "load_window_data",
    "matched_l0_ratios",
    "pairwise_ratios",
    "pareto_frontier",
    "ratio_with_interval",
    "ratios_at_common_targets",
    "report_command",
    "ratings_command",
    "run_report",
    "seed_spreads",
    "seed_summary",
    "setting_checks",
    "why_no_common_range",
]


def run_report(
    paths: Sequence[str | Path],
    out_dir: Path,
    report_dir: Path,
    where: Sequence[str],
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    equivalence_margin: float = 0.05,
    evidence: Path | None = None,
) -> Path:
    """Collect, filter, compare and write the report (see the module docstring). With `evidence`,
    the kept evaluations' evidence is written there first (gsae_cli/report/evidence.py) and the report is
    made from it, so that `gsae report EVIDENCE` rebuilds the same files byte for byte."""
    results, looked = collect(paths, out_dir)
    if not results:
        raise ConfigError(
            f"No evaluation results were found under {looked}. Make some with "
            "`gsae eval sae=relu sae.l1_coefficient=0.1` (it harvests and trains first), a sweep like "
            "`gsae eval -m sae=relu,gated sae.l1_coefficient=0.05,0.1,0.2`, or `sweeps/frontier.sh`; "
            "or point `gsae report` at the right folder (out_dir=DIR, or eval folders as arguments)."
        )
    kept = filter_results(results, where)
    if not kept:
        present = {
            k: sorted({str(r.row[c]) for r in results})
            for k, c in (("model", "model"), ("hook", "hook"), ("sae", "architecture"))
        }
        raise ConfigError(
            f"{len(results)} evaluation result(s) were found under {looked}, but none matches "
            f"{' and '.join(f'--where {w}' for w in where)}. Present: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in present.items())
            + "."
        )
    from gsae_cli.report.evidence import export_evidence, provenance

    source = f"Evaluations collected from {looked}" + filtered_by(where)
    beside = lambda folder: os.path.relpath(Path(folder).resolve(), Path(report_dir).resolve())  # noqa: E731
    if evidence is not None:
        export_evidence([r.directory for r in kept], evidence, source)
        kept, looked = collect([evidence], out_dir)
        source += f"; their evidence is in {beside(evidence)} (relative to this report)"
    elif (origin := provenance(paths)) is not None:  # a report made from evidence says where it came from
        source = f"{origin}; their evidence is in {beside(paths[0])} (relative to this report)" + filtered_by(where)
    sites = group_series(kept)
    ratios = pairwise_ratios(sites, bootstrap_samples, bootstrap_seed)
    checks = length_checks(ratios, margin=equivalence_margin, n_samples=bootstrap_samples, seed=bootstrap_seed)
    spreads = seed_spreads(ratios, n_samples=bootstrap_samples, seed=bootstrap_seed)
    settings = setting_checks(ratios, margin=equivalence_margin, n_samples=bootstrap_samples, seed=bootstrap_seed)
    against = against_reference(ratios, margin=equivalence_margin, n_samples=bootstrap_samples, seed=bootstrap_seed)
    ratios = [{k: v for k, v in r.items() if not k.startswith("_")} for r in ratios]

    report_dir = Path(report_dir).expanduser()
    report_dir.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(report_dir / "results.csv", csv_text(kept, report_dir))
    artifacts.atomic_write_text(report_dir / "ratios.json", to_json(ratios))
    plot_frontier(sites, report_dir / "frontier.png", ratios)
    plot_shrinkage(sites, report_dir / "shrinkage.png")
    artifacts.atomic_write_text(
        report_dir / "results.md", markdown(sites, ratios, source, checks, spreads, settings, against)
    )
    if against:  # (only where a site has three architectures or more)
        artifacts.atomic_write_text(report_dir / "against.json", to_json(against))
    else:
        (report_dir / "against.json").unlink(missing_ok=True)
    artifacts.atomic_write_text(report_dir / "convergence.json", to_json(checks))
    artifacts.atomic_write_text(report_dir / "seeds.json", to_json(spreads))
    artifacts.atomic_write_text(report_dir / "settings.json", to_json(settings))
    print_table(sites)
    n_series = sum(len(s) for s in sites.values())
    notice(f"{len(kept)} evaluation(s) in {n_series} series at {len(sites)} site(s) written to {report_dir}")
    for r in sorted((r for r in kept if r.row["diverged_at_step"]), key=result_sort_key):
        notice(
            f"WARNING: the {r.row['architecture']} SAE at {setting_words(r.row)} "
            f"({r.row['hook']}, {r.directory.name}) diverged in training at step {r.row['diverged_at_step']:,}: "
            "its point is not trustworthy; retrain it with a lower learning rate, or leave such SAEs out "
            "with --where diverged_at_step=none"
        )
    for ratio in ratios:
        notice(ratio_line(ratio))
    for c in checks:
        notice(check_line(c))
    for sp in spreads:
        notice(spread_line(sp))
    return report_dir


def report_command(
    args: Sequence[str],
    report_dir: Path,
    where: Sequence[str],
    legacy_out_dir: str | None = None,
    evidence: Path | None = None,
) -> Path:
    """`gsae report ARGS`: `key=value` arguments are config overrides composed like every stage's
    (out_dir=, eval.bootstrap_samples / eval.bootstrap_seed for the ratio's interval, and
    report.equivalence_margin for the convergence verdict); any
    other argument is an eval artifact or a folder holding them."""
    from gsae_cli.listing import is_override, reader_config

    overrides = [a for a in args if is_override(a)]
    paths = [a for a in args if not is_override(a)]
    cfg = reader_config(
        overrides,
        command="report",
        legacy_out_dir=legacy_out_dir,
        uses={"out_dir", "eval.bootstrap_samples", "eval.bootstrap_seed", "report.equivalence_margin"},
        hint="; to keep some rows only, use --where KEY=VALUE",
    )
    return run_report(
        paths,
        Path(cfg.out_dir),
        report_dir,
        where,
        bootstrap_samples=int(cfg.eval.bootstrap_samples),
        bootstrap_seed=int(cfg.eval.bootstrap_seed),
        equivalence_margin=float(cfg.report.equivalence_margin),
        evidence=evidence,
    )


def ratings_command(args: Sequence[str], report_dir: Path, ratings: Sequence[Path]) -> Path:
    """`gsae report --ratings FILE ... [out_dir=DIR]`: unblind a study's ratings (the study is
    found under out_dir/study/) and write study.md and study.json to the report folder."""
    from gsae_cli.inspect.study import ratings_markdown, ratings_report
    from gsae_cli.listing import is_override, reader_config

    extra = [a for a in args if not is_override(a)]
    if extra:
        raise ConfigError(f"With --ratings, report takes only out_dir=DIR (where the study is), not {extra[0]!r}.")
    cfg = reader_config(
        [a for a in args if is_override(a)], command="report --ratings", legacy_out_dir=None, uses={"out_dir"}, hint=""
    )
    rows = ratings_report(list(ratings), Path(cfg.out_dir))
    report_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(report_dir / "study.json", rows)
    text = ratings_markdown(rows)
    artifacts.atomic_write_text(report_dir / "study.md", text)
    sys.stderr.write(text)
    return report_dir / "study.md"
