"""ShuffledBatches: determinism, exact coverage, row ranges, resume, bounded memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from gsae_cli.errors import ConfigError
from gsae_cli.store import ShuffledBatches, StoreWriter, open_store

D_MODEL = 3


def make_store(path, n, chunk_rows=64, dtype="float32"):
    """A store whose row i holds [i, -i, 0.5]: batches tell which rows they came from."""
    w = StoreWriter.open(path, D_MODEL, n, dtype, chunk_rows, {}, shard_chunks=4, fsync=False)
    r = torch.arange(n, dtype=torch.float32)
    w.append(torch.stack([r, -r, torch.full_like(r, 0.5)], 1), torch.arange(n))
    w.finish({})
    return open_store(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("b") / "s", 2000)  # 31.25 chunks of 64


def rows_of(batches) -> torch.Tensor:
    out = []
    for b in batches:
        assert torch.equal(b[:, 1], -b[:, 0]) and bool((b[:, 2] == 0.5).all())  # whole rows, intact
        out.append(b[:, 0].long())
    return torch.stack(out)


def test_deterministic_and_independent_of_threads(store):
    kw = dict(batch_size=50, n_batches=100, buffer_chunks=6, seed=7)
    sb = ShuffledBatches(store, **kw)
    first = rows_of(sb)
    assert torch.equal(first, rows_of(sb))  # a second iteration of the same object
    assert torch.equal(first, rows_of(ShuffledBatches(store, **kw, prefetch=False)))
    assert torch.equal(first, rows_of(ShuffledBatches(store, **kw, prefetch_chunks=1)))
    assert not torch.equal(first, rows_of(ShuffledBatches(store, **{**kw, "seed": 8})))


def test_one_epoch_covers_every_row_exactly_once(store):
    sb = ShuffledBatches(store, 40, n_tokens=2000, buffer_chunks=9, seed=1)
    rows = rows_of(sb)
    assert rows.shape == (50, 40)
    assert torch.equal(rows.flatten().sort().values, torch.arange(2000))
    # and it is shuffled: once warmed up, a batch mixes rows from about buffer_chunks - 1 chunks
    chunks_per_batch = [len(set((r // 64).tolist())) for r in rows[8:-8]]
    assert min(chunks_per_batch) >= 4 and np.mean(chunks_per_batch) >= 6


def test_several_epochs_cover_each_row_once_per_epoch_in_new_orders(store):
    sb = ShuffledBatches(store, 50, n_batches=120, buffer_chunks=4, seed=3)  # exactly 3 epochs
    rows = rows_of(sb).flatten()
    assert torch.equal(torch.bincount(rows, minlength=2000), torch.full((2000,), 3))
    # each epoch visits chunks in its own order
    firsts = [rows[e * 2000 : (e + 1) * 2000][:200] // 64 for e in range(3)]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_row_range_is_respected(store):
    a, b = 90, 1701  # both ends mid-chunk
    sb = ShuffledBatches(store, 29, row_range=(a, b), n_tokens=(b - a) * 2, buffer_chunks=4, seed=5)
    rows = rows_of(sb).flatten()
    assert int(rows.min()) >= a and int(rows.max()) < b
    assert len(rows) == (b - a) * 2 // 29 * 29
    counts = torch.bincount(rows - a, minlength=b - a)
    assert int(counts.max()) <= 2 and int(counts.min()) >= 1  # each epoch covers the range once


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=50, n_batches=100, buffer_chunks=6, seed=7),
        dict(batch_size=37, n_tokens=37 * 150, buffer_chunks=3, seed=2, row_range=(70, 1900)),
    ],
)
def test_resume_yields_the_tail_of_a_fresh_run(store, kw):
    full = rows_of(ShuffledBatches(store, **kw))
    n = len(full)
    for k in (1, 2, 17, n // 2, 39, 40, 41, n - 1, n):  # includes epoch boundaries
        tail = rows_of(ShuffledBatches(store, **kw, start_batch=k)) if k < n else torch.empty(0, full.shape[1])
        assert torch.equal(tail, full[k:]), k


def test_buffer_is_bounded_whatever_the_store_size(tmp_path, store):
    big = make_store(tmp_path / "big", 20000)  # 313 chunks
    sizes = []
    for s in (store, big):
        sb = ShuffledBatches(s, 64, n_batches=60, buffer_chunks=5, seed=0, prefetch_chunks=2)
        rows_of(sb)
        sizes.append(sb.buffer_rows)
        assert sb.peak_queued_chunks <= 2
    assert sizes[0] == sizes[1] == 5 * 64  # (buffer_chunks - 1) chunks of window + one chunk


def test_dtype_device_and_bf16_store(tmp_path):
    s = make_store(tmp_path / "s", 300, chunk_rows=32, dtype="bfloat16")
    sb = ShuffledBatches(s, 30, seed=0)
    batches = list(sb)
    assert len(sb) == 10 and len(batches) == 10
    assert all(b.dtype == torch.float32 and b.device.type == "cpu" and b.shape == (30, 3) for b in batches)
    assert next(iter(ShuffledBatches(s, 30, dtype=None))).dtype == torch.bfloat16
    assert sb.wait_seconds >= 0.0


def test_close_stops_the_reader_thread(store):
    before = {t for t in threading.enumerate() if t.name.startswith("gsae-batches-prefetch")}
    sb = ShuffledBatches(store, 10, n_batches=150, buffer_chunks=3, seed=0)
    next(sb)
    next(sb)
    sb.close()
    with ShuffledBatches(store, 10, n_batches=150, buffer_chunks=3, seed=0) as sb2:
        next(sb2)
    after = {t for t in threading.enumerate() if t.name.startswith("gsae-batches-prefetch")}
    assert after <= before


def test_bad_arguments(store):
    for kw in (
        dict(row_range=(10, 10)),
        dict(row_range=(0, 2001)),
        dict(buffer_chunks=1),
        dict(n_batches=3, n_tokens=30),
    ):
        with pytest.raises(ConfigError):
            ShuffledBatches(store, 10, **kw)
    with pytest.raises(ConfigError, match="one batch"):
        ShuffledBatches(store, 100, row_range=(0, 50))


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_damaged_chunk_stops_the_batches_with_its_name(tmp_path, prefetch):
    """A read on a prefetch thread that finds a damaged chunk surfaces in the consumer."""
    import zarr

    from gsae_cli.store import DamagedStoreError

    s = make_store(tmp_path / "s", 640)  # 10 chunks of 64, 4 per shard file
    zarr.open_group(str(s.path), mode="r+")["activations"][300, 2] = float("nan")  # chunk 4: rows 256-319
    sb = ShuffledBatches(s, 64, seed=0, prefetch=prefetch, buffer_chunks=3)
    with pytest.raises(
        DamagedStoreError,
        match=r"chunk 4 of its activations \(rows 256-319, in the shard "
        r"file .*activations/c/1/0\) holds NaN or inf",
    ):
        list(sb)
