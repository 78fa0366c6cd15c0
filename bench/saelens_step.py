"""SAELens's own training step, timed, for bench/train.py's comparison: run by SAELens's Python
(its own virtualenv, docs/benchmarks.md), never importing gsae. Reads one command per line on
stdin and answers one JSON line on stdout:

    setup ARCH D_IN D_SAE BATCH K DEAD_FRAC THREADS   build SAELens's training SAE and SAETrainer
    step ARCH                                          one SAETrainer.step, timed: {"ms": ...}

ARCH is SAELens's name: standard, gated, jumprelu, topk, batchtopk. SAETrainer.step is SAELens's
whole step: forward and loss, dead-latent bookkeeping, backward, gradient clipping, Adam, the LR
and coefficient schedulers. DEAD_FRAC of the latents are held dead, so AuxK does its work.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def build(arch: str, d_in: int, d_sae: int, k: int):
    from sae_lens import saes

    common = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu"}
    if arch == "standard":
        return saes.StandardTrainingSAE(saes.StandardTrainingSAEConfig(**common))
    if arch == "gated":
        return saes.GatedTrainingSAE(saes.GatedTrainingSAEConfig(**common))
    if arch == "jumprelu":
        return saes.JumpReLUTrainingSAE(saes.JumpReLUTrainingSAEConfig(**common))
    if arch == "topk":
        return saes.TopKTrainingSAE(saes.TopKTrainingSAEConfig(**common, k=k))
    if arch == "batchtopk":
        return saes.BatchTopKTrainingSAE(saes.BatchTopKTrainingSAEConfig(**common, k=float(k)))
    raise ValueError(f"unknown SAELens architecture {arch}")


def main() -> None:
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    runs: dict[str, tuple] = {}
    for line in sys.stdin:
        cmd, arch, *rest = line.split()
        if cmd == "setup":
            d_in, d_sae, batch, k = (int(v) for v in rest[:4])
            dead_frac, threads = float(rest[4]), int(rest[5])
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            sae = build(arch, d_in, d_sae, k)
            cfg = SAETrainerConfig(
                total_training_samples=batch * 10_000,
                train_batch_size_samples=batch,
                lr=3e-4,
                lr_end=3e-5,
                device="cpu",
            )
            trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
            x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(0)) * 2.0 + 0.1
            dead = torch.zeros(d_sae, dtype=torch.bool)
            dead[: round(dead_frac * d_sae)] = True
            runs[arch] = (trainer, x, dead, cfg.dead_feature_window)
            print(json.dumps({"ready": arch, "sae_lens": __import__("sae_lens").__version__}), flush=True)
        elif cmd == "step":
            trainer, x, dead, window = runs[arch]
            if dead.any():  # untimed: these latents have not fired for longer than the dead window
                trainer.n_forward_passes_since_fired[dead] = window + 1
            t = time.perf_counter()
            trainer.step(x)
            ms = (time.perf_counter() - t) * 1e3
            trainer.n_training_steps += 1
            print(json.dumps({"ms": ms}), flush=True)


if __name__ == "__main__":
    main()
