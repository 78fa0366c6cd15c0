"""Activation-store read throughput, local disk vs S3 on loopback (moto's server, as in the tests),
against what the SAE training step consumes.

    .venv/bin/python bench/store_read.py [ROWS] [D_MODEL]     # default 131,072 rows of 576, bf16

The same synthetic store (bfloat16, 8,192-row chunks, ~64 MiB shards) is written to a temporary
folder and to a bucket on a local S3 server. For each, printed:
  - raw: sequential `read_rows` of every chunk on one thread (on S3 two requests per chunk: the
    shard's index, then the chunk);
  - the training reader itself (ShuffledBatches, 4,096-row batches, chunks prefetched on background
    threads; 2 ahead, train's default, and 8), with the share of its time the consumer waited;
and the training step's own rate from bench/train.py's defaults (gated, d_sae 4 x D_MODEL) on
this machine, so the reader's margin over the step can be read off. Run it alone.
Loopback S3 measures the client path (HTTP, s3fs, zarr's async store), not a network: a real
bucket adds latency per request, which prefetch hides while the read rate stays above the step's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from s3server import s3_server  # noqa: E402  (tests/s3server.py)

from gsae_cli import store  # noqa: E402
from gsae_cli.core import storage  # noqa: E402
from gsae_cli.store.batches import ShuffledBatches  # noqa: E402


def write(where, rows: int, d_model: int) -> float:
    t = time.monotonic()
    w = store.StoreWriter.open(where, d_model=d_model, n_tokens=rows, dtype="bfloat16", fsync=False)
    g = torch.Generator().manual_seed(0)
    for a in range(0, rows, 65536):
        x = torch.randn(min(65536, rows - a), d_model, generator=g).to(torch.bfloat16)
        w.append(x, torch.zeros(x.shape[0], dtype=torch.int32))
    w.finish({})
    w.close()
    return time.monotonic() - t


def raw_read(where) -> float:
    s = store.open_store(where)
    t = time.monotonic()
    for i in range(s.n_chunks):
        s.read_chunk(i)
    return s.n_tokens / (time.monotonic() - t)


def stream(where, depth: int, batch: int = 4096) -> tuple[float, float]:
    """(rows/s the reader delivers with `depth` chunks read ahead, fraction of the time the
    consumer waited)."""
    s = store.open_store(where)
    it = ShuffledBatches(s, batch, seed=0, prefetch_chunks=depth)
    t = time.monotonic()
    n = sum(b.shape[0] for b in it)
    seconds = time.monotonic() - t
    return n / seconds, it.wait_seconds / seconds


def step_rate(d_model: int, batch: int = 4096) -> float:
    """Tokens/s of the gated SAE's training step alone (forward, backward, Adam) on this CPU."""
    from gsae_cli.saes import build_sae

    sae = build_sae("gated", d_model, 4 * d_model)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d_model)
    for i in range(6):
        if i == 1:
            t = time.monotonic()
        loss = sae.loss(x, 0.1).total()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 5 * batch / (time.monotonic() - t)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
    d_model = int(sys.argv[2]) if len(sys.argv) > 2 else 576
    mib = rows * d_model * 2 / 2**20
    print(f"store: {rows:,} rows x {d_model} bfloat16 = {mib:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp, s3_server("bench") as _:
        places = {"local disk": Path(tmp) / "store", "S3 (loopback)": storage.location("s3://bench/store")}
        for name, where in places.items():
            w = write(where, rows, d_model)
            raw = raw_read(where)
            print(
                f"{name:>14}: write {mib / w:4.0f} MiB/s | raw read {raw:9,.0f} rows/s "
                f"({raw * d_model * 2 / 2**20:4.0f} MiB/s)"
            )
            for depth in (2, 8):
                rate, waited = stream(where, depth)
                print(
                    f"{'':>14}  training reader, {depth} chunks ahead: {rate:9,.0f} rows/s, "
                    f"waiting {waited:.0%} of its time"
                )
    print(
        f"the gated SAE step (d_sae {4 * d_model:,}, batch 4,096) consumes {step_rate(d_model):,.0f} tokens/s "
        "on this machine's CPU"
    )


if __name__ == "__main__":
    main()
