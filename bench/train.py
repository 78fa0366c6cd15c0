"""Training throughput, the SAE step's achieved matmul FLOP/s next to this machine's measured
peak for the same shapes, and the fraction of step time spent waiting for data.

    .venv/bin/python bench/train.py [sae=gated|relu] [train.n_tokens=...] [device=...]

Runs `gsae train` on a synthetic store (random bf16 activations, d_model 576 like the default
model) so that it needs no harvest. Targets: achieved >= 50 % of peak; data wait < 5 %.

FLOPs per token counted (n = d_model, M = d_sae; a matmul of [B,a]@[a,b] is 2·B·a·b):
  relu : encoder and decoder forward (2), their input and weight gradients (4)     = 6 · 2nM
  gated: shared encoder matmul + decoder + aux decoder forward (3), encoder input and
         weight gradients (2), decoder input and weight gradients (2), aux decoder
         input gradient only (its W_dec is detached) (1)                          = 8 · 2nM

Against SAELens (issue 24's speed target: gsae's step no slower than SAELens's, per architecture):

    .venv/bin/python bench/train.py vs-saelens [SAELENS_PYTHON] [--steps N] [--k 32] [--dead 0.1]

times gsae's training update (`train.trainer.update`, the Trainer's own step) and SAELens's
SAETrainer.step (bench/saelens_step.py, run by SAELENS_PYTHON, SAELens's own virtualenv:
docs/benchmarks.md) at the same shapes, interleaved step by step in one run, each process alone
on the CPU while it steps, and prints the ratio per architecture. gsae's TopK step is also timed
with a dense decode (f @ W_dec), to show what the sparse one saves.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gsae_cli import store  # noqa: E402
from gsae_cli.config import compose_config, harvest_dir, harvest_hash, harvest_identity  # noqa: E402
from gsae_cli.lm.models import resolve_device  # noqa: E402
from gsae_cli.train.trainer import run_train  # noqa: E402

MATMULS_PER_TOKEN = {"relu": 6, "gated": 8}


def synthetic_store(cfg, d_model: int, n_rows: int) -> None:
    path = harvest_dir(cfg, cfg.hook)
    attrs = {"gsae_identity": harvest_identity(cfg, cfg.hook), "config_hash": harvest_hash(cfg, cfg.hook)}
    w = store.StoreWriter.open(
        path, d_model=d_model, n_tokens=n_rows, dtype="bfloat16", chunk_rows=8192, attrs=attrs, fsync=False
    )
    g = torch.Generator().manual_seed(0)
    sum_sq = 0.0
    for a in range(0, n_rows, 65536):
        x = (torch.randn(min(65536, n_rows - a), d_model, generator=g) * 3 + 1).to(torch.bfloat16)
        sum_sq += x.double().pow(2).sum().item()
        w.append(x, torch.zeros(x.shape[0], dtype=torch.int32))
    w.finish({"norms": {"mean_sq_norm": sum_sq / n_rows}, "d_model": d_model})
    w.close()


def peak_matmul_flops(
    batch: int, n: int, m: int, device: torch.device, seconds: float = 3.0, dtype: torch.dtype = torch.float32
) -> float:
    """Best sustained FLOP/s of the step's three matmul shapes, each timed alone, in the dtype the
    step's matmuls run in (bf16 under train.autocast=bf16 on CUDA)."""
    a = torch.randn(batch, n, device=device, dtype=dtype)
    w = torch.randn(n, m, device=device, dtype=dtype)
    f = torch.randn(batch, m, device=device, dtype=dtype)
    shapes = [(a, w), (f, w.T.contiguous()), (a.T.contiguous(), f)]  # enc fwd, dec fwd, weight grad
    best = []
    for x, y in shapes:
        flops = 2 * x.shape[0] * x.shape[1] * y.shape[1]
        x @ y
        reps, t = 0, time.monotonic()
        while time.monotonic() - t < seconds / len(shapes):
            x @ y
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best.append(flops * reps / (time.monotonic() - t))
    return sum(best) / len(best)


def main() -> None:
    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        # No resampling: its LR drop and re-warm would change what is timed from run to run.
        cfg = compose_config(
            [
                "train.n_tokens=409600",
                "train.resample=false",
                "train.log_every=20",
                "train.checkpoint_every=100000",
                f"out_dir={tmp}",
                *overrides,
            ]
        )
        if cfg.sae.name not in MATMULS_PER_TOKEN:
            sys.exit(
                f"bench/train.py counts FLOPs for {', '.join(MATMULS_PER_TOKEN)}; "
                f"sae={cfg.sae.name} is not one of them (pass sae=relu or sae=gated)."
            )
        d_model = 576
        synthetic_store(cfg, d_model, 262_144)
        result = run_train(cfg)
        s = result.summary
        arch = s["architecture"]
        device = resolve_device(cfg.device)
        n, m, batch = d_model, s["d_sae"], cfg.train.batch_size
        flops_per_token = MATMULS_PER_TOKEN[arch] * 2 * n * m
        achieved = s["tokens_per_s_this_run"] * flops_per_token
        bf16 = cfg.train.autocast == "bf16" and device.type == "cuda"
        peak = peak_matmul_flops(batch, n, m, device, dtype=torch.bfloat16 if bf16 else torch.float32)
        print(f"device                 {device}  (torch threads {torch.get_num_threads()})")
        print(f"sae                    {arch}  d_model {n}  d_sae {m}  batch {batch}")
        print(f"steps                  {s['steps']}  (lr {s['lr']:g})")
        print(f"training               {s['tokens_per_s_this_run']:,.0f} tokens/s")
        print(f"achieved matmul        {achieved / 1e9:,.1f} GFLOP/s")
        print(f"peak matmul (same shapes) {peak / 1e9:,.1f} GFLOP/s  ({'bf16' if bf16 else 'fp32'})")
        print(f"achieved / peak        {achieved / peak:.1%}   (target >= 50 %)")
        print(f"waiting for data       {s['data_wait_fraction']:.2%} of step time   (target < 5 %)")
        print(
            json.dumps(
                {
                    "tokens_per_s": s["tokens_per_s_this_run"],
                    "achieved_flops": achieved,
                    "peak_flops": peak,
                    "data_wait_fraction": s["data_wait_fraction"],
                }
            )
        )


SAELENS_NAMES = {"relu": "standard", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": "batchtopk"}


def _dense_topk_loss(sae, x, l1, dead):
    """TopK's loss with the dense decode f @ W_dec: the same maths, for the timing comparison."""
    from gsae_cli.saes.base import LossOutput, squared_error
    from gsae_cli.saes.topk import topk_relu

    pre = sae.pre_activation(x)
    f = topk_relu(pre, sae.k)
    x_hat = sae.decode(f)
    terms = {"recon": squared_error(x, x_hat), **sae._aux_terms(x, x_hat, pre, dead)}
    return LossOutput(terms=terms, f=f, x_hat=x_hat, active=f > 0)


def vs_saelens(argv: list[str]) -> None:
    import argparse
    import statistics
    import subprocess

    from gsae_cli.saes import build_sae
    from gsae_cli.train.trainer import update

    ap = argparse.ArgumentParser(prog="bench/train.py vs-saelens")
    ap.add_argument("python", nargs="?", default=".venv-saelens/bin/python", help="SAELens's Python")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dead", type=float, default=0.1, help="fraction of latents held dead (AuxK's work)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    d_in, d_sae, batch = 576, 2304, 4096
    torch.set_num_threads(a.threads)
    worker = subprocess.Popen(
        [a.python, os.path.join(os.path.dirname(__file__), "saelens_step.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask(line: str) -> dict:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(line + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(0)) * 2.0 + 0.1
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[: round(a.dead * d_sae)] = True
    runs: dict[str, dict] = {}
    for arch in ["relu", "gated", "rescale_shift", "scaled_relu", "jumprelu", "topk", "batchtopk"]:
        options = {"k": a.k} if arch in ("topk", "batchtopk") else {}
        torch.manual_seed(0)
        sae = build_sae(arch, d_in, d_sae, **options)
        params = [p for p in sae.parameters() if p.requires_grad]
        runs[arch] = {"sae": sae, "loss": sae.loss, "opt": torch.optim.Adam(params, lr=3e-4, betas=(0.0, 0.999))}
        if arch in SAELENS_NAMES:
            version = ask(f"setup {SAELENS_NAMES[arch]} {d_in} {d_sae} {batch} {a.k} {a.dead} {a.threads}")["sae_lens"]
    dense = build_sae("topk", d_in, d_sae, k=a.k)
    runs["topk (dense decode)"] = {
        "sae": dense,
        "loss": lambda xb, l1, d: _dense_topk_loss(dense, xb, l1, d),
        "opt": torch.optim.Adam(dense.parameters(), lr=3e-4, betas=(0.0, 0.999)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs} | {f"saelens {n}": [] for n in SAELENS_NAMES}
    for r in range(a.warmup + a.steps):  # round r: step r of every run in turn
        for name, run in runs.items():
            t = time.perf_counter()
            update(run["sae"], run["loss"], run["opt"], x, 0.01, dead, r, 10_000)
            ms = (time.perf_counter() - t) * 1e3
            if r >= a.warmup:
                times[name].append(ms)
            if name in SAELENS_NAMES:
                theirs = ask(f"step {SAELENS_NAMES[name]}")["ms"]
                if r >= a.warmup:
                    times[f"saelens {name}"].append(theirs)
    worker.stdin.close()  # type: ignore[union-attr]
    worker.wait()
    print(
        f"d_in {d_in}, d_sae {d_sae}, batch {batch}, k {a.k}, {a.dead:.0%} of latents dead, float32 CPU, "
        f"{a.threads} threads; torch {torch.__version__}, sae-lens {version}; median of {a.steps} steps "
        f"after {a.warmup}, interleaved"
    )
    print(f"{'architecture':<22} {'gsae ms':>9} {'SAELens ms':>11} {'gsae / SAELens':>15}")
    figures = {}
    for name in runs:
        ours = statistics.median(times[name])
        theirs = statistics.median(times[f"saelens {name}"]) if name in SAELENS_NAMES else None
        ratio = f"{ours / theirs:15.2f}" if theirs else f"{'(no peer)':>15}"
        print(f"{name:<22} {ours:9.0f} {theirs or float('nan'):11.0f} {ratio}")
        figures[name] = {"gsae_ms": ours, "saelens_ms": theirs}
    print(json.dumps(figures))


if __name__ == "__main__":
    if sys.argv[1:2] == ["vs-saelens"]:
        vs_saelens(sys.argv[2:])
    else:
        main()
