"""Shuffled, seeded, resumable training batches from an activation store.

The "sliding-window shuffle": segments (a chunk's rows in the range) are visited in a seeded
permutation per epoch, and each row's place in that stream is jittered by up to D rows, D =
(buffer_chunks - 1) * chunk_rows; rows come out in jittered order, so a batch draws from about
D / chunk_rows chunks while memory stays at a ring buffer of D + chunk_rows rows. The order
depends only on the seed and the sizes, and resuming at batch k reads from about D rows before
it. Details and why: docs/architecture.md, "Training order"."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from gsae_cli.errors import ConfigError

__all__ = ["ShuffledBatches"]

_DEFAULT_BUFFER_BYTES = 512 * 2**20


def _raw(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's data as numpy, bfloat16 as its uint16 bits (no copy)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _gather(ring: np.ndarray, idx: np.ndarray | None, out: np.ndarray | None, at: int, rows: int) -> np.ndarray:
    """Copy ring rows `idx` into out[at:] (allocating out [rows, d] on first use)."""
    if out is None:
        if idx is not None and len(idx) == rows:
            return ring[idx]
        out = np.empty((rows, ring.shape[1]), dtype=ring.dtype)
    if idx is not None:
        out[at : at + len(idx)] = ring[idx]
    return out


class _Schedule:
    """The deterministic stream: which segment comes where, and each row's jitter."""

    def __init__(self, seg_lo: np.ndarray, sizes: np.ndarray, epoch_rows: int, n_epochs: int, seed: int, window: int):
        self.seg_lo, self.sizes = seg_lo, sizes
        self.n_seg = len(sizes)
        self.epoch_rows, self.n_epochs = epoch_rows, n_epochs
        self.seed, self.window = seed, window
        self.n_total = n_epochs * self.n_seg  # global segment count
        self.stream_rows = n_epochs * epoch_rows
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(segment order, absolute stream start of each visited segment) for epoch e."""
        hit = self._cache.get(e)
        if hit is None:
            perm = np.random.default_rng([self.seed, 0, e]).permutation(self.n_seg)
            starts = e * self.epoch_rows + np.concatenate(([0], np.cumsum(self.sizes[perm])[:-1]))
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            hit = self._cache[e] = (perm, starts.astype(np.int64))
        return hit

    def segment(self, g: int) -> tuple[int, int, int]:
        """(stream start, n rows, first store row) of global segment g."""
        e, i = divmod(g, self.n_seg)
        perm, starts = self.epoch(e)
        s = int(perm[i])
        return int(starts[i]), int(self.sizes[s]), int(self.seg_lo[s])

    def segment_at(self, p: int) -> int:
        """Global index of the segment holding stream position p."""
        e = p // self.epoch_rows
        _, starts = self.epoch(e)
        return e * self.n_seg + int(np.searchsorted(starts, p, side="right")) - 1

    def starts_from(self, g: int, vmax: int) -> np.ndarray:
        """Stream starts of segments g, g+1, ... up to the last one starting at or before vmax."""
        out = []
        e, i = divmod(g, self.n_seg)
        while e < self.n_epochs:
            starts = self.epoch(e)[1][i:]
            m = int(np.searchsorted(starts, vmax, side="right"))
            out.append(starts[:m])
            if m < len(starts):
                break
            e, i = e + 1, 0
        return np.concatenate(out)

    def keys(self, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(stream positions, v, sort keys) of the rows of segment g."""
        start, n, _ = self.segment(g)
        e, i = divmod(g, self.n_seg)
        p = start + np.arange(n, dtype=np.int64)
        v = p + np.random.default_rng([self.seed, 1, e, i]).integers(0, self.window, size=n, dtype=np.int64)
        return p, v, v * self.window + p % self.window


class _Loader:
    """Reads segments g0, g0+1, ... in order; with `prefetch`, up to `depth` reads run ahead on a
    small thread pool (zarr reads scale with threads) and are handed over in stream order."""

    def __init__(self, store, schedule: _Schedule, g0: int, prefetch: bool, depth: int, stats: dict):
        self._store, self._sched, self._stats = store, schedule, stats
        self._submit = g0
        self._depth = max(1, depth)
        self._owner = threading.current_thread()
        self._ahead: deque = deque()  # (stream start, n rows, future), in stream order
        self._pool = ThreadPoolExecutor(self._depth, thread_name_prefix="gsae-batches-prefetch") if prefetch else None
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._ahead) < self._depth and self._submit < self._sched.n_total:
            start, n, row = self._sched.segment(self._submit)
            self._ahead.append((start, n, self._pool.submit(self._store.read_rows, row, row + n)))
            self._submit += 1
        self._stats["peak_queued"] = max(self._stats["peak_queued"], len(self._ahead))

    def get(self) -> tuple[int, int, torch.Tensor]:
        t0 = time.perf_counter()
        try:
            if self._pool is None:
                start, n, row = self._sched.segment(self._submit)
                self._submit += 1
                return start, n, self._store.read_rows(row, row + n)
            start, n, future = self._ahead.popleft()
            data = future.result()
            self._fill()
            return start, n, data
        finally:
            self._stats["wait_seconds"] += time.perf_counter() - t0

    def close(self) -> None:
        if self._pool is not None:
            for _, _, future in self._ahead:
                future.cancel()
            # An abandoned iterator may be finalised by the garbage collector on any thread,
            # zarr's event-loop thread included, which a read may be waiting on: only the
            # consumer's own thread waits for the reads; elsewhere they just finish on their own.
            self._pool.shutdown(wait=threading.current_thread() is self._owner, cancel_futures=True)
            self._pool = None
            self._ahead.clear()


class ShuffledBatches:
    """Seeded, resumable shuffled batches [batch_size, d_model] from an `ActivationStore`.

    Args:
        store: an opened `ActivationStore` (anything with n_tokens, d_model, chunk_rows, dtype,
            read_rows).
        batch_size: rows per batch.
        row_range: (a, b): use only store rows [a, b) (e.g. a train/validation split).
        n_batches / n_tokens: how much to yield (n_tokens // batch_size batches); more than
            the range holds loops over epochs, each re-permuted. Default: one epoch.
        buffer_chunks: RAM budget in chunks for the shuffle buffer; a batch mixes rows from
            about buffer_chunks - 1 chunks. Default: what fits in 512 MiB, clamped to [4, 32].
        seed: the data order is a function of the seed and the sizes only.
        prefetch: read chunks on background threads, at most `prefetch_chunks` ahead (and as
            many reads at once).
        start_batch: skip to batch k, yielding exactly batches k, k+1, ... of a fresh run.
        device, dtype: where and as what batches are returned (dtype None: the store's).

    Iterating yields the batches; each `iter()` starts over from `start_batch`. `wait_seconds`
    counts the time the consumer spent waiting for reads in the current iteration.
    """

    def __init__(
        self,
        store,
        batch_size: int,
        *,
        row_range: tuple[int, int] | None = None,
        n_batches: int | None = None,
        n_tokens: int | None = None,
        buffer_chunks: int | None = None,
        seed: int = 0,
        prefetch: bool = True,
        start_batch: int = 0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
        prefetch_chunks: int = 2,
    ):
        self.store = store
        a, b = (0, store.n_tokens) if row_range is None else (int(row_range[0]), int(row_range[1]))
        if not 0 <= a < b <= store.n_tokens:
            raise ConfigError(f"row_range ({a}, {b}) must satisfy 0 <= a < b <= {store.n_tokens} (the store's rows).")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}.")
        if n_batches is not None and n_tokens is not None:
            raise ConfigError("give n_batches or n_tokens, not both.")
        self.row_range = (a, b)
        self.batch_size = int(batch_size)
        self.epoch_rows = b - a
        if n_batches is None:
            n_batches = (n_tokens if n_tokens is not None else self.epoch_rows) // self.batch_size
            if n_batches == 0:
                raise ConfigError(
                    f"{n_tokens if n_tokens is not None else self.epoch_rows} rows do not make one batch "
                    f"of {self.batch_size}."
                )
        if n_batches < 0 or start_batch < 0 or seed < 0:
            raise ConfigError("n_batches, start_batch and seed must be non-negative.")
        self.n_batches = int(n_batches)
        self.start_batch = int(start_batch)
        self.seed = int(seed)
        self.prefetch = bool(prefetch)
        self.prefetch_chunks = int(prefetch_chunks)
        self.device = torch.device(device)
        self.dtype = dtype

        C = store.chunk_rows
        if buffer_chunks is None:
            chunk_bytes = C * store.d_model * torch.empty((), dtype=store.dtype).element_size()
            buffer_chunks = min(32, max(4, _DEFAULT_BUFFER_BYTES // chunk_bytes))
        if buffer_chunks < 2:
            raise ConfigError(f"buffer_chunks must be at least 2, got {buffer_chunks}.")
        self.buffer_chunks = int(buffer_chunks)
        chunks = np.arange(a // C, (b - 1) // C + 1, dtype=np.int64)
        seg_lo = np.maximum(a, chunks * C)
        sizes = np.minimum(b, (chunks + 1) * C) - seg_lo
        self.window = max(1, min((self.buffer_chunks - 1) * C, self.epoch_rows))
        self.buffer_rows = self.window + int(sizes.max())  # the ring buffer
        n_epochs = max(1, math.ceil(self.n_batches * self.batch_size / self.epoch_rows))
        self._sched = _Schedule(seg_lo, sizes, self.epoch_rows, n_epochs, self.seed, self.window)
        # wait_seconds is a float, peak_queued an int
        self._stats: dict[str, Any] = {"wait_seconds": 0.0, "peak_queued": 0}
        self._gen: Generator[torch.Tensor, None, None] | None = None

    @property
    def wait_seconds(self) -> float:
        return self._stats["wait_seconds"]

    @property
    def peak_queued_chunks(self) -> int:
        """Most chunks ever read ahead (in flight or waiting), bounded by prefetch_chunks."""
        return self._stats["peak_queued"]

    def __len__(self) -> int:
        return max(0, self.n_batches - self.start_batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.close()
        self._gen = self._generate()
        return self._gen

    def __next__(self) -> torch.Tensor:
        if self._gen is None:
            self._gen = self._generate()
        return next(self._gen)

    def close(self) -> None:
        """Stop the current iteration and its reader thread."""
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self) -> ShuffledBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _to_output(self, raw: np.ndarray) -> torch.Tensor:
        src = self.store.dtype
        want = src if self.dtype is None else self.dtype
        if self.device.type == "cpu" and want == torch.float32 and src != torch.float32:
            if src == torch.bfloat16:  # bf16 bits are the top half of the float32
                out = np.empty(raw.shape, dtype=np.uint32)
                np.left_shift(raw, 16, out=out, dtype=np.uint32)
                return torch.from_numpy(out.view(np.float32))
            return torch.from_numpy(raw.astype(np.float32))
        t = torch.from_numpy(raw)
        if src == torch.bfloat16:
            t = t.view(torch.bfloat16)
        t = t.to(self.device)  # the store dtype crosses the bus; converted on the device
        return t if want == src else t.to(want)

    def _resume_point(self, P: int) -> tuple[int, int]:
        """(key of the P-th emitted row, stream position to start reading at)."""
        sched, D = self._sched, self.window
        lo, hi = max(0, P - D), min(sched.stream_rows, P + D)
        parts: list[np.ndarray] = []
        g = sched.segment_at(lo)
        while g < sched.n_total:
            start, n, _ = sched.segment(g)
            if start >= hi:
                break
            p, _, k = sched.keys(g)
            parts.append(k[(p >= lo) & (p < hi)])
            g += 1
        keys = np.concatenate(parts)
        return int(np.partition(keys, P - lo)[P - lo]), lo

    def _generate(self) -> Generator[torch.Tensor, None, None]:
        B, sched, R = self.batch_size, self._sched, self.buffer_rows
        first, end = self.start_batch * B, self.n_batches * B
        if first >= end:
            return
        self._stats.update(wait_seconds=0.0, peak_queued=0)
        kstar, lo = self._resume_point(first) if first else (0, 0)
        g = sched.segment_at(lo)
        tail = sched.n_total  # bucket of rows whose v lies past the stream's end
        buckets: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        order_p = np.empty(0, dtype=np.int64)  # stream positions, in emission order
        qpos = 0
        ring: np.ndarray | None = None  # raw rows (bfloat16 as uint16 bits); numpy copies beat torch's on small CPUs
        loader = _Loader(self.store, sched, g, self.prefetch, self.prefetch_chunks, self._stats)
        try:
            for _ in range(first, end, B):
                out = pending = None
                have = filled = 0
                while have < B:
                    if qpos < len(order_p):
                        take = min(B - have, len(order_p) - qpos)
                        pending = order_p[qpos : qpos + take] % R
                        qpos += take
                        have += take
                        continue
                    if pending is not None:  # gather before the ring is overwritten
                        assert ring is not None  # pending rows were read into it
                        out = _gather(ring, pending, out, filled, B)
                        filled, pending = have, None
                    if g >= sched.n_total:
                        raise RuntimeError("internal error: the shuffle stream ran out of rows")
                    start, n, chunk = loader.get()
                    data = _raw(chunk)
                    if ring is None:
                        ring = np.empty((R, data.shape[1]), dtype=data.dtype)
                    r0 = start % R
                    k = min(n, R - r0)
                    ring[r0 : r0 + k] = data[:k]
                    if k < n:
                        ring[: n - k] = data[k:]
                    p, v, key = sched.keys(g)
                    if kstar:
                        keep = key >= kstar
                        p, v, key = p[keep], v[keep], key[keep]
                    # A row becomes emittable once the segment holding stream position v is read.
                    starts = sched.starts_from(g, int(v.max()) if len(v) else 0)
                    dest = g + np.searchsorted(starts, v, side="right") - 1
                    dest[v >= sched.stream_rows] = tail
                    by = np.argsort(dest, kind="stable")
                    dest, p, key = dest[by], p[by], key[by]
                    cuts = np.flatnonzero(np.diff(dest)) + 1
                    for d_, p_, k_ in zip(np.split(dest, cuts), np.split(p, cuts), np.split(key, cuts)):
                        if len(d_):
                            buckets.setdefault(int(d_[0]), []).append((k_, p_))
                    ready = buckets.pop(g, [])
                    if g == sched.n_total - 1:
                        ready += buckets.pop(tail, [])
                    g += 1
                    if ready:
                        ks = np.concatenate([r[0] for r in ready])
                        ps = np.concatenate([r[1] for r in ready])
                        order_p, qpos = ps[np.argsort(ks)], 0
                assert ring is not None  # rows are queued only once a segment has been read into it
                yield self._to_output(_gather(ring, pending, out, filled, B))
        finally:
            loader.close()
