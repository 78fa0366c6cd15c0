"""The whole pipeline through the real `gsae` CLI on the real offline default model
(SmolLM2-135M), kept small: eval from an empty outputs folder harvests, trains and evaluates;
the second call is cached; export and `ls` see the results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILL_AFTER_CHECKPOINT, gsae
from safetensors.torch import load_file

from gsae_cli.config import compose_config, evalset_dir, evalset_hash
from gsae_cli.evaluate.evalset import load_evalset
from gsae_cli.evaluate.metrics import metrics_from_window_sums, relative_reconstruction_bias
from gsae_cli.saes.io import load_sae

pytestmark = pytest.mark.slow

SMALL = [
    "harvest.n_tokens=5080",
    "harvest.chunk_rows=1024",
    "train.n_tokens=16384",
    "train.batch_size=1024",
    "train.lr_warmup_steps=2",
    "train.log_every=4",
    "train.geometric_median_tokens=512",
    "train.norm_sample_tokens=2048",
    "eval.n_tokens=254",
    "eval.batch_size=2",
    "device=cpu",
]


def test_eval_from_empty_outputs_runs_every_stage_then_is_cached(out):
    proc = gsae("eval", f"out_dir={out}", *SMALL, "--json", check=True)
    metrics = json.loads(proc.stdout)
    assert metrics["n_tokens"] == 254 and metrics["sae"]["architecture"] == "gated"
    assert metrics["config"]["model"]["name"] == "smollm2-135m"
    # the real model is far better than the zero-ablated one; the SAE lands in between
    assert metrics["ce_clean"] < metrics["ce_spliced"] < metrics["ce_zero_ablation"]
    ce = {k: metrics[k] for k in ("ce_clean", "ce_spliced", "ce_zero_ablation")}
    assert metrics["loss_recovered"] == pytest.approx(
        (ce["ce_zero_ablation"] - ce["ce_spliced"]) / (ce["ce_zero_ablation"] - ce["ce_clean"]), rel=1e-9
    )
    assert metrics["delta_loss"] == pytest.approx(ce["ce_spliced"] - ce["ce_clean"], rel=1e-9)
    # the real model: the site at its mean costs less than at zero, more than nothing
    assert ce["ce_clean"] < metrics["ce_mean_ablation"] < ce["ce_zero_ablation"]
    assert 0 < metrics["loss_recovered_mean_ablation"] < 1
    # site_start=4 of 128: BOS and the three text tokens after it stay clean in every window
    assert metrics["frac_passthrough"] == pytest.approx(3 / 127)
    for key, (lo, hi) in metrics["ci"].items():
        assert lo <= metrics[key] <= hi, key

    # L0 and γ against a direct computation on the spliced rows of the cached eval set
    cfg = compose_config([f"out_dir={out}", *SMALL])
    es = load_evalset(evalset_dir(cfg), evalset_hash(cfg))
    sae = load_sae(metrics["sae"]["path"])
    x = es.site[:, cfg.site_start :].reshape(-1, 576).float()
    with torch.no_grad():
        active, x_hat = sae.active_mask(x), sae(x)
    assert metrics["l0"] == pytest.approx(float(active.sum()) / x.shape[0], rel=1e-12)
    assert metrics["relative_reconstruction_bias"] == pytest.approx(relative_reconstruction_bias(x, x_hat), rel=1e-6)
    (per_window,) = (out / "eval").glob("*/per_window.safetensors")
    for key, value in metrics_from_window_sums(load_file(str(per_window))).items():
        assert float(value) == pytest.approx(metrics[key], rel=1e-12), key
    assert (out / "harvest").is_dir() and (out / "train").is_dir() and (out / "evalset").is_dir()
    table = gsae("eval", f"out_dir={out}", *SMALL, check=True)
    assert "reusing complete evaluation" in table.stderr and "loss recovered" in table.stderr
    assert "95 % CI" in table.stderr
    exported = gsae("export", f"out_dir={out}", *SMALL, "--format", "saelens", check=True)
    export_dir = exported.stdout.strip().splitlines()[-1]
    cfg = json.loads(Path(export_dir, "cfg.json").read_text())
    assert cfg["architecture"] == "gated" and cfg["d_in"] == 576
    listing = gsae("ls", f"out_dir={out}", "--json", check=True)
    stages = sorted(r["stage"] for r in json.loads(listing.stdout))
    assert stages == ["eval", "evalset", "harvest", "train"]


def test_each_new_architecture_trains_resumes_evaluates_inspects_and_reports(out, tmp_path):
    """JumpReLU, TopK, BatchTopK and the scaled ReLU on the real model, all on one store: each run
    killed after its first checkpoint resumes; then one `-m` sweep each of eval and inspect over
    the four, and one report over all four (k beside λ in results.csv). Resumes to identical
    weights are checked on the tiny model (test_train_architectures)."""
    archs = ["jumprelu", "topk", "batchtopk", "scaled_relu"]
    shared = [f"out_dir={out}", *SMALL, f"store_url={out / 'harvest'}", "sae.k=16", "train.checkpoint_every=4"]
    gsae("harvest", *shared, check=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", GSAE_TEST_ARM="8")
    for arch in archs:
        killed = subprocess.run(
            [sys.executable, "-c", KILL_AFTER_CHECKPOINT, *shared, f"sae={arch}"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    sweep = f"sae={','.join(archs)}"
    resumed = gsae("train", "-m", *shared, sweep, check=True)
    assert resumed.stderr.count("resuming training at step 8") == 4, resumed.stderr[-3000:]
    gsae("eval", "-m", *shared, sweep, check=True)
    evals = [json.loads(p.read_text()) for p in sorted((out / "eval").glob("*/metrics.json"))]
    assert sorted(m["sae"]["architecture"] for m in evals) == sorted(archs)
    for metrics in evals:
        assert metrics["ce_clean"] < metrics["ce_spliced"] < metrics["ce_zero_ablation"], metrics["sae"]
    browsers = gsae("inspect", "-m", *shared, sweep, check=True).stdout.strip().splitlines()
    assert len(browsers) == 4 and all(Path(b).exists() for b in browsers)
    report = tmp_path / "report"
    gsae("report", "--out-dir", str(out), "--report-dir", str(report), check=True)
    rows = (report / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[3:5] == ["l1_coefficient", "k"]
    assert sorted(r.split(",")[2] for r in rows[1:]) == sorted(archs)
    assert "λ / k" in (report / "results.md").read_text()
