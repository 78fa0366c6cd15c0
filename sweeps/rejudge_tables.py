"""Re-judge a published report's length checks by the current rule, from its results.md alone.

Reports published before gsae kept evidence (docs/results/round4/*) hold each SAE's L0 and loss
recovered in their tables (4 significant digits) but not the per-window sums behind intervals.
This applies the current comparison (docs/method.md §4.1-4.2: both lengths at the same
loss-recovered targets, the range all four frontiers cover) to those numbers: point estimates
only, so no ratio can be called converged from them; a change outside the margin already
shows one is not.

    .venv/bin/python sweeps/rejudge_tables.py docs/results/round4/resid docs/results/round4/block24 \
        docs/results/round4/resid-lengths > docs/results/round4/rejudged.md
"""

from __future__ import annotations

import re
import sys
from itertools import combinations
from pathlib import Path

from gsae_cli.report import matched_l0_ratios, ratios_at_common_targets

MARGIN = 0.05  # report.equivalence_margin's default
LENGTH = re.compile(r"(?:, )?(train|harvest)\.n_tokens=([0-9.]+[kMB]?)")
UNITS = {"k": 1e3, "M": 1e6, "B": 1e9}


def tokens(text: str) -> float:
    return float(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else float(text)


def series_of(report: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """site -> series label -> [(L0, loss recovered)] from the site tables of results.md."""
    out: dict[str, dict[str, list]] = {}
    site = None
    for line in (report / "results.md").read_text().splitlines():
        if line.startswith("## "):
            site = line[3:].strip()
        elif site and line.startswith("| ") and not line.startswith("| series"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            try:
                float(cells[1].split()[0])
                point = (float(cells[3].split()[0]), float(cells[4].split()[0]))
            except (ValueError, IndexError):
                continue  # a ratio or check table, not an SAE row
            out.setdefault(site, {}).setdefault(cells[0], []).append(point)
    return out


def checks(series: dict[str, list]) -> list[tuple]:
    """(pair, T, T', span, ratio T, ratio T') for every pair of architectures and two lengths."""
    by_key: dict[tuple, dict[float, list]] = {}
    for label, pts in series.items():
        arch, *_ = label.split(", ")
        train = [tokens(v) for k, v in LENGTH.findall(label) if k == "train"]
        rest = LENGTH.sub("", label)[len(arch) :]
        by_key.setdefault((arch, rest), {})[train[0] if train else 0.0] = pts
    rows = []
    archs = sorted({a for a, _ in by_key}, key=["gated", "rescale_shift", "relu"].index)
    for a, b in combinations(archs, 2):
        for rest in sorted({r for _, r in by_key}):
            la, lb = by_key.get((a, rest), {}), by_key.get((b, rest), {})
            lengths = sorted(set(la) & set(lb))
            for t1, t2 in combinations(lengths, 2):
                span, (g1, g2) = ratios_at_common_targets([(la[t1], lb[t1]), (la[t2], lb[t2])])
                own = [matched_l0_ratios(la[t], lb[t])["geomean"] for t in (t1, t2)]
                rows.append((f"{a} / {b}{rest}", t1, t2, span, g1, g2, own))
    return rows


def fmt(t: float) -> str:
    return f"{t / 1e6:g}M"


def main(reports: list[str]) -> None:
    print(
        "| report | site | pair | T → T′ | common loss recovered | ratio at T → T′ | change | "
        "change by each length's own range (the old rule) | reading |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for report in reports:
        for site, series in series_of(Path(report)).items():
            for pair, t1, t2, span, g1, g2, own in checks(series):
                old = f"{own[1] / own[0]:.3f}" if None not in own else "–"
                if span is None:
                    print(
                        f"| {Path(report).name} | {site} | {pair} | {fmt(t1)} → {fmt(t2)} | none | – | – | {old} | "
                        "not comparable |"
                    )
                    continue
                change = g2 / g1
                reading = (
                    "cannot be converged: the change lies outside 1 ± 0.05"
                    if abs(change - 1) > MARGIN
                    else "inside the margin by the point alone: undetermined"
                )
                print(
                    f"| {Path(report).name} | {site} | {pair} | {fmt(t1)} → {fmt(t2)} | {span[0]:.3f}–{span[1]:.3f} | "
                    f"{g1:.3f} → {g2:.3f} | {change:.3f} | {old} | {reading} |"
                )


if __name__ == "__main__":
    main(sys.argv[1:])
