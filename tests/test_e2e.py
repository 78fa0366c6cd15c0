"""The whole pipeline through the real `gsae` CLI on the real offline default model
(SmolLM2-135M), kept small: eval from an empty outputs folder harvests, trains and evaluates;
the second call is cached; export and `ls` see the results."""

from __future__ import annotations

import json

import pytest

from conftest import gsae

pytestmark = pytest.mark.slow

SMALL = ["harvest.n_tokens=5080", "harvest.chunk_rows=1024", "train.n_tokens=16384", "train.batch_size=1024",
         "train.lr_warmup_steps=2", "train.log_every=4", "train.geometric_median_tokens=512",
         "train.norm_sample_tokens=2048", "eval.n_tokens=254", "eval.batch_size=2", "device=cpu"]


def test_eval_from_empty_outputs_runs_every_stage_then_is_cached(out):
    proc = gsae("eval", f"out_dir={out}", *SMALL, "--json", check=True)
    metrics = json.loads(proc.stdout)
    assert metrics["n_tokens"] == 254 and metrics["sae"]["architecture"] == "gated"
    assert metrics["config"]["model"]["name"] == "smollm2-135m"
    assert 0.0 < metrics["l0"] < 4 * 576
    # the real model is far better than the zero-ablated one; the SAE lands in between
    assert metrics["ce_clean"] < metrics["ce_spliced"] < metrics["ce_zero_ablation"]
    assert 0.0 < metrics["loss_recovered"] < 1.0
    assert (out / "harvest").is_dir() and (out / "train").is_dir()
    table = gsae("eval", f"out_dir={out}", *SMALL, check=True)
    assert "reusing complete evaluation" in table.stderr and "loss recovered" in table.stderr
    exported = gsae("export", f"out_dir={out}", *SMALL, "--format", "saelens", check=True)
    export_dir = exported.stdout.strip().splitlines()[-1]
    cfg = json.loads(open(f"{export_dir}/cfg.json").read())
    assert cfg["architecture"] == "gated" and cfg["d_in"] == 576
    listing = gsae("ls", "--out-dir", str(out), "--json", check=True)
    stages = sorted(r["stage"] for r in json.loads(listing.stdout))
    assert stages == ["eval", "harvest", "train"]
