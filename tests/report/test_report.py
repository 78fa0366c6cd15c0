"""`gsae report`: Pareto frontier and matched-L0 maths on hand-computed numbers, the bootstrap
interval of the ratio on hand-built per-window sums, and the report files and the CLI on hand-made
eval artifacts (metrics.json + per_window.safetensors written here; no model needed)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import gsae
from safetensors.torch import save_file

from gsae_cli.errors import ConfigError
from gsae_cli.evaluate import metrics
from gsae_cli.report import (
    WindowData,
    bootstrap_ratio,
    collect,
    common_range,
    equivalence_verdict,
    group_series,
    l0_at_loss_recovered,
    matched_l0_ratios,
    pareto_frontier,
    plots,
    ratios_at_common_targets,
    run_report,
    seed_summary,
    why_no_common_range,
)
from gsae_cli.report.plots import _plottable, _seed_replicas

# ---- pure functions --------------------------------------------------------------------------


def test_pareto_frontier_drops_dominated_points():
    points = [(10, 0.8), (20, 0.7), (30, 0.9), (30, 0.85), (50, 0.9), (5, 0.5)]
    # (20, .7) is beaten by (10, .8); (30, .85) by (30, .9) at equal L0; (50, .9) by (30, .9)
    # at equal loss recovered. Returned by increasing L0.
    assert pareto_frontier(points) == [5, 0, 2]


def test_pareto_frontier_keeps_duplicates_and_skips_nan():
    assert pareto_frontier([(10, 0.8), (10, 0.8)]) == [0, 1]
    assert pareto_frontier([(float("nan"), 0.9), (10, 0.8)]) == [1]
    assert pareto_frontier([]) == []


def test_l0_interpolates_log_l0_linearly_in_loss_recovered():
    front = [(10, 0.8), (40, 1.0)]
    assert l0_at_loss_recovered(front, 0.9) == pytest.approx(20.0)  # sqrt(10 * 40)
    assert l0_at_loss_recovered(front, 0.85) == pytest.approx(math.sqrt(200))  # 10 * 4 ** 0.25
    assert l0_at_loss_recovered(front, 0.8) == pytest.approx(10.0)
    assert l0_at_loss_recovered(front, 1.0) == pytest.approx(40.0)
    assert l0_at_loss_recovered(front, 0.79) is None  # no extrapolation
    assert l0_at_loss_recovered(front, 1.01) is None
    # a dominated point in the input does not bend the curve
    assert l0_at_loss_recovered(front + [(30, 0.7)], 0.9) == pytest.approx(20.0)


def test_matched_l0_ratio_constant_half():
    relu = [(20, 0.80), (40, 0.88), (80, 0.93), (160, 0.96)]
    gated = [(l0 / 2, lr) for l0, lr in relu]
    r = matched_l0_ratios(gated, relu)
    assert r["overlap"] == pytest.approx((0.80, 0.96))
    assert r["targets"] == pytest.approx([0.80, 0.84, 0.88, 0.92, 0.96])
    assert r["ratios"] == pytest.approx([0.5] * 5)
    assert r["geomean"] == pytest.approx(0.5)
    assert r["reason"] is None


def test_matched_l0_ratio_over_the_overlap_only():
    # a: L0 = 10 * 2^((t - .8) / .1); b: L0 = 20 * 4^((t - .8) / .1) on [.8, .9] (b goes further)
    a = [(10, 0.8), (20, 0.9)]
    b = [(20, 0.8), (80, 0.9), (200, 0.95)]
    r = matched_l0_ratios(a, b)
    assert r["overlap"] == pytest.approx((0.8, 0.9))
    # ratio = 0.5 * 2^-(k/4) at the k-th of 5 targets; geometric mean 0.5 * 2^-0.5
    assert r["ratios"] == pytest.approx([0.5 * 2 ** (-k / 4) for k in range(5)])
    assert r["geomean"] == pytest.approx(0.5 / math.sqrt(2))


def test_a_point_at_l0_zero_cannot_cut_a_frontier_short():
    # (0, 0.5) dominates (5, 0.4) but has no log L0: it is left out before the frontier is taken
    assert l0_at_loss_recovered([(0, 0.5), (5, 0.4), (10, 0.6)], 0.45) == pytest.approx(5**0.75 * 10**0.25)
    assert common_range([[(0, 0.5), (5, 0.4), (10, 0.6)]]) == pytest.approx((0.4, 0.6))


def test_matched_l0_ratio_without_overlap_says_why():
    r = matched_l0_ratios([(10, 0.80), (20, 0.85)], [(30, 0.90), (60, 0.95)])
    assert r["geomean"] is None and r["ratios"] == []
    assert "do not overlap" in r["reason"]
    assert matched_l0_ratios([], [(1, 0.5)])["reason"].startswith("no usable points")


# ---- hand-built per-window sums ------------------------------------------------------------------
#
# 8 eval windows of 100 predictions and 100 site positions each; CE clean 3, zero-ablated 5 nats.
# Window w closes a fraction lr * M[w] of the ablation gap and fires l0 * Q[w] features per
# position, so an SAE's full-set (L0, loss recovered) is exactly (l0, lr) (M and Q average 1), and
# a resample `idx` gives (l0 * mean Q[idx], lr * mean M[idx]) -- by hand, for any idx.

M = [0.7, 1.3, 0.85, 1.15, 1.0, 0.9, 1.1, 1.0]
Q = [1.2, 0.8, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0]
N_WIN = len(M)


def window_sums(l0: float, lr: float, m=M, q=Q) -> dict:
    n = len(m)
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return {
        "n_pred": full(100),
        "n_site": full(100),
        "nll_clean": full(300),
        "nll_zero": full(500),
        "nll_mean": full(400),
        "nll_spliced": torch.tensor([100 * (3 + 2 * (1 - lr * mw)) for mw in m], dtype=torch.float64),
        "kl": full(100 * (1 - lr)),
        "l0": torch.tensor([100 * l0 * qw for qw in q], dtype=torch.float64),
        "l0_gate": torch.tensor([110 * l0 * qw for qw in q], dtype=torch.float64),
        "sq_err": full(10),
        "x_sq": full(100),
        "xhat_sq": full(90),
        "xhat_dot_x": full(95),
        "x_sum": torch.zeros(n, 4, dtype=torch.float64),
        "xhat_sum": torch.zeros(n, 4, dtype=torch.float64),
    }


def by_hand(l0: float, lr: float, idx: list[int], m=M, q=Q) -> tuple[float, float]:
    return (l0 * sum(q[i] for i in idx) / len(idx), lr * sum(m[i] for i in idx) / len(idx))


def data(l0, lr, eval_set="evset", m=M, q=Q, label=None) -> WindowData:
    sums = window_sums(l0, lr, m, q)
    return WindowData(label or f"{l0}/{lr}", eval_set, {k: sums[k] for k in metrics.WINDOW_SCALARS})


RELU_FRONT = [(20, 0.80), (40, 0.88), (80, 0.93), (160, 0.96)]
GATED_FRONT = [(l0 / 2, lr) for l0, lr in RELU_FRONT]  # half the L0 at every loss recovered


# A ratio that changes along the frontier: gated needs 0.5 of relu's L0 up to loss recovered
# 0.88 and 0.3 from 0.93 on. A longer run moves every λ one point up the same two curves.
SHARE = [0.5, 0.5, 0.3, 0.3]
RELU_AT = {"T": RELU_FRONT[:3], "2T": RELU_FRONT[1:]}
GATED_AT = {k: [(l0 * SHARE[RELU_FRONT.index((l0, lr))], lr) for l0, lr in v] for k, v in RELU_AT.items()}


def test_common_range_is_the_intersection_of_every_frontier():
    assert common_range([RELU_AT["T"], GATED_AT["T"], RELU_AT["2T"], GATED_AT["2T"]]) == pytest.approx((0.88, 0.93))
    assert common_range([[(10, 0.80), (20, 0.85)], [(30, 0.90)]]) is None
    assert common_range([[(10, 0.80)], []]) is None


def test_why_no_common_range_names_the_frontier_ending_lowest_and_the_one_beginning_highest():
    # b ends lowest (0.85), c begins highest (0.90); a's dominated point (30, 0.70) is not its start
    named = [("a", [(5, 0.75), (30, 0.70), (50, 0.95)]), ("b", [(10, 0.80), (20, 0.85)]), ("c", [(30, 0.90)])]
    assert why_no_common_range(named) == (
        "b's frontier ends at loss recovered 0.850 (0.800-0.850), below where c's begins (0.900-0.900)"
    )
    assert why_no_common_range([("a", [(10, 0.8)]), ("b", []), ("c", [(0, 0.9)])]) == "b, c have no usable point"


def test_lengths_on_the_same_curves_compare_equal_only_at_common_targets():
    # The old rule took each length's ratio over its own overlap: 0.80-0.93 at T, 0.88-0.96 at
    # 2T, so it saw a change where both lengths lie on the same two curves.
    own = [matched_l0_ratios(GATED_AT[k], RELU_AT[k])["geomean"] for k in ("T", "2T")]
    assert own[1] / own[0] < 0.9
    span, (g1, g2) = ratios_at_common_targets([(GATED_AT["T"], RELU_AT["T"]), (GATED_AT["2T"], RELU_AT["2T"])])
    assert span == pytest.approx((0.88, 0.93))
    # on [0.88, 0.93] log L0 of both is linear: share 0.5 * 0.6^((t - .88) / .05); geomean 0.5 * sqrt(0.6)
    assert g1 == pytest.approx(0.5 * math.sqrt(0.6)) and g2 == pytest.approx(g1)
    span, gs = ratios_at_common_targets(
        [([(10, 0.80), (20, 0.85)], [(20, 0.80), (40, 0.85)]), ([(10, 0.90), (20, 0.95)], [(20, 0.90), (40, 0.95)])]
    )
    assert span is None and gs == [None, None]


def test_equivalence_verdict_against_the_margin():
    assert equivalence_verdict((0.97, 1.04), 0.05) == "converged"
    assert equivalence_verdict((0.95, 1.05), 0.05) == "converged"  # the bounds are inside
    assert equivalence_verdict((0.96, 1.06), 0.05) == "undetermined"  # straddles 1.05
    assert equivalence_verdict((0.90, 1.10), 0.05) == "undetermined"  # straddles both
    assert equivalence_verdict((1.06, 1.20), 0.05) == "not converged"
    assert equivalence_verdict((0.80, 0.94), 0.05) == "not converged"
    assert equivalence_verdict((0.97, 1.04), 0.02) == "undetermined"
    assert equivalence_verdict(None, 0.05) == "undetermined"


def test_window_sums_reproduce_their_metrics():
    full = metrics.metrics_from_window_sums(window_sums(40, 0.88))
    assert float(full["l0"]) == pytest.approx(40) and float(full["loss_recovered"]) == pytest.approx(0.88)
    idx = [1, 1, 0, 7, 3, 3, 3, 5]
    got = metrics.metrics_from_window_sums(window_sums(40, 0.88), torch.tensor(idx))
    l0, lr = by_hand(40, 0.88, idx)
    assert (float(got["l0"]), float(got["loss_recovered"])) == pytest.approx((l0, lr))


def test_paired_bootstrap_of_exact_half_is_half():
    # Every SAE shares the eval set, so a resample scales all of them alike and both frontiers
    # move together: the ratio is 0.5 in every resample.
    r = bootstrap_ratio([data(*p) for p in GATED_FRONT], [data(*p) for p in RELU_FRONT], 300, seed=0)
    assert r["paired"] is True and r["eval_sets"] == ["evset"] and r["n_windows"] == [N_WIN]
    assert r["n_resamples"] == 300 and r["n_valid"] == 300
    assert r["samples"] == pytest.approx([0.5] * 300)
    lo, hi = r["interval"]
    assert lo <= 0.5 <= hi and hi - lo < 1e-9


def test_bootstrap_samples_equal_hand_resampled_frontiers():
    # Each SAE with its own window effects (a permutation of M and Q), so the ratio varies.
    def perm(v, k):
        return v[k:] + v[:k]

    a = [(p, perm(M, i + 1), perm(Q, 2 * i)) for i, p in enumerate(GATED_FRONT)]
    b = [(p, perm(M, 5 - i), perm(Q, i + 3)) for i, p in enumerate(RELU_FRONT)]
    n = 40
    r = bootstrap_ratio([data(*p, m=m, q=q) for p, m, q in a], [data(*p, m=m, q=q) for p, m, q in b], n, seed=3)
    idx = metrics.bootstrap_indices(N_WIN, n, 3).tolist()  # paired: eval's own draws, for every SAE
    want = []
    for k in range(n):
        pa = [by_hand(*p, idx[k], m, q) for p, m, q in a]
        pb = [by_hand(*p, idx[k], m, q) for p, m, q in b]
        g = matched_l0_ratios(pa, pb)["geomean"]
        if g is not None:
            want.append(g)
    assert r["paired"] and len(want) > n // 2
    assert r["samples"] == pytest.approx(want, rel=1e-12)
    assert r["n_valid"] == len(want) and r["n_resamples"] == n
    ws = sorted(want)
    assert r["interval"] == pytest.approx(metrics.percentile_interval(torch.tensor(ws)))
    assert ws[0] <= r["interval"][0] < r["interval"][1] <= ws[-1] and ws[0] < ws[-1]


def test_pairing_narrows_the_interval():
    gated, relu = [data(*p) for p in GATED_FRONT], [data(*p) for p in RELU_FRONT]
    paired = bootstrap_ratio(gated, relu, 300, seed=0)
    # The same sums labelled as two eval sets: no joint resample, so the window effects no
    # longer cancel between the two frontiers.
    gated_x = [data(*p, eval_set="evset-x") for p in GATED_FRONT]
    unpaired = bootstrap_ratio(gated_x, relu, 300, seed=0)
    assert unpaired["paired"] is False and unpaired["eval_sets"] == ["evset", "evset-x"]
    (plo, phi), (ulo, uhi) = paired["interval"], unpaired["interval"]
    assert phi - plo < 1e-9 and uhi - ulo > 0.1
    assert ulo < 0.5 < uhi
    # Different eval sets draw different resamples even with equal window counts.
    assert len({round(s, 12) for s in unpaired["samples"]}) > 100


def test_a_missing_eval_set_hash_is_not_paired():
    gated = [data(*p) for p in GATED_FRONT]
    relu = [data(*p, eval_set=None, label=f"r{i}") for i, p in enumerate(RELU_FRONT)]
    assert bootstrap_ratio(gated, relu, 20, seed=0)["paired"] is False


# ---- run_report on hand-made artifacts ----------------------------------------------------------

HOOK = "blocks.12.hook_resid_pre"
RELU = [(20, 0.80, 0.90), (40, 0.88, 0.92), (80, 0.93, 0.95), (160, 0.96, 0.97), (100, 0.90, 0.93)]
GATED = [(10, 0.80, 1.00), (20, 0.88, 0.99), (40, 0.93, 1.01), (80, 0.96, 1.00)]


def make_eval(
    root: Path,
    name: str,
    arch: str,
    l1: float,
    l0: float,
    lr: float,
    gamma: float,
    model: str = "smollm2-135m",
    train_tokens: int = 2_000_000,
    complete: bool = True,
    hook: str = HOOK,
    windows: bool = False,
    eval_set: str = "evset",
    ci: bool = True,
    sae_lr: float | None = None,
    window_l0: float | None = None,
    seed: int | None = None,
    harvest_tokens: int | None = None,
    width: int = 4,
    d_sae: int | None = None,
    shuffle: int | None = None,
    tie_weights: bool = True,
) -> Path:
    """An eval artifact; with `windows`, per_window.safetensors from window_sums(l0, lr) (or
    window_l0 in place of l0: sums from some other run)."""
    d = root / "eval" / name
    d.mkdir(parents=True)
    config = {
        "model": {"name": model, "source": "gguf"},
        "hook": hook,
        "sae": {
            "name": arch,
            "l1_coefficient": l1,
            "expansion_factor": width,
            "path": None,
            "lr": sae_lr if sae_lr is not None else (3e-4 if arch == "gated" else 1e-3),
            "tie_weights": tie_weights,
            "r_mag": True,
            "aux_loss": True,
            "freeze_aux_decoder": True,
        },
        "train": {"n_tokens": train_tokens, "batch_size": 4096, "log_every": 10, "lr": None},
        "eval": {"n_tokens": 16384, "bootstrap_samples": 1000, "bootstrap_seed": 0, "cache": True},
        "data": {"name": "gsae-default"},
        "out_dir": str(root),
        "device": "cpu",
    }
    if seed is not None:
        config["train"]["seed"] = seed
    if shuffle is not None:
        config["train"]["shuffle_buffer_chunks"] = shuffle
    if harvest_tokens is not None:
        config["harvest"] = {"n_tokens": harvest_tokens}
    m = {
        "l0": l0,
        "loss_recovered": lr,
        "ce_clean": 3.0,
        "ce_spliced": 3.0 + (1 - lr) * 2,
        "ce_zero_ablation": 5.0,
        "ce_mean_ablation": 4.0,
        "loss_recovered_mean_ablation": 0.5,
        "delta_loss": (1 - lr) * 2,
        "kl_div": (1 - lr),
        "relative_reconstruction_bias": gamma,
        "relative_reconstruction_bias_centred": gamma + 0.01,
        "nmse": 0.1,
        "explained_variance": 0.9,
        "frac_dead": 0.01,
        "frac_dense": 0.0,
        "frac_passthrough": 0.002,
        "n_tokens": 16384,
        "config": config,
        "sae": {"path": f"/x/{name}", "architecture": arch, "l1_coefficient": l1, "d_sae": d_sae},
    }
    if ci:
        m["ci"] = {
            "l0": [l0 * 0.9, l0 * 1.1],
            "loss_recovered": [lr - 0.01, lr + 0.01],
            "loss_recovered_mean_ablation": [0.49, 0.51],
            "relative_reconstruction_bias": [gamma - 0.02, gamma + 0.03],
            "relative_reconstruction_bias_centred": [gamma - 0.01, gamma + 0.04],
            "frac_dead": [0.005, 0.02],
            "frac_passthrough": [0.002, 0.002],
        }  # pass-through: the same in every resample
    (d / "metrics.json").write_text(json.dumps(m))
    if windows:
        save_file(
            {k: v.contiguous() for k, v in window_sums(window_l0 or l0, lr).items()},
            str(d / "per_window.safetensors"),
            metadata={"format": metrics.WINDOW_FORMAT, "eval_set": eval_set},
        )
    if complete:
        (d / "COMPLETE").write_text("done\n")
    return d


def make_sweep(root: Path, **kw) -> None:
    for i, (l0, lr, g) in enumerate(RELU):
        make_eval(root, f"relu{i}", "relu", 0.1 * (i + 1), l0, lr, g, **kw)
    for i, (l0, lr, g) in enumerate(GATED):
        make_eval(root, f"gated{i}", "gated", 0.1 * (i + 1), l0, lr, g, **kw)


def test_run_report_writes_csv_plots_and_markdown(tmp_path, capsys):
    make_sweep(tmp_path / "outputs")
    make_eval(tmp_path / "outputs", "unfinished", "gated", 9.0, 1, 0.1, 1.0, complete=False)
    out = run_report([], tmp_path / "outputs", tmp_path / "report", [])
    assert out == tmp_path / "report"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(RELU) + len(GATED)  # the unfinished eval is skipped
    assert list(rows[0])[:4] == ["model", "hook", "architecture", "l1_coefficient"]
    assert {r["architecture"] for r in rows} == {"relu", "gated"}
    assert rows[0]["train_tokens"] == "2000000" and rows[0]["eval_path"].endswith(tuple(f"gated{i}" for i in range(4)))
    # the first row is gated at L0 10: its intervals from metrics.json "ci", the new columns
    assert (float(rows[0]["l0"]), float(rows[0]["l0_lo"]), float(rows[0]["l0_hi"])) == pytest.approx((10, 9, 11))
    assert (float(rows[0]["loss_recovered_lo"]), float(rows[0]["loss_recovered_hi"])) == pytest.approx((0.79, 0.81))
    assert rows[0]["kl_div_lo"] == "" and rows[0]["eval_set"] == ""  # no interval recorded, no per-window file
    assert float(rows[0]["relative_reconstruction_bias_centred"]) == pytest.approx(1.01)
    assert float(rows[0]["frac_passthrough"]) == pytest.approx(0.002)
    # an older eval's frac_dead interval is not shown: the window bootstrap biases it (metrics.NO_BOOTSTRAP)
    assert rows[0]["frac_dead_lo"] == rows[0]["frac_dead_hi"] == "" and float(rows[0]["frac_dead"]) == 0.01
    for png in ("frontier.png", "shrinkage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "gated / relu" in md and "**0.500**" in md
    assert "| γ centred |" in md and "| pass-through |" in md
    assert "| 10 [9, 11] | – | 0.8 [0.79, 0.81] |" in md  # L0, no L0 gate (not recorded), loss recovered
    # the site's reference: what the constant mean activation recovers (ce 4 against clean 3)
    assert "| reference: mean activation (x̂ = b_dec alone) | – | – | 0 | – | 0.5 [0.49, 0.51] | 1 | – |" in md
    assert (
        "| 0.01 | 0 | 0.002 | `gated0` |" in md
    )  # dead: no interval (NO_BOOTSTRAP); a one-point interval is not shown
    # no per_window.safetensors: a point estimate, and why there is no interval
    assert "no interval: 9 of 9 evaluations have no usable per-window sums" in md and "gsae eval --force" in md
    # sorted by architecture, then L0: gated rows come first, each block by increasing L0
    series_col = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith(("| gated", "| relu"))]
    assert series_col == ["gated"] * 4 + ["relu"] * 5
    err = capsys.readouterr().err
    assert "skipping unfinished evaluation" in err
    assert "L0 ratio at matched loss recovered = 0.500" in err
    assert "10 [9, 11]" in err  # the terminal table


def test_report_ratio_interval_per_site_from_window_sums(tmp_path, capsys):
    root = tmp_path / "outputs"
    make_sweep(root, windows=True)
    # a second site where gated needs a quarter of relu's L0: never mixed into the first
    other = "blocks.6.hook_resid_post"
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"b6-relu{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, hook=other, windows=True, eval_set="ev6")
        make_eval(
            root, f"b6-gated{i}", "gated", 0.1 * (i + 1), l0 / 4, lr, 1.0, hook=other, windows=True, eval_set="ev6"
        )
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=200, bootstrap_seed=1)
    ratios = json.loads((out / "ratios.json").read_text())
    assert [(r["hook"], r["a"], r["b"]) for r in ratios] == [(other, "gated", "relu"), (HOOK, "gated", "relu")]
    for r, want in zip(ratios, (0.25, 0.5)):
        assert r["geomean"] == pytest.approx(want)
        assert r["interval"] == pytest.approx([want, want], abs=1e-9)  # paired: exact in every resample
        assert r["paired"] is True and r["n_resamples"] == r["n_valid"] == 200 and r["n_windows"] == [N_WIN]
    assert ratios[1]["overlap"] == pytest.approx([0.80, 0.96]) and ratios[1]["eval_sets"] == ["evset"]
    md = (out / "results.md").read_text()
    assert md.index(f"## smollm2-135m · {other}") < md.index(f"## smollm2-135m · {HOOK}")  # grouped by site
    assert "**0.250**" in md and "95 % CI **0.250–0.250**" in md and "95 % CI **0.500–0.500**" in md
    assert "paired bootstrap over the 8 windows of eval set evset; 200 resamples" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["eval_set"] for r in rows} == {"evset", "ev6"}
    err = capsys.readouterr().err
    assert f"gated / relu (smollm2-135m, {HOOK}): L0 ratio at matched loss recovered = 0.500" in err
    assert "95 % CI [0.500, 0.500], paired bootstrap" in err


def test_report_says_when_resampling_is_unpaired(tmp_path, capsys):
    root = tmp_path / "outputs"
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"relu{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, eval_set="old-set")
        make_eval(root, f"gated{i}", "gated", 0.1 * (i + 1), l0 / 2, lr, 1.0, windows=True, eval_set="new-set")
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=200)
    (r,) = json.loads((out / "ratios.json").read_text())
    assert r["paired"] is False and r["eval_sets"] == ["new-set", "old-set"]
    lo, hi = r["interval"]
    assert lo < 0.5 < hi and hi - lo > 0.1
    assert "UNPAIRED bootstrap: the SAEs were evaluated on 2 different eval sets" in (out / "results.md").read_text()
    assert "UNPAIRED bootstrap" in capsys.readouterr().err


def test_window_sums_from_another_run_give_no_interval(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root, windows=True)
    make_eval(root, "stray", "relu", 9.0, 300, 0.97, 0.9, windows=True, window_l0=250)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=50)
    (r,) = json.loads((out / "ratios.json").read_text())
    assert r["interval"] is None and r["geomean"] is not None
    assert "gives l0 250 but metrics.json says 300.0" in r["interval_reason"]


def test_learning_rate_splits_within_an_architecture_only(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root)  # gated at sae.lr 3e-4, relu at 1e-3: still one comparison
    sites = group_series(collect([], root)[0])
    assert [s.label for s in sites[("smollm2-135m", HOOK)]] == ["gated", "relu"]
    for i, (l0, lr, g) in enumerate(RELU[:2]):  # an LR sweep of relu
        make_eval(root, f"relu-lr{i}", "relu", 0.1 * (i + 1), l0 * 1.5, lr, g, sae_lr=3e-3)
    sites = group_series(collect([], root)[0])
    assert [s.label for s in sites[("smollm2-135m", HOOK)]] == ["gated, lr=0.0003", "relu, lr=0.001", "relu, lr=0.003"]
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=0)
    pairs = [(r["a"], r["b"]) for r in json.loads((out / "ratios.json").read_text())]
    assert pairs == [("gated, lr=0.0003", "relu, lr=0.001"), ("gated, lr=0.0003", "relu, lr=0.003")]


def test_plots_draw_the_intervals(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    make_sweep(tmp_path / "outputs")
    run_report([], tmp_path / "outputs", tmp_path / "r", [], bootstrap_samples=0)
    frontier, shrinkage = figures

    def bars(fig):
        """(x, y) whisker segments as ((x0, y0), (x1, y1)) per ErrorbarContainer in the first panel."""
        ax = fig.axes[0]
        return [
            [tuple(map(tuple, seg)) for seg in c.lines[2][0].get_segments()]
            for c in ax.containers
            if isinstance(c, ErrorbarContainer)
        ]

    segs = [s for c in bars(frontier) for s in c]
    # gated at L0 10, loss recovered 0.8: whiskers 9-11 across and 0.79-0.81 up
    assert ((9.0, 0.8), (11.0, 0.8)) in [tuple((round(x, 9), round(y, 9)) for x, y in s) for s in segs]
    assert ((10.0, 0.79), (10.0, 0.81)) in [tuple((round(x, 9), round(y, 9)) for x, y in s) for s in segs]
    assert len(segs) == 2 * (len(RELU) + len(GATED))  # every point, both directions (dominated ones too)
    segs = [s for c in bars(shrinkage) for s in c]
    assert len(segs) == len(RELU) + len(GATED)  # γ centred only, vertical
    assert ((10.0, 0.99), (10.0, 1.04)) in [tuple((round(x, 9), round(y, 9)) for x, y in s) for s in segs]
    for fig in figures:  # legends (and ratios) right of the axes: they cover no point
        fig.canvas.draw()
        ax = fig.axes[0]
        assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1
        assert all(t.get_window_extent().x0 > ax.get_window_extent().x1 for t in ax.texts if "L0 ratio" in t.get_text())


def test_the_ratios_of_seven_series_sit_beside_the_legend(tmp_path, monkeypatch):
    """Seven series give 21 ratios: the box hangs under the legend and covers neither it nor the
    axes (anchored to the axes' foot, it ran up into the legend)."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    root = tmp_path / "outputs"
    for k, arch in enumerate(("relu", "gated", "rescale_shift", "scaled_relu", "jumprelu", "topk", "batchtopk")):
        for i, (l0, lr, g) in enumerate(GATED):
            make_eval(root, f"{arch}{i}", arch, 0.1 * (i + 1), l0 * (1 + 0.1 * k), lr, g)
    run_report([], root, tmp_path / "r", [], bootstrap_samples=0)
    frontier = figures[0]
    frontier.canvas.draw()
    ax = frontier.axes[0]
    (box,) = [t for t in ax.texts if "L0 ratio" in t.get_text()]
    assert box.get_text().count("\n") == 21
    legend, text = ax.get_legend().get_window_extent(), box.get_bbox_patch().get_window_extent()
    assert not legend.overlaps(text) and text.y1 < legend.y0 and text.x0 > ax.get_window_extent().x1


def test_shrinkage_plot_falls_back_to_raw_gamma_for_old_evaluations(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    root = tmp_path / "outputs"
    make_sweep(root)
    for m in root.glob("eval/relu*/metrics.json"):  # relu evaluated before γ centred existed
        d = json.loads(m.read_text())
        del d["relative_reconstruction_bias_centred"], d["ci"]["relative_reconstruction_bias_centred"]
        m.write_text(json.dumps(d))
    run_report([], root, tmp_path / "r", [], bootstrap_samples=0)
    ax = figures[1].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "gated" in labels and "relu (raw γ)" in labels
    relu = next(line for line in ax.get_lines() if line.get_label() == "relu (raw γ)")
    assert sorted(relu.get_ydata()) == sorted(g for _, _, g in RELU)


def test_run_report_on_explicit_paths(tmp_path):
    make_sweep(tmp_path / "outputs")
    one = tmp_path / "outputs" / "eval" / "relu0"
    out = run_report(
        [str(one), str(tmp_path / "outputs" / "eval" / "gated0")], tmp_path / "nowhere", tmp_path / "r", []
    )
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2
    # an outputs folder as a path: its eval/ is what is read
    out = run_report([str(tmp_path / "outputs")], tmp_path / "nowhere", tmp_path / "r", [], bootstrap_samples=0)
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 9
    with pytest.raises(ConfigError, match="does not exist.*out_dir=DIR"):
        run_report([str(tmp_path / "typo")], tmp_path / "outputs", tmp_path / "r", [])


def test_where_filters_by_alias_dotted_key_and_number(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root)
    make_eval(root, "other-model", "relu", 0.1, 30, 0.9, 0.9, model="pythia-70m")

    def n_rows(where):
        out = run_report([], root, tmp_path / "r", where)
        return len(list(csv.DictReader((out / "results.csv").open())))

    assert n_rows([]) == 10
    assert n_rows(["model=pythia-70m"]) == 1
    assert n_rows(["model.name=smollm2-135m", "sae=gated"]) == 4
    assert n_rows(["sae.name=relu", "l1=0.10"]) == 2  # numbers compare as numbers
    assert n_rows(["train.n_tokens=2_000_000", "sae=relu,gated"]) == 10
    assert n_rows(["tokens=2M", "sae=relu"]) == 6  # 5 smollm2 + 1 pythia
    with pytest.raises(ConfigError, match="none matches"):
        n_rows(["model=gpt2"])
    with pytest.raises(ConfigError, match="no evaluation has a config key"):
        n_rows(["modle=gpt2"])
    with pytest.raises(ConfigError, match="expected key=value"):
        n_rows(["gated"])


def test_series_split_by_train_tokens_and_never_mix_models(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root)
    make_eval(root, "g4m-a", "gated", 0.1, 8, 0.80, 1.0, train_tokens=4_000_000)
    make_eval(root, "g4m-b", "gated", 0.2, 16, 0.90, 1.0, train_tokens=4_000_000)
    make_eval(root, "pythia", "relu", 0.1, 30, 0.9, 0.9, model="pythia-70m")

    sites = group_series(collect([], root)[0])
    assert set(sites) == {("smollm2-135m", HOOK), ("pythia-70m", HOOK)}
    labels = [s.label for s in sites[("smollm2-135m", HOOK)]]
    assert labels == ["gated, train.n_tokens=2M", "gated, train.n_tokens=4M", "relu, train.n_tokens=2M"]
    out = run_report([], root, tmp_path / "r", [])
    md = (out / "results.md").read_text()
    assert "gated, train.n_tokens=2M / relu, train.n_tokens=2M" in md
    assert "train.n_tokens=4M / relu" not in md  # only series that differ in architecture alone


def test_empty_outputs_is_a_clear_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        run_report([], tmp_path / "outputs", tmp_path / "report", [])
    msg = str(e.value)
    assert "No evaluation results were found under" in msg and str(tmp_path / "outputs" / "eval") in msg
    assert "gsae eval" in msg and "sweeps/frontier.sh" in msg and "out_dir=DIR" in msg
    assert e.value.exit_code == 2
    assert not (tmp_path / "report").exists()


# ---- the CLI --------------------------------------------------------------------------------------


def test_cli_report_takes_out_dir_like_every_stage(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root, windows=True)
    p = gsae(
        "report",
        f"out_dir={root}",
        "eval.bootstrap_samples=50",
        "model=tiny",
        "--report-dir",
        str(tmp_path / "r"),
        "--where",
        "sae=relu,gated",
        "--evidence",
        str(tmp_path / "ev"),
    )
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "ev").glob("*/per_window.safetensors"))) == 9
    assert p.stdout.strip().splitlines()[-1] == str(tmp_path / "r")
    assert len(list(csv.DictReader((tmp_path / "r" / "results.csv").open()))) == 9
    assert (
        "paired bootstrap over the 8 windows of eval set evset; 50 resamples"
        in (tmp_path / "r" / "results.md").read_text()
    )
    # model=tiny is a valid key that a report cannot use: said, not silently ignored
    assert "model=tiny: valid, but gsae report only reads finished artifacts" in p.stderr and "--where" in p.stderr
    # the deprecated spelling still works and says what to write instead
    p = gsae("report", "--out-dir", str(root), "eval.bootstrap_samples=0", "--report-dir", str(tmp_path / "r2"))
    assert p.returncode == 0, p.stderr
    assert f"--out-dir is deprecated; write out_dir={root}" in p.stderr
    assert "no interval: eval.bootstrap_samples=0" in (tmp_path / "r2" / "results.md").read_text()


def test_cli_report_paths_and_bad_input(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root)
    p = gsae(
        "report",
        str(root / "eval" / "relu0"),
        str(root / "eval" / "gated1"),
        "out_dir=/nonexistent",
        "--report-dir",
        str(tmp_path / "r"),
    )
    assert p.returncode == 0, p.stderr
    assert len(list(csv.DictReader((tmp_path / "r" / "results.csv").open()))) == 2
    # an unknown key fails exactly as it does for every other stage
    bad = gsae("report", f"out_dir={root}", "eval.n_tokenz=5", "--report-dir", str(tmp_path / "r"))
    ref = gsae("show-config", "eval.n_tokenz=5")
    assert bad.returncode == ref.returncode == 2
    assert bad.stderr == ref.stderr and "eval.n_tokenz" in bad.stderr
    typo = gsae("report", str(tmp_path / "outptus"), "--report-dir", str(tmp_path / "r"))
    assert typo.returncode == 2 and "does not exist" in typo.stderr and "gsae report out_dir=DIR" in typo.stderr
    both = gsae("report", "--out-dir", str(root), f"out_dir={root}")
    assert both.returncode == 2 and "both --out-dir and out_dir=" in both.stderr


def test_doubling_check_pairs_t_with_2t(tmp_path, capsys):
    # At 2M tokens gated needs half relu's L0; at 4M a quarter: the ratio halves when the tokens
    # double (change 0.5, exact in every paired resample): not converged.
    root = tmp_path / "outputs"
    for t, gated_share in ((2_000_000, 2), (4_000_000, 4)):
        for i, (l0, lr) in enumerate(RELU_FRONT):
            make_eval(root, f"relu{t}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, train_tokens=t, windows=True)
            make_eval(
                root, f"gated{t}-{i}", "gated", 0.1 * (i + 1), l0 / gated_share, lr, 1.0, train_tokens=t, windows=True
            )
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=100, bootstrap_seed=0)
    checks = json.loads((out / "convergence.json").read_text())
    assert len(checks) == 1
    c = checks[0]
    assert c["tokens"] == [2_000_000, 4_000_000] and c["a"] == "gated, train.n_tokens=2M"
    assert c["span"] == pytest.approx([0.80, 0.96]) and c["margin"] == 0.05
    assert c["ratio"] == pytest.approx([0.5, 0.25]) and c["change"] == pytest.approx(0.5)
    assert c["change_interval"] == pytest.approx([0.5, 0.5]) and c["verdict"] == "not converged"
    assert c["n_valid"] == c["n_resamples"] == 100 and c["paired"] is True
    md = (out / "results.md").read_text()
    assert (
        "| gated / relu | 2M → 4M | 0.800–0.960 | 0.500 [0.500, 0.500] | 0.250 [0.250, 0.250] | "
        "0.500 [0.500, 0.500] | **not converged** |"
    ) in md
    assert "inside 1 ±0.05 (`report.equivalence_margin`)" in md
    assert "change 0.500, 95 % CI [0.500, 0.500]): not converged at margin ±0.05" in capsys.readouterr().err


def test_length_check_at_common_targets_where_the_old_rule_was_wrong(tmp_path, capsys):
    # Each λ moves one point up the same two curves at 2T (GATED_AT, RELU_AT): the ratio over
    # each length's own range changes by a factor below 0.9, but at the targets both lengths
    # cover it is the same, in every resample: converged.
    root = tmp_path / "outputs"
    for key, t in (("T", 2_000_000), ("2T", 4_000_000)):
        for i, ((l0r, lr), (l0g, _)) in enumerate(zip(RELU_AT[key], GATED_AT[key])):
            make_eval(root, f"relu{t}-{i}", "relu", 0.1 * (i + 1), l0r, lr, 0.9, train_tokens=t, windows=True)
            make_eval(root, f"gated{t}-{i}", "gated", 0.1 * (i + 1), l0g, lr, 1.0, train_tokens=t, windows=True)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=60, bootstrap_seed=0)
    own = {r["a"]: r["geomean"] for r in json.loads((out / "ratios.json").read_text())}
    assert own["gated, train.n_tokens=4M"] / own["gated, train.n_tokens=2M"] < 0.9
    (c,) = json.loads((out / "convergence.json").read_text())
    assert c["span"] == pytest.approx([0.88, 0.93])
    assert c["ratio"] == pytest.approx([0.5 * math.sqrt(0.6)] * 2) and c["change"] == pytest.approx(1.0)
    assert c["change_interval"] == pytest.approx([1.0, 1.0]) and c["verdict"] == "converged"
    assert "| gated / relu | 2M → 4M | 0.880–0.930 | 0.387 [" in (out / "results.md").read_text()
    # a margin of 0 still admits an exact 1.0; the margin is read from the config by the CLI
    out = run_report([], root, tmp_path / "r0", [], bootstrap_samples=60, equivalence_margin=0.0)
    assert json.loads((out / "convergence.json").read_text())[0]["verdict"] == "converged"


def test_a_setting_that_moves_the_ratio_is_found_and_one_that_does_not_is_not(tmp_path):
    # gated / relu is 1/2 with the default shuffle window (8 chunks) and, at a window of 256, 1/2
    # at every target for lr-sweep-like relu points shifted along the same curve, or 1/2.5: the
    # check sees change 1.0 (converged: no change beyond the margin) or 0.8 (not converged).
    for share, verdict, change in ((2.0, "converged", 1.0), (2.5, "not converged", 0.8)):
        root = tmp_path / f"outputs{share}"
        for window, front, g in ((8, RELU_FRONT[:3], 2.0), (256, RELU_FRONT[1:], share)):
            for i, (l0, lr) in enumerate(front):
                make_eval(root, f"relu{window}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, shuffle=window)
                make_eval(
                    root, f"gated{window}-{i}", "gated", 0.1 * (i + 1), l0 / g, lr, 1.0, windows=True, shuffle=window
                )
        out = run_report([], root, tmp_path / f"r{share}", [], bootstrap_samples=40)
        (c,) = json.loads((out / "settings.json").read_text())
        assert (c["setting"], c["values"]) == ("train.shuffle_buffer_chunks", [8, 256])
        assert c["span"] == pytest.approx([0.88, 0.93])  # the range all four frontiers cover
        assert c["change"] == pytest.approx(change) and c["change_interval"] == pytest.approx([change, change])
        assert c["verdict"] == verdict
        md = (out / "results.md").read_text()
        assert "### Does a setting move the ratio?" in md
        assert "| gated / relu | `train.shuffle_buffer_chunks`: 8 → 256 | 0.880–0.930 | 0.500 [0.500, 0.500] |" in md
        # gated at 256 against relu at 8 differs in more than the architecture: no such ratio
        assert len(json.loads((out / "ratios.json").read_text())) == 2
    assert json.loads((tmp_path / "r2.0" / "convergence.json").read_text()) == []  # no two lengths here


def test_a_gated_ablation_is_checked_against_the_gated_sae_through_the_same_relu(tmp_path):
    # gated needs 1/2 of relu's L0, the untied ablation 1/1.6: tying the weights changes the ratio
    # to relu by 0.5 / 0.625 = 0.8, and the relu series (which has no tie_weights) is shared.
    root = tmp_path / "outputs"
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"relu-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True)
        make_eval(root, f"gated-{i}", "gated", 0.1 * (i + 1), l0 / 2, lr, 1.0, windows=True)
        make_eval(root, f"untied-{i}", "gated", 0.1 * (i + 1), l0 / 1.6, lr, 1.0, windows=True, tie_weights=False)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20)
    (c,) = json.loads((out / "settings.json").read_text())
    assert (c["setting"], c["values"]) == ("sae.tie_weights", [False, True])
    assert c["change"] == pytest.approx(0.8) and c["verdict"] == "not converged"
    assert (
        "| gated / relu | `sae.tie_weights`: False → True | 0.800–0.960 | 0.625 [0.625, 0.625] |"
        in (out / "results.md").read_text()
    )


def test_the_margin_is_the_config_key_report_equivalence_margin(tmp_path):
    # gated / relu 1/2 at 2M and 1/2.2 at 4M: a change of 0.909, exact in every resample.
    from gsae_cli.report import report_command

    root = tmp_path / "outputs"
    for t, share in ((2_000_000, 2.0), (4_000_000, 2.2)):
        for i, (l0, lr) in enumerate(RELU_FRONT):
            make_eval(root, f"relu{t}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, train_tokens=t, windows=True)
            make_eval(root, f"gated{t}-{i}", "gated", 0.1 * (i + 1), l0 / share, lr, 1.0, train_tokens=t, windows=True)
    verdicts = []
    for m in ("0.05", "0.1"):
        out = report_command(
            [f"out_dir={root}", "eval.bootstrap_samples=20", f"report.equivalence_margin={m}"], tmp_path / f"r{m}", []
        )
        (c,) = json.loads((out / "convergence.json").read_text())
        verdicts.append((c["margin"], c["verdict"]))
    assert verdicts == [(0.05, "not converged"), (0.1, "converged")]


def test_lengths_whose_frontiers_share_no_range_are_not_comparable(tmp_path):
    # T covers loss recovered 0.80-0.88, 2T 0.93-0.96: no target lies on all four frontiers.
    root = tmp_path / "outputs"
    for t, idx in ((2_000_000, (0, 1)), (4_000_000, (2, 3))):
        for i in idx:
            l0, lr = RELU_FRONT[i]
            make_eval(root, f"relu{t}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, train_tokens=t, windows=True)
            make_eval(root, f"gated{t}-{i}", "gated", 0.1 * (i + 1), l0 / 2, lr, 1.0, train_tokens=t, windows=True)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20)
    (c,) = json.loads((out / "convergence.json").read_text())
    assert c["verdict"] == "not comparable" and c["span"] is None and c["change"] is None
    assert "| gated / relu | 2M → 4M | – | 0.500 [0.500, 0.500] | " not in (out / "results.md").read_text()
    assert (
        "| – | – | – | **not comparable** (the four frontiers share no loss-recovered range) |"
        in (out / "results.md").read_text()
    )


def test_length_checks_beyond_a_doubling_and_across_stores(tmp_path, capsys):
    # gated / relu = 1/2 at 2M and 4M (one 4M-row store) and 1/4 at 6M (a 6M-row store): every
    # longer length is compared, the store size does not keep the lengths apart, and the cells
    # say what is not a plain doubling.
    root = tmp_path / "outputs"
    for t, store, share in ((2_000_000, 4_000_000, 2), (4_000_000, 4_000_000, 2), (6_000_000, 6_000_000, 4)):
        for i, (l0, lr) in enumerate(RELU_FRONT):
            make_eval(
                root,
                f"relu{t}-{i}",
                "relu",
                0.1 * (i + 1),
                l0,
                lr,
                0.9,
                train_tokens=t,
                windows=True,
                harvest_tokens=store,
            )
            make_eval(
                root,
                f"gated{t}-{i}",
                "gated",
                0.1 * (i + 1),
                l0 / share,
                lr,
                1.0,
                train_tokens=t,
                windows=True,
                harvest_tokens=store,
            )
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=50, bootstrap_seed=0)
    checks = json.loads((out / "convergence.json").read_text())
    assert [c["tokens"] for c in checks] == [[2_000_000, 4_000_000], [2_000_000, 6_000_000], [4_000_000, 6_000_000]]
    assert [c["factor"] for c in checks] == pytest.approx([2.0, 3.0, 1.5])
    assert [c["stores"] for c in checks] == [[4_000_000, 4_000_000], [4_000_000, 6_000_000], [4_000_000, 6_000_000]]
    assert [c["change"] for c in checks] == pytest.approx([1.0, 0.5, 0.5])
    assert [c["verdict"] for c in checks] == ["converged", "not converged", "not converged"]
    assert checks[2]["change_interval"] == pytest.approx([0.5, 0.5])  # paired: exact in every resample
    md = (out / "results.md").read_text()
    assert "| gated / relu | 2M → 4M | 0.800–0.960 | 0.500 [0.500, 0.500] | 0.500 [0.500, 0.500] | " in md
    assert "| gated / relu | 4M → 6M (1.50x), stores of 4M and 6M rows | 0.800–0.960 | 0.500 [" in md
    assert "4M → 6M tokens (1.50x), at loss recovered 0.800–0.960: ratio 0.500 → 0.250 (change 0.500" in (
        capsys.readouterr().err
    )


def test_equal_width_and_equal_compute_ratios_side_by_side(tmp_path):
    # relu at 4x (RELU_FRONT) and at 6x (0.8 of its L0 everywhere); gated at 4x, half relu-4x's.
    # Both ratios are computed and say which footing they are on; relu 4x / 6x is not a ratio.
    root = tmp_path / "outputs"
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"relu{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True)
        make_eval(root, f"relu6-{i}", "relu", 0.1 * (i + 1), 0.8 * l0, lr, 0.9, windows=True, width=6)
        make_eval(root, f"gated{i}", "gated", 0.1 * (i + 1), l0 / 2, lr, 1.0, windows=True)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20)
    ratios = {(r["a"], r["b"]): r for r in json.loads((out / "ratios.json").read_text())}
    assert set(ratios) == {
        ("gated, sae.expansion_factor=4", "relu, sae.expansion_factor=4"),
        ("gated, sae.expansion_factor=4", "relu, sae.expansion_factor=6"),
    }
    same = ratios[("gated, sae.expansion_factor=4", "relu, sae.expansion_factor=4")]
    compute = ratios[("gated, sae.expansion_factor=4", "relu, sae.expansion_factor=6")]
    assert same["footing"] == "equal width" and same["geomean"] == pytest.approx(0.5)
    assert compute["footing"] == "equal compute" and compute["widths"] == [4, 6]
    assert compute["geomean"] == pytest.approx(0.625) and compute["interval"] == pytest.approx([0.625, 0.625])
    md = (out / "results.md").read_text()
    assert "- **gated, sae.expansion_factor=4 / relu, sae.expansion_factor=4**, equal width (4x): **0.500**" in md
    assert (
        "- **gated, sae.expansion_factor=4 / relu, sae.expansion_factor=6**, equal compute (relu 6x, 1.5x the "
        "gated 4x: the paper's footing): **0.625**"
    ) in md


def test_points_that_are_not_a_sparse_code_are_marked_and_left_out_of_the_sparse_ratio(tmp_path):
    # d_sae 1,000: relu's L0 160 is a mean density of 16 % (dense), every other point at most 8 %.
    # Gated needs 1/2 of relu's L0 up to loss recovered 0.93 and 1/3 at 0.96, so the ratio over
    # every point (0.80-0.96) is below the sparse part's (0.80-0.93, where it is 0.5 exactly).
    root = tmp_path / "outputs"
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"relu{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, d_sae=1000)
        make_eval(
            root, f"gated{i}", "gated", 0.1 * (i + 1), l0 / (3 if i == 3 else 2), lr, 1.0, windows=True, d_sae=1000
        )
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(float(r["mean_density"]) for r in rows if r["architecture"] == "relu") == pytest.approx(
        [0.02, 0.04, 0.08, 0.16]
    )
    (r,) = json.loads((out / "ratios.json").read_text())
    assert r["geomean"] < 0.49 and r["overlap"] == pytest.approx([0.80, 0.96])
    sp = r["sparse"]
    assert sp["n_dense_left_out"] == 1 and sp["overlap"] == pytest.approx([0.80, 0.93])
    assert sp["geomean"] == pytest.approx(0.5) and sp["interval"] == pytest.approx([0.5, 0.5])
    md = (out / "results.md").read_text()
    assert "| relu | 0.4 ‡ |" in md and md.count(" ‡ |") == 1
    assert "‡ mean feature density (L0 / d_sae) above 10%: not a sparse code" in md
    assert "Over the sparse part alone (1 ‡ point(s) left out): **0.500** over loss recovered 0.800–0.930" in md
    relu = [s for s in group_series(collect([], root)[0])[("smollm2-135m", HOOK)] if s.architecture == "relu"][0]
    assert [p.dense for p in _plottable(relu, "loss_recovered")] == [False, False, False, True]


def test_keys_that_change_no_result_never_split_a_series(tmp_path):
    """An SAE from a newer gsae records more config keys (threads, harvest.rank, store_url, ...,
    train.data_streams=1): none of them changes what it holds, so it joins the older SAEs' series."""
    root = tmp_path / "outputs"
    make_sweep(root)
    for name in ("relu0", "gated1"):
        path = root / "eval" / name / "metrics.json"
        m = json.loads(path.read_text())
        m["config"].update(threads=None, store_url=None)
        m["config"]["harvest"] = {"rank": None, "world_size": None}
        m["config"]["train"].update(data_streams=1, prefetch_chunks=2)
        path.write_text(json.dumps(m))
    labels = [s.label for s in group_series(collect([], root)[0])[("smollm2-135m", HOOK)]]
    assert labels == ["gated", "relu"]
    m["config"]["train"]["data_streams"] = 4  # another data order: a series of its own
    path.write_text(json.dumps(m))
    labels = [s.label for s in group_series(collect([], root)[0])[("smollm2-135m", HOOK)]]
    assert sorted(labels) == ["gated", "gated, train.data_streams=4", "relu"]


def test_another_eval_set_never_joins_a_frontier(tmp_path):
    """Evaluations whose configs agree but whose held-out windows differ (here: the default
    corpus's text changed between versions, which the config does not show) are separate
    series, and each compares only with series on its own eval set."""
    root = tmp_path / "outputs"
    make_sweep(root, windows=True, eval_set="v2")
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"v3-relu{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, eval_set="v3")
        make_eval(root, f"v3-gated{i}", "gated", 0.1 * (i + 1), l0 / 4, lr, 1.0, windows=True, eval_set="v3")
    labels = [s.label for s in group_series(collect([], root)[0])[("smollm2-135m", HOOK)]]
    assert labels == ["gated, eval_set=v2", "gated, eval_set=v3", "relu, eval_set=v2", "relu, eval_set=v3"]
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=50)
    ratios = json.loads((out / "ratios.json").read_text())
    assert [(r["a"], r["b"]) for r in ratios] == [
        ("gated, eval_set=v2", "relu, eval_set=v2"),
        ("gated, eval_set=v3", "relu, eval_set=v3"),
    ]
    assert all(r["paired"] for r in ratios)
    assert ratios[1]["geomean"] == pytest.approx(0.25)


def test_seed_summary_by_hand():
    # log ratios log(0.5) + (0, 0.1, -0.1): mean log(0.5), sample sd 0.1; t(0.975, 2 df) = 4.302653
    sp = seed_summary([0.5, 0.5 * math.exp(0.1), 0.5 * math.exp(-0.1)])
    t = 4.302652729749464
    assert sp["geomean"] == pytest.approx(0.5) and sp["sd_log"] == pytest.approx(0.1) and sp["t"] == pytest.approx(t)
    assert sp["interval"] == pytest.approx(
        [0.5 * math.exp(-t * 0.1 / math.sqrt(3)), 0.5 * math.exp(t * 0.1 / math.sqrt(3))]
    )
    assert sp["prediction"] == pytest.approx(
        [0.5 * math.exp(-t * 0.1 * math.sqrt(4 / 3)), 0.5 * math.exp(t * 0.1 * math.sqrt(4 / 3))]
    )
    assert seed_summary([2.0, 2.0])["interval"] == pytest.approx([2.0, 2.0])  # no spread, no width
    with pytest.raises(ValueError):
        seed_summary([0.5])


def make_seeded(root: Path, runs) -> None:
    """relu on RELU_FRONT and gated at 0.5·e^shift of its L0, for each (seed, tokens, shift, indices)."""
    for seed, t, shift, idx in runs:
        for i in idx:
            l0, lr = RELU_FRONT[i]
            make_eval(
                root,
                f"relu-{seed}-{t}-{i}",
                "relu",
                0.1 * (i + 1),
                l0,
                lr,
                0.9,
                train_tokens=t,
                windows=True,
                seed=seed,
            )
            make_eval(
                root,
                f"gated-{seed}-{t}-{i}",
                "gated",
                0.1 * (i + 1),
                l0 * 0.5 * math.exp(shift),
                lr,
                1.0,
                train_tokens=t,
                windows=True,
                seed=seed,
            )


def test_seed_spread_at_common_targets_at_both_lengths(tmp_path, capsys):
    # Seed 0 runs λ 0.1-0.4 at 2M (gated/relu 0.5); seeds 1 and 2 repeat λ 0.2, 0.3 with ratios
    # 0.5·e^±0.1. At 4M seeds 0 and 1 run λ 0.2, 0.3 at 0.5·e^0.05 and 0.5·e^0.15. Each length's
    # spread is over the range every seed there covers; the seed-0 check moves by e^0.05 = 1.051:
    # exact in every resample, just outside a margin of 0.05.
    root = tmp_path / "outputs"
    runs = [
        (0, 2_000_000, 0.0, range(4)),
        (1, 2_000_000, 0.1, (1, 2)),
        (2, 2_000_000, -0.1, (1, 2)),
        (0, 4_000_000, 0.05, (1, 2)),
        (1, 4_000_000, 0.15, (1, 2)),
    ]
    make_seeded(root, runs)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=50, bootstrap_seed=0)
    sp2, sp4 = json.loads((out / "seeds.json").read_text())
    assert (sp2["a"], sp2["b"], sp2["tokens"]) == ("gated, train.n_tokens=2M", "relu, train.n_tokens=2M", 2_000_000)
    assert sp2["seeds"] == [0, 1, 2] and sp2["span"] == pytest.approx([0.88, 0.93])
    assert sp2["ratios"] == pytest.approx([0.5, 0.5 * math.exp(0.1), 0.5 * math.exp(-0.1)])
    assert sp2["geomean"] == pytest.approx(0.5) and sp2["sd_log"] == pytest.approx(0.1)
    assert sp2["windows_interval"][1] == pytest.approx([0.5 * math.exp(0.1)] * 2)
    assert sp4["tokens"] == 4_000_000 and sp4["seeds"] == [0, 1]
    assert sp4["ratios"] == pytest.approx([0.5 * math.exp(0.05), 0.5 * math.exp(0.15)])
    checks = json.loads((out / "convergence.json").read_text())
    assert [(c["a"], c["tokens"]) for c in checks] == [
        ("gated, train.n_tokens=2M, train.seed=0", [2_000_000, 4_000_000]),
        ("gated, train.n_tokens=2M, train.seed=1", [2_000_000, 4_000_000]),
    ]
    assert checks[0]["change"] == pytest.approx(math.exp(0.05)) and checks[0]["verdict"] == "not converged"
    md = (out / "results.md").read_text()
    assert "### Run-to-run spread: the ratio over training seeds" in md
    assert "| 2M | 0.880–0.930 | 0.500 (seed 0), 0.553 (seed 1), 0.452 (seed 2) | 0.500 [" in md
    assert "seeds 0, 1, 2, loss recovered 0.880–0.930: ratios 0.500, 0.553, 0.452" in capsys.readouterr().err
    # the plot draws seeds 1 and 2 around seed 0's line, not as lines of their own
    series = group_series(collect([], root)[0])[("smollm2-135m", HOOK)]
    replicas = _seed_replicas(series)
    by_label = {s.label: s for s in series}
    assert sorted(s.label for s in series if id(s) in replicas) == [
        "gated, train.n_tokens=2M, train.seed=1",
        "gated, train.n_tokens=2M, train.seed=2",
        "gated, train.n_tokens=4M, train.seed=1",
        "relu, train.n_tokens=2M, train.seed=1",
        "relu, train.n_tokens=2M, train.seed=2",
        "relu, train.n_tokens=4M, train.seed=1",
    ]
    assert (
        series[replicas[id(by_label["relu, train.n_tokens=2M, train.seed=2"])]].label
        == "relu, train.n_tokens=2M, train.seed=0"
    )


def test_a_seed_without_ratio_is_named_and_seeds_without_a_common_range_are_not_comparable(tmp_path):
    # Seed 3's gated frontier never meets relu's loss recovered: no ratio, and the spread names
    # it. At 4M, seed 0 covers 0.80-0.88 and seed 1 0.93-0.96: no common range.
    root = tmp_path / "outputs"
    runs = [
        (0, 2_000_000, 0.0, range(4)),
        (1, 2_000_000, 0.1, (1, 2)),
        (2, 2_000_000, -0.1, (1, 2)),
        (0, 4_000_000, 0.0, (0, 1)),
        (1, 4_000_000, 0.0, (2, 3)),
    ]
    make_seeded(root, runs)
    for i in (1, 2):
        l0, lr = RELU_FRONT[i]
        make_eval(root, f"relu-3-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, seed=3)
        make_eval(root, f"gated-3-{i}", "gated", 0.1 * (i + 1), l0, 0.99 - 0.001 * i, 1.0, windows=True, seed=3)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20, bootstrap_seed=0)
    sp2, sp4 = json.loads((out / "seeds.json").read_text())
    assert sp2["seeds"] == [0, 1, 2] and sp2["dropped"] == [{"seed": 3, "reason": sp2["dropped"][0]["reason"]}]
    assert "overlap" in sp2["dropped"][0]["reason"]
    why = (
        "the seeds' frontiers share no loss-recovered range: gated at seed 0's frontier ends at loss recovered "
        "0.880 (0.800-0.880), below where gated at seed 1's begins (0.930-0.960)"
    )
    assert sp4["span"] is None and sp4["reason"] == why
    md = (out / "results.md").read_text()
    assert "Left out of gated / relu: seed 3, which gives no ratio (" in md
    assert f"| 4M | – | not comparable: {why} (seeds 0, 1) |" in md


def test_eval_set_from_summary_when_the_per_window_file_is_missing(tmp_path):
    root = tmp_path / "outputs"
    d = make_eval(root, "lost-windows", "relu", 0.1, 20, 0.8, 0.9)
    assert collect([], root)[0][0].row["eval_set"] is None
    (d / "summary.json").write_text(json.dumps({"eval_set": {"hash": "abc123", "path": None}}))
    assert collect([], root)[0][0].row["eval_set"] == "abc123"


def test_evidence_rebuilds_the_report_byte_for_byte(tmp_path, monkeypatch):
    """--evidence writes each kept evaluation's metrics and per-window scalar sums, makes the
    report from them, and `gsae report EVIDENCE` anywhere gives the same files, byte for byte;
    no absolute path of the machine that made them is left in the report."""
    import shutil

    from safetensors import safe_open

    root = tmp_path / "machine" / "outputs"
    for t, share in ((2_000_000, 2), (4_000_000, 2.2)):
        for i, (l0, lr) in enumerate(RELU_FRONT):
            make_eval(root, f"relu{t}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, train_tokens=t, windows=True)
            make_eval(root, f"gated{t}-{i}", "gated", 0.1 * (i + 1), l0 / share, lr, 1.0, train_tokens=t, windows=True)
    make_eval(root, "other-model", "relu", 0.1, 20, 0.8, 0.9, model="gpt2", windows=True)
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    monkeypatch.chdir(repo)
    run_report(
        [], root, Path("docs/study"), ["model=smollm2-135m"], bootstrap_samples=50, evidence=Path("docs/study/evidence")
    )
    ev = sorted(p.name for p in Path("docs/study/evidence").iterdir() if p.is_dir())
    assert ev == sorted(f"{a}{t}-{i}" for a in ("relu", "gated") for t in (2_000_000, 4_000_000) for i in range(4))
    with safe_open("docs/study/evidence/relu2000000-0/per_window.safetensors", framework="pt") as fh:
        assert set(fh.keys()) == set(metrics.WINDOW_SCALARS)  # no [n_windows, d_model] sums
    made = {p.name: p.read_bytes() for p in Path("docs/study").iterdir() if p.is_file()}
    assert set(made) == {
        "results.csv",
        "results.md",
        "ratios.json",
        "convergence.json",
        "seeds.json",
        "settings.json",
        "frontier.png",
        "shrinkage.png",
    }
    # no path of the machine, but the one the header names as the evaluations' source
    assert all(str(tmp_path) not in made[n].decode() for n in made if not n.endswith((".png", ".md")))
    assert "evidence/relu2000000-0" in made["results.csv"].decode()
    assert (
        f"Evaluations collected from {root / 'eval'}, filtered by `model=smollm2-135m`; their evidence is in "
        "evidence (relative to this report)."
    ) in made["results.md"].decode()
    # the repository cloned elsewhere, the machine's outputs gone: the same files
    shutil.rmtree(root)
    clone = tmp_path / "clone"
    shutil.copytree(repo / "docs" / "study" / "evidence", clone / "docs" / "study" / "evidence")
    monkeypatch.chdir(clone)
    run_report([str(clone / "docs/study/evidence")], Path("nowhere"), clone / "docs/study", [], bootstrap_samples=50)
    for name, data in made.items():  # however the paths are spelt
        assert (clone / "docs" / "study" / name).read_bytes() == data, name


def test_evidence_goes_to_a_folder_of_its_own(tmp_path):
    root = tmp_path / "outputs"
    make_sweep(root, windows=True)
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and holds no collected.json"):
        run_report([], root, tmp_path / "r", [], bootstrap_samples=0, evidence=tmp_path / "ev")
    assert (tmp_path / "ev" / "notes.txt").read_text() == "mine"
    # the evaluations themselves are never the evidence folder: nothing there is removed or rewritten
    before = {p: p.read_bytes() for p in (root / "eval").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="holds the evaluation"):
        run_report([], root, tmp_path / "r", ["sae=gated"], bootstrap_samples=0, evidence=root / "eval")
    assert {p: p.read_bytes() for p in (root / "eval").rglob("*") if p.is_file()} == before


def test_every_architecture_against_gated_at_the_targets_all_frontiers_cover(tmp_path):
    """gated needs 1/2 of relu's L0 on relu's curve; topk (k where λ would be) needs exactly
    gated's, and jumprelu 0.9x gated's; jumprelu's frontier covers only part of the range, so all
    three ratios are taken there: 0.5, 1.0 and 1/0.9, with intervals of zero width (every window
    has the same sums). Verdicts by ±5 %: gated needs fewer than relu, equals topk, and needs
    more than jumprelu. With two architectures only, no such table."""
    root = tmp_path / "outputs"
    for i, (l0, lr) in enumerate(RELU_FRONT):
        make_eval(root, f"relu{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True)
        make_eval(root, f"gated{i}", "gated", 0.1 * (i + 1), l0 / 2, lr, 1.0, windows=True)
        make_eval(root, f"topk{i}", "topk", 0.1, l0 / 2, lr, 1.0, windows=True)
    for i, (l0, lr) in enumerate(RELU_FRONT[1:3]):
        make_eval(root, f"jumprelu{i}", "jumprelu", 0.01 * (i + 1), l0 / 2 * 0.9, lr, 1.0, windows=True)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=40)
    (site,) = json.loads((out / "against.json").read_text())
    assert site["reference"] == "gated" and site["span"] == pytest.approx([RELU_FRONT[1][1], RELU_FRONT[2][1]])
    rows = {r["b"]: r for r in site["rows"]}
    assert rows["relu"]["ratio"] == pytest.approx(0.5) and rows["relu"]["verdict"] == "gated needs fewer"
    assert rows["topk"]["ratio"] == pytest.approx(1.0) and rows["topk"]["verdict"] == "equal within ±5%"
    assert rows["jumprelu"]["ratio"] == pytest.approx(1 / 0.9) and rows["jumprelu"]["verdict"] == "gated needs more"
    assert rows["topk"]["interval"] == pytest.approx([1.0, 1.0])
    md = (out / "results.md").read_text()
    assert "### Every architecture against gated, at the same loss-recovered targets" in md
    assert "| topk | 1.000 [1.000, 1.000] | **equal within ±5%** |" in md
    assert "λ / k" not in md  # (these made-up topk evaluations record no k)
    two = tmp_path / "two"
    make_sweep(two, windows=True)
    assert not (run_report([], two, tmp_path / "r2", [], bootstrap_samples=10) / "against.json").exists()


def test_every_architecture_against_gated_at_each_seed_and_over_seeds(tmp_path):
    """Seeds 0, 1, 2 with gated at 0.5·e^d of relu's L0 and e^d of topk's (d = 0, 0.1, -0.1);
    seed 0 spans RELU_FRONT, seeds 1 and 2 its middle two points. One table per seed at its own
    range; over seeds, at the range every seed covers (0.88-0.93), relu's ratios are
    0.5·(1, e^0.1, e^-0.1): geometric mean 0.5, log sd 0.1, Student t (2 df, 4.303) interval
    0.5·exp(±4.303·0.1/√3) = [0.390, 0.641], so gated needs fewer; topk's [0.780, 1.282] is
    not settled."""
    root = tmp_path / "outputs"
    for seed, d, idx in ((0, 0.0, range(4)), (1, 0.1, (1, 2)), (2, -0.1, (1, 2))):
        for i in idx:
            l0, lr = RELU_FRONT[i]
            make_eval(root, f"relu{seed}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, seed=seed)
            gated = l0 * 0.5 * math.exp(d)
            make_eval(root, f"gated{seed}-{i}", "gated", 0.1 * (i + 1), gated, lr, 1.0, windows=True, seed=seed)
            make_eval(root, f"topk{seed}-{i}", "topk", 0.1, l0 * 0.5, lr, 1.0, windows=True, seed=seed)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20)
    *tables, over = json.loads((out / "against.json").read_text())
    assert [t["seed"] for t in tables] == [0, 1, 2]
    assert tables[0]["span"] == pytest.approx([0.80, 0.96]) and tables[1]["span"] == pytest.approx([0.88, 0.93])
    assert [r["ratio"] for r in tables[1]["rows"]] == pytest.approx([0.5 * math.exp(0.1), math.exp(0.1)])
    assert over["seeds"] == [0, 1, 2] and over["span"] == pytest.approx([0.88, 0.93])
    relu, topk = over["rows"]
    assert (relu["b"], topk["b"]) == ("relu", "topk")
    assert relu["ratios"] == pytest.approx([0.5, 0.5 * math.exp(0.1), 0.5 * math.exp(-0.1)])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert relu["geomean"] == pytest.approx(0.5) and relu["sd_log"] == pytest.approx(0.1)
    assert relu["interval"] == pytest.approx([0.5 * math.exp(-half), 0.5 * math.exp(half)], rel=1e-5)
    assert relu["verdict"] == "gated needs fewer" and topk["verdict"] == "not settled"
    assert topk["interval"] == pytest.approx([math.exp(-half), math.exp(half)], rel=1e-5)
    md = (out / "results.md").read_text()
    assert "Seed 1, loss recovered 0.880–0.930." in md
    assert "| relu | 0.553 [0.553, 0.553] | **gated needs fewer** |" in md  # seed 1: 0.5·e^0.1
    assert (
        "| topk | 1.000, 1.105, 0.905 | 1.000 [0.780, 1.282] | [0.608, 1.643] | **not settled** |" in md
    )  # exp(±t·0.1·√(4/3))


def test_a_seed_whose_frontiers_share_no_range_gets_no_table_and_the_reason_names_them(tmp_path):
    """Seed 1's topk frontier lies 0.2 lower in loss recovered (0.60-0.76), ending below where
    its gated begins (0.80): seed 1 has no table, and no spread over seeds can be taken; both
    say which two frontiers to extend towards each other."""
    root = tmp_path / "outputs"
    for seed, shift in ((0, 0.0), (1, 0.2)):
        for i, (l0, lr) in enumerate(RELU_FRONT):
            make_eval(root, f"relu{seed}-{i}", "relu", 0.1 * (i + 1), l0, lr, 0.9, windows=True, seed=seed)
            make_eval(root, f"gated{seed}-{i}", "gated", 0.1 * (i + 1), l0 / 2, lr, 1.0, windows=True, seed=seed)
            make_eval(root, f"topk{seed}-{i}", "topk", 0.1, l0 / 2, lr - shift, 1.0, windows=True, seed=seed)
    out = run_report([], root, tmp_path / "r", [], bootstrap_samples=20)
    seed0, seed1, over = json.loads((out / "against.json").read_text())
    assert seed0["span"] == pytest.approx([0.80, 0.96]) and seed1["span"] is None and over["span"] is None
    why = "topk's frontier ends at loss recovered 0.760 (0.600-0.760), below where gated's begins (0.800-0.960)"
    assert seed1["interval_reason"] == f"the frontiers share no loss-recovered range: {why}"
    at_seeds = why.replace("topk's", "topk at seed 1's").replace("gated's", "gated at seed 0's")
    assert over["reason"] == f"the frontiers share no loss-recovered range: {at_seeds}"
    md = (out / "results.md").read_text()
    assert f"Seed 1: no table, the frontiers share no loss-recovered range: {why}." in md
    assert "Seed 1, loss recovered" not in md and "| topk | – |" not in md
