"""Training throughput with 1 process vs N data-parallel CPU ranks (torchrun, gloo) on the same
synthetic store and the same data order (train.data_streams=N), and the scaling efficiency.

    .venv/bin/python bench/ranks.py [N] [overrides...]      # default N=2, gated, d_sae 2,304

Each run is `gsae train` in its own process(es); the figure is the run's own tokens/s (its
summary's tokens_per_s_this_run: the training loop, not start-up). Printed: the speed-up of N
ranks over one process using every core (what a user of this machine gets), and the scaling
efficiency, N-rank tokens/s over N times one process on 1/N of the cores. Run it alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import synthetic_store  # noqa: E402  (bench/train.py)

from gsae_cli.config import compose_config  # noqa: E402
from gsae_cli.core.cpus import available_cores  # noqa: E402


def run(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{proc.stderr[-2000:]}")
    return json.loads(Path(proc.stdout.strip().splitlines()[-1], "summary.json").read_text())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2
    extra = [a for a in sys.argv[1:] if not a.isdigit()]
    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "train.n_tokens=409600",
            "train.resample=false",
            "train.log_every=20",
            "train.checkpoint_every=100000",
            f"train.data_streams={n}",
            f"out_dir={tmp}",
            "device=cpu",
            *extra,
        ]
        synthetic_store(compose_config(overrides), 576, 262_144)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env.pop("OMP_NUM_THREADS", None)
        gsae = [sys.executable, "-m", "gsae_cli", "train"]
        one_all = run([*gsae, *overrides, "--force"], env)
        one_share = run([*gsae, *overrides, f"threads={max(1, cores // n)}", "--force"], env)
        ranks = run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={n}",
                "-m",
                "gsae_cli",
                "train",
                *overrides,
                "--force",
            ],
            env,
        )
    t1, ts, tn = (s["tokens_per_s_this_run"] for s in (one_all, one_share, ranks))
    print(
        f"cores {cores}, sae {one_all['architecture']} d_sae {one_all['d_sae']}, batch "
        f"{compose_config(overrides).train.batch_size}, {one_all['steps']} steps, data_streams {n}"
    )
    print(f"1 process, {cores} threads        {t1:,.0f} tokens/s")
    print(f"1 process, {max(1, cores // n)} thread(s)        {ts:,.0f} tokens/s")
    print(f"{n} ranks (gloo), {max(1, cores // n)} thread(s) each {tn:,.0f} tokens/s")
    print(f"speed-up over 1 process on all cores: {tn / t1:.2f}x")
    print(f"scaling efficiency vs {n} x one {max(1, cores // n)}-thread process: {tn / (n * ts):.0%}")


if __name__ == "__main__":
    main()
