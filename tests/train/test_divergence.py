"""Divergence flags: the rule on hand-made logs, the Trainer recording it from a real run, and
`gsae report` flagging the SAEs whose training diverged (new evaluations and older ones)."""

from __future__ import annotations

import csv
import json
import math

import pytest
from test_report import make_sweep
from test_train import small_cfg, sparse_rows, synthetic_store

from gsae_cli.report import collect, group_series, run_report
from gsae_cli.report import plots as report_module
from gsae_cli.saes.io import read_sae_meta
from gsae_cli.train.divergence import FACTOR, describe, divergence_of_log, find_divergence
from gsae_cli.train.trainer import Trainer


def rows(*recons):
    return [{"step": 10 * (i + 1), "recon": r} for i, r in enumerate(recons)]


def test_rule_by_hand():
    falling = rows(1.4, 0.9, 0.5, 0.3, 0.35, 0.31)
    assert find_divergence(falling) is None
    # 2.99 is under 10 x the minimum 0.3 (step 40): a bump, not a divergence; 3.01 is over it
    assert find_divergence(falling + rows(0, 0, 0, 0, 0, 0, 2.99)[6:]) is None
    hit = find_divergence(falling + [{"step": 70, "recon": 3.01}, {"step": 80, "recon": 500.0}])
    assert hit == {"step": 70, "recon": 3.01, "min_before": 0.3, "min_step": 40, "factor": FACTOR}
    assert "jumped to 3.01 at step 70" in describe(hit) and "10x the 0.3" in describe(hit)
    # a non-finite value is a jump; rows without recon are skipped; an empty log has none
    assert find_divergence(rows(0.5, math.nan))["step"] == 20
    assert find_divergence([{"step": 1}, {"step": 2, "recon": 0.5}, {"step": 3}]) is None
    assert find_divergence([]) is None
    # the first row has nothing before it, whatever its value
    assert find_divergence(rows(1e6, 0.5)) is None
    assert find_divergence(rows(1.0, 2.0), factor=1.5)["step"] == 20
    # during an L1 warm-up the reconstruction is better than the run can keep: not the minimum
    warm = [
        {"step": 10, "recon": 0.01, "l1_coefficient": 0.0},
        {"step": 20, "recon": 0.02, "l1_coefficient": 0.05},
        {"step": 30, "recon": 0.3, "l1_coefficient": 0.1},
        {"step": 40, "recon": 0.5, "l1_coefficient": 0.1},
    ]
    assert find_divergence(warm) is None
    assert find_divergence(warm + [{"step": 50, "recon": 3.5, "l1_coefficient": 0.1}])["min_step"] == 30
    # rows of a foreign log without a step are skipped, not an error
    assert find_divergence([{"recon": 1.0}, {"recon": 50.0}, {"step": 3, "recon": 0.5}]) is None


def test_log_file(tmp_path):
    assert divergence_of_log(tmp_path / "missing.jsonl") is None
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows(0.4, 0.2, 0.25, 7.0)) + "\n")
    assert divergence_of_log(log)["step"] == 40
    # a truncated or foreign file: what parses is judged, the rest skipped
    log.write_text('not json\n[1, 2]\n{"step": 10, "recon": 0.2}\n{"step": 20, "recon": 9.0}\n{"step": 30, "rec')
    assert divergence_of_log(log)["step"] == 20
    assert divergence_of_log(tmp_path) is None  # a folder is not a log


@pytest.mark.parametrize("outliers", [False, True])
def test_trainer_records_a_loss_jump_in_summary_and_sae_meta(tmp_path, capsys, outliers):
    """A real run on a synthetic store: rows an SAE can fit, and in one variant a block of rows
    100x their norm that some batches draw; the log's jump is found and recorded."""
    x = sparse_rows(1024, 8, 6, seed=3)
    if outliers:
        x[-64:] *= 100.0  # the store's last chunk
    path = synthetic_store(tmp_path / "store", x)
    cfg = small_cfg(
        tmp_path / "out",
        "sae=relu",
        "train.batch_size=64",
        "train.n_tokens=1024",
        "train.lr_warmup_steps=1",
        "train.resample=false",
        "sae.l1_coefficient=0.01",
    )
    summary = Trainer(cfg, tmp_path / "sae", path, None).fit()
    logged = [json.loads(ln) for ln in (tmp_path / "sae" / "metrics.jsonl").read_text().splitlines()]
    meta = read_sae_meta(tmp_path / "sae")
    err = capsys.readouterr().err
    if not outliers:
        assert summary["divergence"] is None and meta["divergence"] is None and "diverged" not in err
        return
    div = summary["divergence"]
    assert div is not None and meta["divergence"] == div and "training diverged" in err
    assert f"relu SAE at λ 0.01 in {tmp_path / 'sae'}" in err  # which SAE, when several train at once
    # a rescale_shift fitted on this relu has no jump of its own, and inherits the verdict
    rs_cfg = small_cfg(
        tmp_path / "out",
        "sae=rescale_shift",
        "train.batch_size=64",
        "train.n_tokens=256",
        "train.lr_warmup_steps=1",
        "train.resample=false",
        "sae.l1_coefficient=0.01",
    )
    rs = Trainer(rs_cfg, tmp_path / "rs", path, tmp_path / "sae").fit()
    assert rs["divergence"]["baseline"] == str(tmp_path / "sae") and rs["divergence"]["step"] == div["step"]
    assert "frozen relu baseline" in capsys.readouterr().err
    # the step found is a logged step at least 10x the lowest before it, and the first such step
    at = [r["step"] for r in logged].index(div["step"])
    assert logged[at]["recon"] == pytest.approx(div["recon"])
    assert div["recon"] > FACTOR * min(r["recon"] for r in logged[:at])
    assert all(r["recon"] <= FACTOR * min(q["recon"] for q in logged[:i]) for i, r in enumerate(logged[:at]) if i)


def test_the_warning_names_a_fixed_k_architecture_by_its_k(tmp_path, capsys):
    x = sparse_rows(1024, 8, 6, seed=3)
    x[-64:] *= 100.0  # as above: a block of rows 100x their norm
    path = synthetic_store(tmp_path / "store", x)
    overrides = ["sae=topk", "sae.k=4", "train.batch_size=64", "train.n_tokens=1024", "train.lr_warmup_steps=1"]
    summary = Trainer(small_cfg(tmp_path / "out", *overrides), tmp_path / "sae", path, None).fit()
    err = capsys.readouterr().err
    assert summary["divergence"] is not None
    assert f"topk SAE at k 4 in {tmp_path / 'sae'}" in err and "λ" not in err


def test_report_flags_diverged_saes_new_and_old(tmp_path, capsys, monkeypatch):
    out = tmp_path / "outputs"
    make_sweep(out)
    # a new evaluation records the flag in metrics.json ...
    m = json.loads((out / "eval" / "relu1" / "metrics.json").read_text())
    m["sae"]["divergence"] = {"step": 360, "recon": 26412.0, "min_before": 0.1, "min_step": 300, "factor": FACTOR}
    (out / "eval" / "relu1" / "metrics.json").write_text(json.dumps(m))
    # ... an older one has no flag: its training log, where the SAE points, decides
    train_dir = tmp_path / "train" / "g2"
    train_dir.mkdir(parents=True)
    (train_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(0.5, 0.2, 9.0)))
    m = json.loads((out / "eval" / "gated2" / "metrics.json").read_text())
    m["sae"]["path"] = str(train_dir)
    (out / "eval" / "gated2" / "metrics.json").write_text(json.dumps(m))
    report = run_report([], out, tmp_path / "report", [])
    table = {
        r["eval_path"].rsplit("/", 1)[-1]: r["diverged_at_step"]
        for r in csv.DictReader((report / "results.csv").open())
    }
    assert table.pop("relu1") == "360" and table.pop("gated2") == "30" and set(table.values()) == {""}
    md = (report / "results.md").read_text()
    assert "## Warning: SAEs whose training diverged" in md
    assert "diverged at step 360 (`relu1`)" in md and "diverged at step 30 (`gated2`)" in md
    marked = [ln for ln in md.splitlines() if " † |" in ln]  # their rows in the site's table
    assert len(marked) == 2 and {"`relu1`", "`gated2`"} == {ln.split("|")[-2].strip() for ln in marked}
    assert "† training diverged" in md
    err = capsys.readouterr().err
    assert err.count("diverged in training") == 2
    # both plots cross out exactly those two points
    figures = []
    monkeypatch.setattr(report_module, "_save", lambda fig, path: figures.append(fig))
    sites = group_series(collect([], out)[0])
    report_module.plot_frontier(sites, tmp_path / "f.png")
    report_module.plot_shrinkage(sites, tmp_path / "s.png")
    rows_by_name = {r.directory.name: r.row for ss in sites.values() for x in ss for r in x.results}
    for fig, y in zip(figures, ("loss_recovered", "relative_reconstruction_bias_centred")):
        (crossed,) = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == "† training diverged"]
        assert sorted(zip(crossed.get_xdata(), crossed.get_ydata())) == sorted(
            (rows_by_name[n]["l0"], rows_by_name[n][y]) for n in ("relu1", "gated2")
        )
    # --where leaves them out
    kept = run_report([], out, tmp_path / "report3", ["diverged_at_step=none"])
    assert len(list(csv.DictReader((kept / "results.csv").open()))) == len(table)
    # a sweep with no diverged SAE has no warning section
    clean = tmp_path / "clean"
    make_sweep(clean)
    assert "Warning" not in (run_report([], clean, tmp_path / "report2", []) / "results.md").read_text()
