"""Two sweep processes on the same outputs/ at once: each artifact is built exactly once (the
other process waits on its lock and reuses it), and nothing is corrupted."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from conftest import GSAE, tiny

from gsae_cli import store
from gsae_cli.saes.io import load_sae

# several processes, object storage or a fresh install: end to end, minutes together
pytestmark = pytest.mark.slow


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([*GSAE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_share_one_harvest_and_one_training(out):
    # Two different evaluations of the same trained SAE config: both need the same store and
    # the same SAE, so both race for them.
    a = _start("eval", *tiny(out, "eval.n_tokens=254"))
    b = _start("eval", *tiny(out, "eval.n_tokens=381"))
    (_, err_a), (_, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    # exactly one process harvested and trained; the other waited on the lock and reused
    assert [("harvest:" in e) for e in (err_a, err_b)].count(True) == 1, err_a + err_b
    assert [("train gated" in e) for e in (err_a, err_b)].count(True) == 1, err_a + err_b
    assert (err_a + err_b).count("reusing trained SAE") == 1
    harvests = [p for p in (out / "harvest").iterdir() if not p.name.startswith(".")]
    trains = [p for p in (out / "train").iterdir() if not p.name.startswith(".")]
    assert len(harvests) == 1 and len(trains) == 1
    s = store.open_store(harvests[0])  # complete, every shard present
    assert torch.isfinite(s.read_rows(0, s.n_tokens).float()).all()
    load_sae(trains[0])  # weights and metadata agree
    assert len([p for p in (out / "eval").iterdir() if not p.name.startswith(".")]) == 2
