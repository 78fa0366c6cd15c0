"""Data-parallel training with torchrun on CPU (gloo, 2 ranks): the same SAE as one process with
the same data order, resume after a kill, and a clear error for a data order the ranks cannot
split. Each launch is a real multi-process run of the installed CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import gsae, tiny
from safetensors.torch import load_file

from gsae_cli.config import compose_config, train_dir

# several processes, object storage or a fresh install: end to end, minutes together
pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "gsae_cli"]
# λ and LR high enough that features die before the resample checks at steps 8 and 12, so the
# gathered-batch resampling path runs too
ARGS = ["train.data_streams=2", "train.resample_stop_fraction=0.9", "sae.l1_coefficient=20", "train.lr=0.05"]


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env(), timeout=timeout)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "sae.safetensors")


def test_two_ranks_train_the_same_sae_as_one_process(tmp_path):
    # each run harvests its own store (the two ranks theirs together inside `train`); the other
    # tests here share one store between their runs
    one = Path(gsae("train", *tiny(tmp_path / "one", *ARGS), check=True).stdout.strip().splitlines()[-1])
    proc = torchrun("train", *tiny(tmp_path / "two", *ARGS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = Path(proc.stdout.strip().splitlines()[-1])
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["resamples"] and s1["resamples"] == s2["resamples"], "both runs resample the same features"
    w1, w2 = weights(one), weights(two)
    # Float rounding only: the ranks' gradient average sums in another order. Adam divides by
    # sqrt(v), so where a gradient is ~0 a rounding-level difference can become a step of up to
    # lr (0.05 here) in that element, which the decoder's renormalisation spreads over its row:
    # all but 1 % of the elements agree to 1e-6 (measured: 54 of 16,384, one row), none beyond 1e-3.
    for k in w1:
        diff = (w2[k] - w1[k]).abs()
        assert float(diff.max()) < 1e-3, k
        assert int((diff > 1e-6).sum()) <= diff.numel() // 100, k
    m1, m2 = ([json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert [r["step"] for r in m1] == [r["step"] for r in m2]
    for a, b in zip(m1, m2):  # the log is of the global batch, not of rank 0's share
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]) and abs(a["l0"] - b["l0"]) < 1e-2
    assert not list(two.glob("checkpoint*")) and (two / "COMPLETE").exists()


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_two_ranks_train_the_same_new_architecture_as_one_process(tmp_path, arch):
    """BatchTopK's k·B-th value is found over the global batch (each rank gathering the other's
    candidates), and its θ from the global batch's smallest kept activation; JumpReLU's θ
    gradient is averaged like every other. Float rounding only, as above."""
    # (jumprelu at 3e-3, not its 3e-2: a kernel window and Adam both amplify rounding at high rates)
    args = ["train.data_streams=2", f"sae={arch}", "sae.k=8", "train.lr=3e-3", f"store_url={tmp_path / 'store'}"]
    one = Path(gsae("train", *tiny(tmp_path / "one", *args), check=True).stdout.strip().splitlines()[-1])
    proc = torchrun("train", *tiny(tmp_path / "two", *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = Path(proc.stdout.strip().splitlines()[-1])
    w1, w2 = weights(one), weights(two)
    # As above: where a gradient is ~0, Adam turns a rounding-level difference into a step of up
    # to the rate, so a few elements may differ by that much, no more.
    for k in w1:
        diff = (w2[k].double() - w1[k].double()).abs()
        assert float(diff.max()) <= 2 * 3e-3, k
        assert int((diff > 1e-4).sum()) <= max(1, diff.numel() // 100), k
    if arch == "batchtopk":
        assert int(w1["threshold_count"]) == int(w2["threshold_count"]) == 2
    m1, m2 = ([json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    for a, b in zip(m1, m2):  # the same number of kept activations per token over the global batch
        assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]) and abs(a["l0"] - b["l0"]) < 1e-2


def test_a_killed_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path):
    long = ["train.n_tokens=131072", "train.checkpoint_every=8", f"store_url={tmp_path / 'store'}"]  # 256 steps of 512
    whole = torchrun("train", *tiny(tmp_path / "whole", *ARGS, *long))
    assert whole.returncode == 0, whole.stderr[-3000:]
    args = tiny(tmp_path / "killed", *ARGS, *long)
    directory = train_dir(compose_config(args))
    launch = subprocess.Popen(
        [*TORCHRUN, "train", *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600  # a hang guard only
    while not (directory / "checkpoint.pt").exists() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in _workers(str(tmp_path / "killed")):  # both ranks at once (torchrun starts each in its own session)
        os.kill(pid, signal.SIGKILL)
    launch.wait(timeout=120)
    assert not (directory / "COMPLETE").exists(), "the kill should land mid-run"
    resumed = torchrun("train", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training at step" in resumed.stderr
    w1, w2 = weights(Path(whole.stdout.strip().splitlines()[-1])), weights(directory)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-6, atol=1e-7, msg=k)


def test_a_data_order_the_ranks_cannot_split_is_a_clear_error(tmp_path):
    proc = torchrun("train", *tiny(tmp_path / "bad", "train.data_streams=3", "train.batch_size=513"))
    assert proc.returncode != 0
    # each rank prints gsae's one-paragraph error (torchrun then adds its own summary)
    assert proc.stderr.count("error: train.data_streams=3 cannot be split among 2 ranks") == 2


def _workers(marker: str) -> list[int]:
    """The torchrun workers (TORCHELASTIC_RUN_ID in their environment) whose command line holds `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and b"TORCHELASTIC_RUN_ID" in (proc / "environ").read_bytes()
                and marker.encode() in (proc / "cmdline").read_bytes()
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_the_slurm_script_launches_a_real_two_rank_training(tmp_path):
    """sweeps/slurm_train.sbatch under stand-ins for srun (runs its command once: one node) and
    scontrol (names this host), so its torchrun rendezvous and arguments run for real."""
    import socket

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_ID": "4242",
        "NPROC_PER_NODE": "2",
        "MASTER_PORT": str(port),
        "GSAE_PYTHON": sys.executable,
    }
    script = Path(__file__).resolve().parents[2] / "sweeps" / "slurm_train.sbatch"
    proc = subprocess.run(
        [str(script), *tiny(tmp_path / "slurm", "train.data_streams=2")],
        capture_output=True,
        text=True,
        env={**env(), **slurm},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 node(s) x 2 process(es), rendezvous at localhost" in proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert (out / "COMPLETE").exists() and json.loads((out / "summary.json").read_text())["steps"] == 16


def test_a_sweep_under_torchrun_spreads_its_members_over_the_ranks(tmp_path):
    """sparsify's "distribute modules": one launch, each rank trains its own members alone."""
    proc = torchrun("train", "-m", *tiny(tmp_path / "spread", "sae.l1_coefficient=0.1,0.2,0.3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2: 2 of the sweep's members" in proc.stderr
    assert "rank 1 of 2: 1 of the sweep's members" in proc.stderr
    done = sorted((tmp_path / "spread" / "train").glob("*/COMPLETE"))
    assert len(done) == 3
    coeffs = sorted(json.loads((d.parent / "summary.json").read_text())["l1_coefficient"] for d in done)
    assert coeffs == [0.1, 0.2, 0.3]
    one = gsae("train", *tiny(tmp_path / "spread", "sae.l1_coefficient=0.2"), check=True)
    assert "reusing trained SAE" in one.stderr  # each member is the ordinary one-process SAE
