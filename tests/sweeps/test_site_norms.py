"""sweeps/site_norms.py: the spread of a store's squared norm over its rows, by hand; and the
script on a real tiny-model store, and its one-message exit on a missing store."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import gsae, tiny

SCRIPT = Path(__file__).resolve().parents[2] / "sweeps" / "site_norms.py"


def _module():
    spec = importlib.util.spec_from_file_location("site_norms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_norm_spread_by_hand():
    norms = torch.tensor([1.0, 1.0, 1.0, 10.0, 20.0])
    tokens = torch.tensor([5, 5, 6, 7, 7])
    s = _module().norm_spread(norms, tokens, factor=5.0)
    # median 1: the rows of norm 10 and 20 are above 5x, both on token 7
    assert s["median_norm"] == 1.0 and s["mean_norm"] == pytest.approx(33 / 5)
    assert s["rms_norm"] == pytest.approx((503 / 5) ** 0.5)
    assert s["rows_above"] == 2 and s["share_of_rows"] == pytest.approx(0.4)
    assert s["share_of_squared_norm"] == pytest.approx(500 / 503)
    assert s["tokens_above"] == [(7, 2)]


def test_on_a_real_store_and_a_missing_one(tmp_path):
    store = gsae("harvest", *tiny(tmp_path / "out"), check=True).stdout.strip().splitlines()[-1]
    run = subprocess.run([sys.executable, str(SCRIPT), store, "--rows", "1000"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["rows"] == 1000 and summary["rms_norm"] >= summary["median_norm"] > 0
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("site_norms.py: ")
