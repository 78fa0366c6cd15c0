"""Several processes harvest one store: launched by torchrun (RANK / WORLD_SIZE) or by hand
(harvest.rank / harvest.world_size). The store must equal a one-process harvest bit for bit;
a killed rank resumes its own part; a crashed rank fails the launch and nothing is complete."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import GSAE, TINY_HOOK, gsae, tiny

from gsae_cli import store
from gsae_cli.config import compose_config, harvest_dir
from gsae_cli.store import layout

# several processes, object storage or a fresh install: end to end, minutes together
pytestmark = pytest.mark.slow

TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc-per-node",
    "2",
    "--master-port",
    "0",
    "-m",
    "gsae_cli",
]


def args(out: Path) -> list[str]:  # 16 shards of 256 rows: each rank owns 8
    return tiny(
        out, "harvest.n_tokens=4064", "harvest.chunk_rows=256", "harvest.shard_chunks=1", "harvest.batch_size=2"
    )


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = store.open_store(a), store.open_store(b)
    ra, rb = sa.read_rows(0, sa.n_tokens), sb.read_rows(0, sb.n_tokens)
    assert torch.equal(ra.view(torch.int16), rb.view(torch.int16)), "activations differ"
    assert torch.equal(sa.read_tokens(0, sa.n_tokens), sb.read_tokens(0, sb.n_tokens))
    assert sa.attrs["norms"] == sb.attrs["norms"]  # per-shard statistics summed in shard order


def one_process(tmp_path: Path) -> Path:
    out = tmp_path / "one"
    return Path(gsae("harvest", *args(out), check=True).stdout.strip().splitlines()[-1])


def test_torchrun_harvest_equals_one_process_bit_for_bit(tmp_path):
    out = tmp_path / "two"
    proc = subprocess.run([*TORCHRUN, "harvest", *args(out)], capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = harvest_dir(compose_config(args(out)), TINY_HOOK)
    assert store.is_complete(target)
    assert sorted(p.name for p in target.glob("progress.rank*")) == ["progress.rank0of2.json", "progress.rank1of2.json"]
    assert_same_store(target, one_process(tmp_path))


def test_a_killed_rank_resumes_its_part(tmp_path):
    out = tmp_path / "hand"
    target = harvest_dir(compose_config(args(out)), TINY_HOOK)
    rank = [*args(out), "harvest.world_size=2"]
    r0 = subprocess.Popen(
        [*GSAE, "harvest", *rank, "harvest.rank=0"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    r1 = subprocess.Popen(
        [*GSAE, "harvest", *rank, "harvest.rank=1"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    part1 = target / layout.rank_progress_name(1, 2)
    deadline = time.monotonic() + 600  # a hang guard only
    while not part1.exists() and r1.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    r1.send_signal(signal.SIGKILL)
    r1.wait()
    _, err0 = r0.communicate(timeout=600)
    assert r0.returncode == 0, err0
    assert "this rank's part" in err0 and not store.is_complete(target)  # rank 1's part is missing
    shards_done = json.loads(part1.read_text())["shards_done"]
    assert 0 < shards_done < 8, "the kill should land mid-part"
    again = gsae("harvest", *rank, "harvest.rank=1", check=True)
    assert "resuming harvest rank 1 of 2" in again.stderr
    assert store.is_complete(target)
    assert_same_store(target, one_process(tmp_path))


def test_a_crashed_rank_fails_the_launch_and_nothing_is_complete(tmp_path):
    out = tmp_path / "crash"
    target = harvest_dir(compose_config(args(out)), TINY_HOOK)
    launch = subprocess.Popen(
        [*TORCHRUN, "harvest", *args(out)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    part1 = target / layout.rank_progress_name(1, 2)
    deadline = time.monotonic() + 600
    while not part1.exists() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = _pid_with_env("RANK", "1", parent=launch.pid)
    assert victim is not None, "rank 1's process should be running"
    os.kill(victim, signal.SIGKILL)
    _, err = launch.communicate(timeout=600)
    assert launch.returncode != 0
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", err), err[-2000:]  # torchrun names the failed rank
    assert not store.is_complete(target)


def _pid_with_env(key: str, value: str, parent: int) -> int | None:
    """The descendant of `parent` whose environment has key=value (torchrun's worker for a rank)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            f"{key}={value}".encode() in environ
            and b"gsae_cli" in cmdline
            and int(proc.name) != parent
            and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ)
        ):
            return int(proc.name)
    return None
