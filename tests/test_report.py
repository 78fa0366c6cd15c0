"""`gsae report`: Pareto frontier and matched-L0 maths on hand-computed numbers, and the report
files written from hand-made eval artifacts (no model needed)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from gsae_cli.errors import ConfigError
from gsae_cli.report import (group_series, l0_at_loss_recovered, matched_l0_ratios, pareto_frontier,
                             run_report)

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
    assert l0_at_loss_recovered(front, 0.9) == pytest.approx(20.0)          # sqrt(10 * 40)
    assert l0_at_loss_recovered(front, 0.85) == pytest.approx(math.sqrt(200))  # 10 * 4 ** 0.25
    assert l0_at_loss_recovered(front, 0.8) == pytest.approx(10.0)
    assert l0_at_loss_recovered(front, 1.0) == pytest.approx(40.0)
    assert l0_at_loss_recovered(front, 0.79) is None                         # no extrapolation
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


def test_matched_l0_ratio_without_overlap_says_why():
    r = matched_l0_ratios([(10, 0.80), (20, 0.85)], [(30, 0.90), (60, 0.95)])
    assert r["geomean"] is None and r["ratios"] == []
    assert "do not overlap" in r["reason"]
    assert matched_l0_ratios([], [(1, 0.5)])["reason"].startswith("no usable points")


# ---- run_report on hand-made artifacts ----------------------------------------------------------

RELU = [(20, 0.80, 0.90), (40, 0.88, 0.92), (80, 0.93, 0.95), (160, 0.96, 0.97), (100, 0.90, 0.93)]
GATED = [(10, 0.80, 1.00), (20, 0.88, 0.99), (40, 0.93, 1.01), (80, 0.96, 1.00)]


def make_eval(root: Path, name: str, arch: str, l1: float, l0: float, lr: float, gamma: float,
              model: str = "smollm2-135m", train_tokens: int = 2_000_000, complete: bool = True) -> Path:
    d = root / "eval" / name
    d.mkdir(parents=True)
    config = {"model": {"name": model, "source": "gguf"}, "hook": "blocks.12.hook_resid_pre",
              "sae": {"name": arch, "l1_coefficient": l1, "expansion_factor": 4, "path": None,
                      "tie_weights": True, "aux_loss": True, "freeze_aux_decoder": True},
              "train": {"n_tokens": train_tokens, "batch_size": 4096, "log_every": 10},
              "eval": {"n_tokens": 16384}, "data": {"name": "gsae-default"}, "out_dir": str(root), "device": "cpu"}
    metrics = {"l0": l0, "loss_recovered": lr, "ce_clean": 3.0, "ce_spliced": 3.0 + (1 - lr) * 2,
               "ce_zero_ablation": 5.0, "delta_loss": (1 - lr) * 2, "kl_div": (1 - lr), "relative_reconstruction_bias": gamma,
               "nmse": 0.1, "explained_variance": 0.9, "frac_dead": 0.01, "frac_dense": 0.0, "n_tokens": 16384,
               "config": config, "sae": {"path": f"/x/{name}", "architecture": arch, "l1_coefficient": l1}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    if complete:
        (d / "COMPLETE").write_text("done\n")
    return d


def make_sweep(root: Path) -> None:
    for i, (l0, lr, g) in enumerate(RELU):
        make_eval(root, f"relu{i}", "relu", 0.1 * (i + 1), l0, lr, g)
    for i, (l0, lr, g) in enumerate(GATED):
        make_eval(root, f"gated{i}", "gated", 0.1 * (i + 1), l0, lr, g)


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
    for png in ("frontier.png", "shrinkage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "gated / relu" in md and "**0.500**" in md
    # sorted by architecture, then L0: gated rows come first, each block by increasing L0
    series_col = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| gated") or ln.startswith("| relu")]
    assert series_col == ["gated"] * 4 + ["relu"] * 5
    err = capsys.readouterr().err
    assert "skipping unfinished evaluation" in err
    assert "L0 ratio at matched loss recovered = 0.500" in err


def test_run_report_on_explicit_paths(tmp_path):
    make_sweep(tmp_path / "outputs")
    one = tmp_path / "outputs" / "eval" / "relu0"
    out = run_report([str(one), str(tmp_path / "outputs" / "eval" / "gated0")], tmp_path / "nowhere",
                     tmp_path / "r", [])
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2
    with pytest.raises(ConfigError, match="does not exist"):
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
    assert n_rows(["sae.name=relu", "l1=0.10"]) == 2          # numbers compare as numbers
    assert n_rows(["train.n_tokens=2_000_000", "sae=relu,gated"]) == 10
    assert n_rows(["tokens=2M", "sae=relu"]) == 6            # 5 smollm2 + 1 pythia
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
    from gsae_cli.report import collect

    sites = group_series(collect([], root)[0])
    assert set(sites) == {("smollm2-135m", "blocks.12.hook_resid_pre"), ("pythia-70m", "blocks.12.hook_resid_pre")}
    labels = [s.label for s in sites[("smollm2-135m", "blocks.12.hook_resid_pre")]]
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
    assert "gsae eval" in msg and "sweeps/frontier.sh" in msg
    assert e.value.exit_code == 2
    assert not (tmp_path / "report").exists()
