"""Processes sharing a machine divide its cores: threads=N, else cores // local processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gsae_cli.config import compose_config
from gsae_cli.core import cpus
from gsae_cli.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(cpus, "_DEFAULT", 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    for name in ("GSAE_LOCAL_PROCS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_share_is_cores_over_local_processes(eight_cores, monkeypatch):
    assert cpus.thread_share(None) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun --nproc-per-node 2
    assert cpus.thread_share(None) == 4
    monkeypatch.setenv("GSAE_LOCAL_PROCS", "3")  # a launcher's own count wins
    assert cpus.thread_share(None) == 2
    monkeypatch.setenv("GSAE_LOCAL_PROCS", "16")  # never below one thread
    assert cpus.thread_share(None) == 1
    assert cpus.thread_share(5) == 5  # threads=N is taken as given


def test_affinity_limits_the_share(eight_cores, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # taskset / cgroup cpuset
    assert cpus.thread_share(None) == 3


def test_composing_a_config_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        compose_config(["threads=1"])
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="threads must be positive"):
            compose_config(["threads=0"])
    finally:
        torch.set_num_threads(before)


def test_a_process_started_with_a_share_uses_it():
    env = dict(os.environ, GSAE_LOCAL_PROCS="64")
    code = (
        "import torch; from gsae_cli.config import compose_config; compose_config([]); print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1", out.stderr


def test_torchrun_workers_divide_the_machine_not_torchruns_one_thread(eight_cores, monkeypatch):
    monkeypatch.setattr(cpus, "_DEFAULT", 1)  # torchrun exports OMP_NUM_THREADS=1 to its workers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpus.thread_share(None) == 2
