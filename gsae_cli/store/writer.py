"""The store's writer: appends rows, writes each shard once on a background thread, and resumes
after a kill from the last complete shard; with several ranks, each writes only its own shards."""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr

if TYPE_CHECKING:
    pass

from gsae_cli.core import storage
from gsae_cli.errors import ConfigError, StoreError
from gsae_cli.store.files import check_reopened, create_group, discard_shards, finish_lock, wait_for_creation
from gsae_cli.store.layout import (
    COMPLETE_FILE,
    COMPRESSORS,
    DEFAULT_CHUNK_ROWS,
    META_KEY,
    PROGRESS_FILE,
    StoreLayout,
    atomic_write_json,
    combine_stats,
    default_shard_chunks,
    dtype_name,
    json_normal,
    owned_shards,
    rank_progress,
    rank_progress_name,
    raw_numpy,
    read_json,
    rows_written,
    shard_stats,
    store_world_size,
    zarr_array,
)


class StoreWriter:
    """Writes (and resumes writing) an activation store; see the module docstring.

    Use `StoreWriter.open(...)`, then `append` rows in order from `rows_written` on, then
    `finish`. Shards are encoded and written on one background thread (at most `max_pending`
    full shards queued) so that producing activations overlaps with IO.
    """

    def __init__(
        self,
        path: Path,
        layout: StoreLayout,
        group: zarr.Group,
        start_rows: int,
        complete: bool,
        fsync: bool,
        max_pending: int,
        rank: int = 0,
        world_size: int = 1,
        stats: dict[int, list[float]] | None = None,
        shards_done: int = 0,
    ):
        self.path = path
        self.layout = layout
        self.rank, self.world_size = rank, world_size
        self._shards_done = shards_done  # owned shards durably written (this writer's part)
        self._stats: dict[int, list[float]] = dict(stats or {})
        self._group = group
        self._acts = zarr_array(group, "activations")
        self._toks = zarr_array(group, "tokens")
        self._fsync = fsync
        self._rows_written = start_rows
        self._pos = start_rows  # the next row this writer needs (rows before it: written or buffered)
        self._complete = complete
        self._closed = False
        self._error: BaseException | None = None
        self._error_reported = False
        self._buf: np.ndarray | None = None
        self._buf_tokens: np.ndarray | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._thread: threading.Thread | None = None
        if not complete:
            self._thread = threading.Thread(target=self._worker, name="gsae-store-writer", daemon=True)
            self._thread.start()

    # -- opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        d_model: int,
        n_tokens: int,
        dtype: torch.dtype | str,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        attrs: dict[str, Any] | None = None,
        *,
        shard_chunks: int | None = None,
        compressor: str = "none",
        fsync: bool = True,
        max_pending: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ) -> StoreWriter:
        """Create the store at `path`, or reopen a partial (or complete) one with the same parameters.

        `attrs` describe what is stored (model, hook, corpus, ...) and are compared on reopen like
        the layout; a mismatch raises StoreError. Put run-specific values in `finish(final_attrs)`.
        Other files already in `path` are left alone. With `world_size` > 1 this writer writes only
        the shards of `rank` (module docstring); rank 0 creates the store, the others wait for it.
        """
        path = storage.location(path)
        if not (0 <= rank < world_size):
            raise ConfigError(f"harvest rank {rank} is outside 0..{world_size - 1} (world_size={world_size}).")
        for name, v in (("d_model", d_model), ("n_tokens", n_tokens), ("chunk_rows", chunk_rows)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"activation store {name} must be a positive integer, got {v!r}.")
        if compressor not in COMPRESSORS:
            raise ConfigError(f"activation store compressor must be one of {COMPRESSORS}, got {compressor!r}.")
        name = dtype_name(dtype)
        if shard_chunks is None:
            shard_chunks = default_shard_chunks(d_model, name, chunk_rows)
        if not isinstance(shard_chunks, (int, np.integer)) or shard_chunks < 1:
            raise ConfigError(f"activation store shard_chunks must be a positive integer, got {shard_chunks!r}.")
        shard_chunks = min(int(shard_chunks), math.ceil(n_tokens / chunk_rows))
        layout = StoreLayout(
            int(d_model), int(n_tokens), name, int(chunk_rows), int(chunk_rows) * shard_chunks, compressor
        )
        user_attrs = json_normal(dict(attrs or {}))
        if META_KEY in user_attrs:
            raise ConfigError(f"activation store attribute name {META_KEY!r} is reserved.")

        storage.check_reachable(path, "the activation store")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a directory; remove it or choose another output path.")
        if rank > 0 and not storage.exists(path / PROGRESS_FILE) and not storage.exists(path / COMPLETE_FILE):
            wait_for_creation(path, rank)
        if storage.exists(path / PROGRESS_FILE) or storage.exists(path / COMPLETE_FILE):
            return cls._reopen(path, layout, user_attrs, fsync, max_pending, rank, world_size)
        return cls._create(path, layout, user_attrs, fsync, max_pending, world_size)

    @classmethod
    def _create(
        cls, path: Path, layout: StoreLayout, attrs: dict, fsync: bool, max_pending: int, world_size: int = 1
    ) -> StoreWriter:
        group = create_group(path, layout, attrs, fsync, world_size)
        return cls(path, layout, group, 0, False, fsync, max_pending, 0, world_size)

    @classmethod
    def _reopen(
        cls,
        path: Path,
        layout: StoreLayout,
        attrs: dict,
        fsync: bool,
        max_pending: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> StoreWriter:
        check_reopened(path, layout, attrs)
        complete = storage.exists(path / COMPLETE_FILE)
        started = store_world_size(path)
        if not complete and started != world_size:
            raise StoreError(
                f"the activation store at {path} was started by {started} harvest process(es) and is not "
                f"finished; resume it with harvest.world_size={started} (each rank reruns its own part), or "
                "pass --force to rebuild it."
            )
        owned = owned_shards(layout.n_shards, rank, world_size)
        if world_size > 1 and not complete:
            shards_done, stats = rank_progress(path, rank, world_size)
            done = owned[shards_done] * layout.shard_rows if shards_done < len(owned) else layout.n_tokens
        else:
            done = layout.n_tokens if complete else rows_written(path)
            # Rows past the last complete shard are rewritten from scratch.
            done = layout.n_tokens if done >= layout.n_tokens else done - done % layout.shard_rows
            shards_done = -(-done // layout.shard_rows)
            try:  # statistics missing or unreadable are recomputed from the shards below
                stats = {} if complete else dict(enumerate(read_json(path / PROGRESS_FILE).get("shard_stats", [])))
            except (OSError, ValueError, AttributeError):
                stats = {}
        try:
            group = zarr.open_group(storage.zarr_store(path, read_only=complete), mode="r+" if not complete else "r")
            acts, toks = zarr_array(group, "activations"), zarr_array(group, "tokens")
        except Exception as e:  # noqa: BLE001 - any zarr failure means an unusable store
            raise StoreError(
                f"the activation store at {path} cannot be opened ({type(e).__name__}: {e}); "
                "pass --force to rebuild it."
            ) from None
        if not complete:  # (done == n_tokens: killed between the last shard and finish())
            discard_shards(path, acts, toks, owned[shards_done:], temporaries=world_size == 1)
            for shard in owned[:shards_done]:  # written before gsae kept statistics: read them back
                if shard not in stats:
                    lo = shard * layout.shard_rows
                    stats[shard] = shard_stats(np.asarray(acts[lo : lo + layout.shard_rows]), layout.dtype)
        return cls(path, layout, group, done, complete, fsync, max_pending, rank, world_size, stats, shards_done)

    # -- properties

    @property
    def rows_written(self) -> int:
        """Rows fully and durably on disk; a resumed harvest re-appends from here."""
        return self._rows_written

    @property
    def rows_appended(self) -> int:
        """Rows accepted by `append` so far (written, queued or buffered), at most n_tokens."""
        return self._pos

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def next_row(self) -> int:
        """The first row this writer still needs (n_tokens when it needs none)."""
        return self._pos

    def needs(self, start: int, stop: int) -> bool:
        """Whether any row in [start, stop) is one this writer still has to be given."""
        return self.owned_rows(max(start, self._pos), stop) > 0

    def owned_rows(self, start: int, stop: int) -> int:
        """How many rows of [start, stop) lie in this writer's shards."""
        sr, stop = self.layout.shard_rows, min(stop, self.n_tokens)
        if self.world_size == 1:
            return max(0, stop - start)
        return sum(
            max(0, min(stop, (s + 1) * sr) - max(start, s * sr))
            for s in range(start // sr, -(-stop // sr))
            if s % self.world_size == self.rank
        )

    def append_at(self, start: int, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        """Give the writer rows [start, start + len(acts)) of the store; it keeps the ones it still
        needs (its own shards, from `next_row` on) and ignores the rest. Calls must not skip rows
        the writer needs: a gap raises StoreError."""
        stop = min(start + acts.shape[0], self.n_tokens)
        sr = self.layout.shard_rows
        while self._pos < stop:
            if self._pos < start:
                raise StoreError(
                    f"rows {self._pos}-{start - 1} of the store at {self.path} were never given "
                    "to its writer; a harvest must give rows in order without gaps."
                )
            end = min(stop, (self._pos // sr + 1) * sr)  # within the current shard
            a, b = self._pos - start, end - start
            self.append(acts[a:b], tokens[a:b])

    @property
    def n_tokens(self) -> int:
        return self.layout.n_tokens

    @property
    def d_model(self) -> int:
        return self.layout.d_model

    @property
    def dtype(self) -> torch.dtype:
        return self.layout.torch_dtype

    # -- writing

    def append(self, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append rows `acts` [k, d_model] (any float dtype, any device) with token ids `tokens` [k].

        Rows past n_tokens are dropped silently. Raises StoreError on a shape mismatch, on NaN/inf
        (also after conversion to the store dtype, i.e. float16 overflow), or if the writer thread
        failed since the last call.
        """
        self._check_usable()
        if not isinstance(acts, torch.Tensor) or not isinstance(tokens, torch.Tensor):
            raise StoreError("StoreWriter.append expects torch tensors for activations and tokens.")
        if acts.ndim != 2 or acts.shape[1] != self.d_model:
            raise StoreError(
                f"activations to append have shape {tuple(acts.shape)}, but the store at {self.path} "
                f"holds rows of d_model={self.d_model}; flatten [batch, seq, d] to [batch*seq, d] "
                "and check the hook point."
            )
        if not acts.dtype.is_floating_point:
            raise StoreError(f"activations to append must be floating point, got {acts.dtype}.")
        if tokens.ndim != 1 or tokens.shape[0] != acts.shape[0]:
            raise StoreError(
                f"tokens to append have shape {tuple(tokens.shape)}; expected [{acts.shape[0]}], "
                "one token id per activation row."
            )
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise StoreError(f"tokens to append must be integer ids, got {tokens.dtype}.")
        k = min(acts.shape[0], self.n_tokens - self._pos)
        if k <= 0:
            return
        a: torch.Tensor | np.ndarray  # the rows to write; numpy on the CPU
        a = acts[:k].detach().to(self.dtype)
        if a.device.type == "cpu":  # numpy: torch's CPU kernels are slow on small shared machines
            a = raw_numpy(a.contiguous())
            finite = (a & 0x7F80) != 0x7F80 if self.layout.dtype == "bfloat16" else np.isfinite(a)
            bad = torch.from_numpy(~finite.all(axis=1))
        else:
            bad = ~torch.isfinite(a).all(dim=1)
        if bool(bad.any()):
            bad = bad.cpu()
            n_bad = int(bad.sum())
            first = int(bad.nonzero()[0, 0])
            overflow = bool(torch.isfinite(acts[:k][bad.to(acts.device)]).all()) and self.dtype != acts.dtype
            why = (
                (
                    f" (they are finite in {acts.dtype} but overflow {self.layout.dtype}; "
                    "harvest with dtype=bfloat16 or float32)"
                )
                if overflow
                else ""
            )
            raise StoreError(
                f"activations contain NaN or inf in {n_bad} of the {k} rows being appended "
                f"(store rows {self._pos}-{self._pos + k - 1}, first bad row {self._pos + first}){why}; "
                "nothing from this call was written."
            )
        t = tokens[:k].detach()
        if k and (int(t.min()) < -(2**31) or int(t.max()) >= 2**31):
            raise StoreError("token ids to append do not fit in int32.")
        t = t.to(device="cpu", dtype=torch.int32)
        off = 0
        while off < k:
            shard_start = self._pos - self._pos % self.layout.shard_rows
            shard_len = min(self.layout.shard_rows, self.n_tokens - shard_start)
            fill = self._pos - shard_start
            if self._buf is None:
                self._buf = np.empty((shard_len, self.d_model), dtype=self.layout.np_dtype)
                self._buf_tokens = np.empty((shard_len,), dtype=np.int32)
            assert self._buf_tokens is not None  # allocated and released together with _buf
            n = min(k - off, shard_len - fill)
            if isinstance(a, np.ndarray):
                self._buf[fill : fill + n] = a[off : off + n]
            else:  # straight from the device into the shard buffer
                self._buf_view()[fill : fill + n].copy_(a[off : off + n])
            self._buf_tokens[fill : fill + n] = t[off : off + n].numpy()
            off += n
            self._pos += n
            if fill + n == shard_len:
                shard = shard_start // self.layout.shard_rows
                self._enqueue(shard, self._buf, self._buf_tokens)
                self._buf = self._buf_tokens = None
                if self.world_size > 1:  # on to this rank's next shard
                    self._pos = min(self.n_tokens, (shard + self.world_size) * self.layout.shard_rows)
                    break

    def flush(self) -> None:
        """Block until every full shard handed over so far is on disk; re-raise writer errors.

        Rows of a shard that is not yet full stay in memory (a shard is written once, whole);
        `finish` writes the last, possibly short, shard.
        """
        self._check_usable()
        self._queue.join()
        self._raise_pending_error()

    def finish(
        self, final_attrs: dict[str, Any] | None = None, before_complete: Callable[[dict[str, Any]], None] | None = None
    ) -> bool:
        """Write the remaining rows, merge `final_attrs` and the store's `norms` into the attrs,
        call `before_complete(attrs)` (to write files that must exist before the marker), then mark
        the store complete. Returns whether the store is complete: with several writers, only the
        one that finishes last completes it; the others return False with their part on disk.

        Requires all of this writer's rows to have been appended. A no-op on a complete store.
        """
        if self._complete:
            self.close()
            return True
        final = json_normal(dict(final_attrs or {}))
        if META_KEY in final:
            raise ConfigError(f"activation store attribute name {META_KEY!r} is reserved.")
        self.flush()
        if self._pos < self.n_tokens:
            raise StoreError(
                f"StoreWriter.finish() called after {self._pos} of {self.n_tokens} rows for the store at "
                f"{self.path}; the data ran out before n_tokens rows: lower n_tokens or use a larger corpus."
            )
        self._stop_thread()
        self._closed = True
        # several writers: whoever finds every part done completes the store, once (under a lock)
        with finish_lock(self.path):
            if storage.exists(self.path / COMPLETE_FILE):
                self._complete = True
                return True
            stats = self._all_stats()
            if stats is None:
                return False
            final["norms"] = combine_stats(stats)
            if self.world_size > 1 and not storage.is_remote(self.path):
                # killed ranks' temporaries (object stores have none); every part is done: no rank writes
                for root in (self.path / "activations", self.path / "tokens"):
                    for f in root.rglob("*.partial"):
                        f.unlink(missing_ok=True)
                for f in self.path.glob("progress*.json.tmp"):
                    f.unlink(missing_ok=True)
            try:
                self._group.attrs.update(final)
                if self._fsync:
                    storage.fsync(self.path / "zarr.json")
                if before_complete is not None:
                    before_complete(final)
                atomic_write_json(self.path / COMPLETE_FILE, {"rows": self.n_tokens}, self._fsync)
            except Exception as e:  # noqa: BLE001 - disk or object-storage failures alike
                if not storage.access_error(e):
                    raise
                raise StoreError(
                    f"could not finalise the activation store at {self.path}: {e}; every row is "
                    "written: rerun the same command to mark it complete."
                ) from e
        self._complete = True
        return True

    def _all_stats(self) -> list[list[float]] | None:
        """Every shard's statistics in shard order, or None while another rank's part is unfinished."""
        if self.world_size == 1:
            return [self._stats[i] for i in range(self.layout.n_shards)]
        merged: dict[int, list[float]] = {}
        for r in range(self.world_size):
            merged.update(self._stats if r == self.rank else rank_progress(self.path, r, self.world_size)[1])
        if len(merged) < self.layout.n_shards:
            return None
        return [merged[i] for i in range(self.layout.n_shards)]

    def close(self) -> None:
        """Write the full shards already handed over and stop the writer thread, without finishing.

        Raises StoreError if the writer thread failed and nothing reported it yet.
        """
        if self._closed:
            return
        self._closed = True
        self._stop_thread()
        if self._error is not None and not self._error_reported:
            self._raise_pending_error()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self._stop_thread()

    # -- internals

    def _buf_view(self) -> torch.Tensor:
        t = torch.from_numpy(self._buf)
        return t.view(torch.bfloat16) if self.layout.dtype == "bfloat16" else t

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"the writer for the activation store at {self.path} is already closed.")
        self._raise_pending_error()

    def _raise_pending_error(self) -> None:
        e = self._error
        if e is None:
            return
        self._error_reported = True
        raise StoreError(
            f"writing the activation store at {self.path} failed ({type(e).__name__}: {e}); "
            f"{self._rows_written} rows are safely on disk: fix the cause and rerun the same "
            "command to resume."
        ) from e

    def _enqueue(self, shard: int, acts: np.ndarray, toks: np.ndarray) -> None:
        while True:
            self._raise_pending_error()
            try:
                self._queue.put((shard, acts, toks), timeout=0.1)
                return
            except queue.Full:
                continue

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write_shard(*item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e
            finally:
                self._queue.task_done()

    def _write_shard(self, shard: int, acts: np.ndarray, toks: np.ndarray) -> None:
        start = shard * self.layout.shard_rows
        stop = start + acts.shape[0]
        self._stats[shard] = shard_stats(acts, self.layout.dtype)
        self._acts[start:stop] = acts
        self._toks[start:stop] = toks
        if self._fsync and not storage.is_remote(self.path):  # the shard files and the entries naming them
            for arr, key in ((self._acts, (shard, 0)), (self._toks, (shard,))):
                root = self.path / arr.basename
                f = root / arr.metadata.encode_chunk_key(key)
                storage.fsync(f)
                while f != root:
                    f = f.parent
                    storage.fsync(f)
        if self.world_size == 1:
            stats = [self._stats[i] for i in range(shard + 1)]
            atomic_write_json(self.path / PROGRESS_FILE, {"rows_written": stop, "shard_stats": stats}, self._fsync)
            self._rows_written = stop
        else:
            self._shards_done += 1
            atomic_write_json(
                self.path / rank_progress_name(self.rank, self.world_size),
                {"shards_done": self._shards_done, "shard_stats": self._stats},
                self._fsync,
            )
            self._rows_written += stop - start

    def _stop_thread(self) -> None:
        if self._thread is None:
            return
        while True:  # the worker drains the queue even after an error, so this returns
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    break
        self._thread.join()
        self._thread = None
