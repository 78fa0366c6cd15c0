"""Shared helpers: running the real `gsae` console script, and small tiny-model configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Under pytest-xdist (`-n N`) each worker, and every gsae it starts, takes 1/N of the cores, as
# gsae's own launchers arrange (GSAE_LOCAL_PROCS): N processes each starting one thread per core
# oversubscribe the machine and run far slower than one at a time.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit():
    os.environ.setdefault("GSAE_LOCAL_PROCS", os.environ["PYTEST_XDIST_WORKER_COUNT"])
    from gsae_cli.core.cpus import use_thread_share

    use_thread_share(None)

GSAE = [sys.executable, "-m", "gsae_cli.cli"]
TINY_HOOK = "blocks.2.hook_resid_pre"


def tiny(out_dir: Path, *extra: str) -> list[str]:
    """Overrides for a fast pipeline on the tiny random model. Training is 16 steps of 512; the
    resampling fractions make that one check at step 4 (features silent for the 4 steps before
    it are resampled) followed by a 2-step LR re-warm, so default tiny runs exercise it."""
    return [
        "model=tiny",
        f"hook={TINY_HOOK}",
        f"out_dir={out_dir}",
        "harvest.n_tokens=4064",
        "harvest.chunk_rows=512",
        "harvest.batch_size=4",
        "harvest.ctx_len=128",
        "train.n_tokens=8192",
        "train.batch_size=512",
        "train.lr_warmup_steps=2",
        "train.log_every=4",
        "train.checkpoint_every=4",
        "train.geometric_median_tokens=256",
        "train.resample_interval=0.25",
        "train.resample_dead_window=0.25",
        "eval.n_tokens=508",
        "eval.batch_size=4",
        "device=cpu",
        *extra,
    ]


def gsae(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([*GSAE, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"gsae {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


# Runs `gsae train` in-process and SIGKILLs itself two logged steps after the first checkpoint
# saved at or after step GSAE_TEST_ARM, or, with GSAE_TEST_ARM=rewarm, in the middle of an LR
# re-warm after a resampling (the resume must restore the resample steps the LR depends on).
KILL_AFTER_CHECKPOINT = r"""
import os, signal, sys
from gsae_cli.train import trainer as train
from gsae_cli.config import compose_config

ARM = os.environ["GSAE_TEST_ARM"]
armed = []
save, log = train.Trainer._save_checkpoint, train.Trainer._log

def due(self):
    if ARM != "rewarm":
        return self.step >= int(ARM)
    since = self.step - self.resamples[-1]["step"] if self.resamples else None
    return since is not None and 0 < since < self.resample_schedule.rewarm_steps

def save_and_arm(self):
    save(self)
    if not armed and due(self):
        armed.append(self.step + 2)

def log_and_die(self, *args, **kwargs):
    row = log(self, *args, **kwargs)
    if armed and self.step >= armed[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    return row

train.Trainer._save_checkpoint, train.Trainer._log = save_and_arm, log_and_die
train.run_train(compose_config(sys.argv[1:]))
"""
