"""The activation store: a zarr v3 group of `activations` [n_tokens, d_model] and `tokens` [n_tokens].

Layout of a store directory::

    zarr.json       group metadata; attrs = the caller's attrs (+ final attrs) and a reserved
                    "gsae_store" entry with the layout (d_model, n_tokens, dtype, chunk/shard rows)
    activations/    float16 | float32 array; bfloat16 is stored as its raw uint16 bits and the
                    array's attrs say {"dtype": "bfloat16"}
    tokens/         int32 token id of each activation row
    progress.json   {"rows_written": N}: rows [0, N) are fully and durably on disk
    COMPLETE        written last, by `StoreWriter.finish`

Both arrays are chunked along rows (`chunk_rows`, the unit a reader fetches) and sharded
(`shard_rows` = a whole number of chunks per file) so that the file count stays low while any
chunk remains readable on its own. Every chunk carries a crc32c (format 2), so a damaged chunk
fails to decode instead of reading back as wrong numbers.

Integrity on the read path. `ActivationStore.read_rows` raises `DamagedStoreError`, naming the
chunk, its rows and its shard file, when a chunk cannot be decoded (checksum, truncation) or
holds NaN/inf (append refuses those, and a chunk missing from its shard reads back as the NaN
fill value). The finiteness check works on the raw bits already in memory and costs well under
1 % of a training step.

Resume contract. The writer's flush unit is one whole shard: a shard is written exactly once,
never read-modify-written. After both arrays' shard files are written (zarr's LocalStore writes
each file to a temporary name and renames it) and fsynced, `progress.json` is replaced
atomically. A writer killed at any instant therefore leaves `rows_written` pointing at the end
of the last complete shard; on reopen any shard files past it are deleted, and the caller
re-appends rows from `rows_written` on, which makes the result identical to an uninterrupted
write.

Several writers (harvest ranks). With `world_size` N > 1, writer `rank` r owns shards r, r+N,
r+2N, ... and writes only those, whole, in order; `progress.json` (written by rank 0 when it
creates the store) records N, and each rank records its own progress in
`progress.rank<r>of<N>.json` (shards done and their row statistics). A rank killed at any instant
resumes its own part; the writer that finds every rank's part done (under a lock) writes the
final attrs and `COMPLETE`. The shards are the same whole-shard writes as with one writer, so the
result does not depend on N.

Object storage. A store may live under an s3:// prefix (storage.py; `store_url`). There a PUT
stands in for write-temp-then-rename (an object appears whole or not at all), there is nothing to
fsync, and there are no temporaries to sweep; the order of writes, and so the resume contract, is
the same. The multi-rank finish lock is an flock, so on object storage it is skipped: ranks that
finish together may both complete the store, writing the same statistics and marker.

Row statistics. Each writer computes, per shard, the row count, Σ||x||², Σ||x|| and max ||x||
(float64) as it writes the shard, and keeps them in its progress file; the store's `norms` attr
combines them in shard order, so they too are the same for any N and across resumes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

if TYPE_CHECKING:
    from zarr.abc.codec import BytesBytesCodec
    from zarr.core.array_spec import ArrayConfigParams

from gsae_cli import storage
from gsae_cli.errors import ArtifactError, ConfigError, StoreError

__all__ = [
    "ActivationStore",
    "DamagedStoreError",
    "ShuffledBatches",
    "StoreLayout",
    "StoreWriter",
    "default_shard_chunks",
    "is_complete",
    "open_store",
    "rows_written",
    "store_info",
]

FORMAT_VERSION = 2  # 2: a crc32c per chunk; format-1 stores still read (without it)
META_KEY = "gsae_store"
PROGRESS_FILE = "progress.json"
COMPLETE_FILE = "COMPLETE"
DEFAULT_CHUNK_ROWS = 8192
SHARD_TARGET_BYTES = 64 * 2**20
COMPRESSORS = ("none", "zstd")
ZSTD_LEVEL = 1  # level 3 compressed random bf16 no better (1.29x) and wrote slower


class DamagedStoreError(StoreError, ArtifactError):
    """A chunk of a store that cannot be decoded or holds values a harvest never writes (exit 2)."""


# store dtype name -> (torch dtype, numpy dtype the bits are stored as)
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float16": (torch.float16, np.dtype("float16")),
    "float32": (torch.float32, np.dtype("float32")),
    "bfloat16": (torch.bfloat16, np.dtype("uint16")),
}
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32", "bf16": "bfloat16"}
_OWN_ENTRIES = ("zarr.json", "activations", "tokens", PROGRESS_FILE, COMPLETE_FILE)
_WAIT_FOR_RANK0_S = 3600.0  # how long a rank > 0 waits for rank 0 to create the store


def rank_progress_name(rank: int, world_size: int) -> str:
    return f"progress.rank{rank}of{world_size}.json"


def shard_stats(rows: np.ndarray, dtype: str) -> list[float]:
    """[rows, Σ||x||², Σ||x||, max ||x||] of one shard's rows (raw store bits), in float64."""
    if rows.shape[0] == 0:
        return [0, 0.0, 0.0, 0.0]
    x = torch.from_numpy(rows)
    x = x.view(torch.bfloat16) if dtype == "bfloat16" else x
    # squared norms block by block: a float64 copy of a whole 64 MiB shard would be ~0.5 GB
    sq = torch.cat([x[i : i + 8192].double().pow(2).sum(dim=1) for i in range(0, x.shape[0], 8192)])
    return [int(sq.numel()), float(sq.sum()), float(sq.sqrt().sum()), float(sq.max().sqrt())]


def combine_stats(per_shard: list[list[float]]) -> dict[str, float]:
    """The store's norms from its shards' statistics, summed in shard order."""
    count: float  # a row count, typed as the shard statistics are
    count, sum_sq, total, peak = 0, 0.0, 0.0, 0.0
    for n, sq, s, m in per_shard:
        count += n
        sum_sq += sq
        total += s
        peak = max(peak, m)
    n = max(count, 1)
    return {"mean_sq_norm": sum_sq / n, "mean_norm": total / n, "max_norm": peak, "count": count}


def _world_size(path: Path) -> int:
    try:
        return int(_read_json(path / PROGRESS_FILE).get("world_size", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


def _rank_progress(path: Path, rank: int, world_size: int) -> tuple[int, dict[int, list[float]]]:
    """(owned shards done, their statistics by shard index) from a rank's progress file."""
    try:
        part = _read_json(path / rank_progress_name(rank, world_size))
    except (OSError, ValueError):
        return 0, {}
    return int(part["shards_done"]), {int(k): v for k, v in part.get("shard_stats", {}).items()}


def owned_shards(n_shards: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, n_shards, world_size))


def dtype_name(dtype: torch.dtype | str) -> str:
    """Canonical store dtype name ("float16" | "float32" | "bfloat16") of a torch dtype or name."""
    if isinstance(dtype, torch.dtype):
        for name, (tdt, _) in _DTYPES.items():
            if tdt == dtype:
                return name
    elif isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        if name in _DTYPES:
            return name
    raise ConfigError(f"activation store dtype {dtype!r} is not supported; use float16, bfloat16 or float32.")


def default_shard_chunks(d_model: int, dtype: torch.dtype | str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Chunks per shard: as many whole chunks as fit in ~64 MiB (at least one).

    The writer buffers one shard in memory, so this bounds its buffer (d_model 576 in bf16:
    7 chunks of 8192 rows, 63 MiB) while keeping files few (~16 per GiB of activations).
    """
    row_bytes = d_model * _DTYPES[dtype_name(dtype)][1].itemsize
    return max(1, SHARD_TARGET_BYTES // (row_bytes * chunk_rows))


@dataclass(frozen=True)
class StoreLayout:
    """The parameters that fix a store's on-disk layout (kept in group attrs under "gsae_store")."""

    d_model: int
    n_tokens: int
    dtype: str
    chunk_rows: int
    shard_rows: int
    compressor: str

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> StoreLayout:
        return cls(**{k: meta[k] for k in cls.__dataclass_fields__})

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype][0]

    @property
    def np_dtype(self) -> np.dtype:
        return _DTYPES[self.dtype][1]

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_tokens / self.shard_rows)


# ---------------------------------------------------------------------------- small file helpers


def _raw_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy without a copy; bfloat16 as its uint16 bits."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


# store dtype -> (unsigned int of the same width, mask without the sign bit, exponent all ones):
# a value is NaN or inf exactly when its masked bits reach the all-ones exponent.
_NONFINITE_BITS: dict[str, tuple[type, int, int]] = {
    "bfloat16": (np.uint16, 0x7FFF, 0x7F80),
    "float16": (np.uint16, 0x7FFF, 0x7C00),
    "float32": (np.uint32, 0x7FFFFFFF, 0x7F800000),
}


def _nonfinite_rows(raw: np.ndarray, dtype: str) -> np.ndarray | None:
    """Indices of the rows of `raw` (as stored) holding NaN/inf, or None if every value is finite.

    One masked max over the raw bits: no float conversion, ~5x faster than np.isfinite on
    float16, so it can run on every chunk the training reader fetches."""
    if raw.size == 0:
        return None
    uint, mask, exp = _NONFINITE_BITS[dtype]
    masked = raw.view(uint) & uint(mask)
    if masked.max() < exp:
        return None
    return np.flatnonzero((masked >= exp).any(axis=1))


def _atomic_write_json(path: Path, obj: Any, fsync: bool = True) -> None:
    # A fixed temporary name (not storage.write_atomic's mkstemp) so that a killed write's debris
    # is known by name and swept on reopen (_discard_shards, finish).
    if storage.is_remote(path):
        storage.write_atomic(path, json.dumps(obj).encode())
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        storage.fsync(path.parent)


def _read_json(path: Path) -> Any:
    return json.loads(storage.read_bytes(path))


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The store's array `name` (zarr types a group member as Array | Group)."""
    return cast("zarr.Array", group[name])


def _json_normal(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists, ...)."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"activation store attributes must be JSON-serialisable: {e}") from None


def _read_meta(path: Path) -> tuple[StoreLayout, dict[str, Any], dict[str, Any]]:
    """(layout, user attrs, the attrs given when the store was created) from the group's zarr.json."""
    meta = _read_json(path / "zarr.json")
    attrs = dict(meta.get("attributes") or {})
    store_meta = attrs.pop(META_KEY)
    return StoreLayout.from_json(store_meta), attrs, dict(store_meta.get("open_attrs") or {})


def _nan_fill(layout: StoreLayout):
    """A fill value no valid row can hold (NaN is rejected on append; token ids are >= 0): zarr
    leaves out chunks that equal the fill value, which for a legitimately all-zero shard would
    look like a missing file."""
    return 0x7FC0 if layout.dtype == "bfloat16" else float("nan")  # 0x7FC0: a bfloat16 NaN


def _read_layout(path: Path) -> tuple[StoreLayout, dict[str, Any]]:
    """(layout, user attrs) from the group's zarr.json, without opening zarr."""
    layout, attrs, _ = _read_meta(path)
    return layout, attrs


def is_complete(path: str | os.PathLike) -> bool:
    """True if `path` holds a finished activation store (cheap: one stat)."""
    p = storage.location(path)
    return storage.exists(p / COMPLETE_FILE) and storage.exists(p / "zarr.json")


def rows_written(path: str | os.PathLike) -> int:
    """Rows durably on disk in the store at `path` (0 if there is none); cheap."""
    p = storage.location(path)
    try:
        if is_complete(p):
            return _read_layout(p)[0].n_tokens
        world = _world_size(p)
        if world == 1:
            return int(_read_json(p / PROGRESS_FILE)["rows_written"])
        layout = _read_layout(p)[0]
        done = [_rank_progress(p, r, world)[0] for r in range(world)]
        shard = 0
        while shard < layout.n_shards and shard // world < done[shard % world]:
            shard += 1
        return min(shard * layout.shard_rows, layout.n_tokens)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if storage.is_remote(p) and storage.access_error(e) and not isinstance(e, FileNotFoundError):
            # unreachable is not empty: a resume must not restart (and discard shards) on a network error
            raise StoreError(storage.explain(e, p, "the activation store")) from None
        return 0


def store_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """A small summary for listings (`gsae ls`), or None if `path` holds no store; reads only JSON."""
    p = storage.location(path)
    try:
        layout, attrs = _read_layout(p)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {
        "path": str(p),
        "complete": is_complete(p),
        "rows_written": rows_written(p),
        "n_tokens": layout.n_tokens,
        "d_model": layout.d_model,
        "dtype": layout.dtype,
        "attrs": attrs,
    }


def _incomplete_message(path: Path, done: int, total: int) -> str:
    return (
        f"activation store at {path} is incomplete ({done} of {total} rows); rerun the same "
        "`gsae harvest` command to resume it, or pass --force to rebuild it from scratch."
    )


# ---------------------------------------------------------------------------- writer


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
        self._acts = _array(group, "activations")
        self._toks = _array(group, "tokens")
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
        user_attrs = _json_normal(dict(attrs or {}))
        if META_KEY in user_attrs:
            raise ConfigError(f"activation store attribute name {META_KEY!r} is reserved.")

        storage.check_reachable(path, "the activation store")
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a directory; remove it or choose another output path.")
        if rank > 0 and not storage.exists(path / PROGRESS_FILE) and not storage.exists(path / COMPLETE_FILE):
            _wait_for_creation(path, rank)
        if storage.exists(path / PROGRESS_FILE) or storage.exists(path / COMPLETE_FILE):
            return cls._reopen(path, layout, user_attrs, fsync, max_pending, rank, world_size)
        return cls._create(path, layout, user_attrs, fsync, max_pending, world_size)

    @classmethod
    def _create(
        cls, path: Path, layout: StoreLayout, attrs: dict, fsync: bool, max_pending: int, world_size: int = 1
    ) -> StoreWriter:
        path.mkdir(parents=True, exist_ok=True)
        # Leftovers of a creation that died before progress.json was written hold no rows.
        for p in [path / e for e in _OWN_ENTRIES] + list(path.glob("progress.rank*of*.json")):
            if p.is_dir():
                storage.rmtree(p)
            elif p.exists():
                p.unlink()
        group = zarr.create_group(
            storage.zarr_store(path), attributes={**attrs, META_KEY: {**layout.to_json(), "open_attrs": attrs}}
        )
        compressors: list[BytesBytesCodec] = [ZstdCodec(level=ZSTD_LEVEL)] if layout.compressor == "zstd" else []
        # last, so it covers the bytes on disk: damage fails to decode instead of reading as numbers
        compressors.append(Crc32cCodec())
        # cast: zarr marks the other keys NotRequired with typing.NotRequired, unknown to mypy's 3.10 target
        cfg = cast("ArrayConfigParams", {"write_empty_chunks": True})
        acts = group.create_array(
            "activations",
            shape=(layout.n_tokens, layout.d_model),
            dtype=layout.np_dtype,
            chunks=(layout.chunk_rows, layout.d_model),
            shards=(layout.shard_rows, layout.d_model),
            compressors=compressors,
            fill_value=_nan_fill(layout),
            config=cfg,
            attributes={"dtype": layout.dtype},
        )
        group.create_array(
            "tokens",
            shape=(layout.n_tokens,),
            dtype="int32",
            chunks=(layout.chunk_rows,),
            shards=(layout.shard_rows,),
            compressors=compressors,
            fill_value=-1,
            config=cfg,
        )
        del acts
        if fsync:
            for p in (path / "zarr.json", path / "activations" / "zarr.json", path / "tokens" / "zarr.json"):
                storage.fsync(p)
        progress = {"rows_written": 0} | ({"world_size": world_size} if world_size > 1 else {})
        _atomic_write_json(path / PROGRESS_FILE, progress, fsync)
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
        try:
            old_layout, _, old_attrs = _read_meta(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"{path} holds an activation store whose metadata cannot be read ({type(e).__name__}: {e}); "
                "pass --force to rebuild it."
            ) from None
        diffs = [
            f"{k}: store has {getattr(old_layout, k)!r}, asked for {getattr(layout, k)!r}"
            for k in layout.__dataclass_fields__
            if getattr(old_layout, k) != getattr(layout, k)
        ]
        missing = "<missing>"
        for k in sorted(set(old_attrs) | set(attrs)):
            old, new = old_attrs.get(k, missing), attrs.get(k, missing)
            if old != new:
                diffs.append(f"attribute {k!r}: store has {old!r}, asked for {new!r}")
        if diffs:
            raise StoreError(
                f"the activation store at {path} was written with different parameters ("
                + "; ".join(diffs)
                + "). Pass --force to delete it and rebuild, or choose another output path."
            )
        complete = storage.exists(path / COMPLETE_FILE)
        started = _world_size(path)
        if not complete and started != world_size:
            raise StoreError(
                f"the activation store at {path} was started by {started} harvest process(es) and is not "
                f"finished; resume it with harvest.world_size={started} (each rank reruns its own part), or "
                "pass --force to rebuild it."
            )
        owned = owned_shards(layout.n_shards, rank, world_size)
        if world_size > 1 and not complete:
            shards_done, stats = _rank_progress(path, rank, world_size)
            done = owned[shards_done] * layout.shard_rows if shards_done < len(owned) else layout.n_tokens
        else:
            done = layout.n_tokens if complete else rows_written(path)
            # Rows past the last complete shard are rewritten from scratch.
            done = layout.n_tokens if done >= layout.n_tokens else done - done % layout.shard_rows
            shards_done = -(-done // layout.shard_rows)
            try:  # statistics missing or unreadable are recomputed from the shards below
                stats = {} if complete else dict(enumerate(_read_json(path / PROGRESS_FILE).get("shard_stats", [])))
            except (OSError, ValueError, AttributeError):
                stats = {}
        try:
            group = zarr.open_group(storage.zarr_store(path, read_only=complete), mode="r+" if not complete else "r")
            acts, toks = _array(group, "activations"), _array(group, "tokens")
        except Exception as e:  # noqa: BLE001 - any zarr failure means an unusable store
            raise StoreError(
                f"the activation store at {path} cannot be opened ({type(e).__name__}: {e}); "
                "pass --force to rebuild it."
            ) from None
        if not complete:  # (done == n_tokens: killed between the last shard and finish())
            _discard_shards(path, acts, toks, owned[shards_done:], temporaries=world_size == 1)
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
            a = _raw_numpy(a.contiguous())
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
        final = _json_normal(dict(final_attrs or {}))
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
        with _finish_lock(self.path):
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
                _atomic_write_json(self.path / COMPLETE_FILE, {"rows": self.n_tokens}, self._fsync)
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
            merged.update(self._stats if r == self.rank else _rank_progress(self.path, r, self.world_size)[1])
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
            _atomic_write_json(self.path / PROGRESS_FILE, {"rows_written": stop, "shard_stats": stats}, self._fsync)
            self._rows_written = stop
        else:
            self._shards_done += 1
            _atomic_write_json(
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


@contextlib.contextmanager
def _finish_lock(path: Path) -> Iterator[None]:
    """An flock on a file in the store. Object storage has no locks: there two ranks that finish at
    the same moment may both complete the store; both write the same rows' statistics and marker, so
    only the `throughput` record of the one that writes last is kept."""
    if storage.is_remote(path):
        yield
        return
    import fcntl

    with open(path / ".finish.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _wait_for_creation(path: Path, rank: int) -> None:
    import time

    from gsae_cli.progress import notice

    notice(f"harvest rank {rank}: waiting for rank 0 to create the store at {path}")
    deadline = time.monotonic() + _WAIT_FOR_RANK0_S
    while not storage.exists(path / PROGRESS_FILE) and not storage.exists(path / COMPLETE_FILE):
        if time.monotonic() > deadline:
            raise StoreError(
                f"harvest rank {rank} waited {_WAIT_FOR_RANK0_S:.0f} s for rank 0 to create the store at "
                f"{path}; start rank 0 (harvest.rank=0) with the same config."
            )
        time.sleep(0.5)


def _discard_shards(path: Path, acts, toks, shards: list[int], temporaries: bool) -> None:
    """Delete the files of `shards` (a killed write's debris: shards a writer will write again)
    and, with `temporaries` (one writer, so no other is mid-write), zarr's temporary files (a local
    store's only: an object store never shows a half-written object)."""
    temporaries = temporaries and not storage.is_remote(path)
    for arr, key in ((acts, lambda i: (i, 0)), (toks, lambda i: (i,))):
        root = path / arr.basename
        present = storage.files_under(root)  # one listing, not a request per shard
        for shard in shards:
            name = arr.metadata.encode_chunk_key(key(shard))
            if name in present:
                (root / name).unlink()
        if not temporaries:
            continue
        for dirpath, _, files in os.walk(root):
            for name in files:
                if name.endswith(".partial"):
                    os.unlink(os.path.join(dirpath, name))
    if temporaries:
        tmp = path / (PROGRESS_FILE + ".tmp")
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------- reader


class ActivationStore:
    """A complete activation store opened read-only (see `open_store`)."""

    def __init__(
        self, path: Path, layout: StoreLayout, attrs: dict[str, Any], group: zarr.Group, rows_written: int | None = None
    ):
        self.path = path
        self.layout = layout
        self.attrs = attrs
        #: rows readable: n_tokens, or fewer for a partial store opened with allow_incomplete
        self.rows_written = layout.n_tokens if rows_written is None else rows_written
        self._acts = _array(group, "activations")
        self._toks = _array(group, "tokens")

    n_tokens = property(lambda self: self.layout.n_tokens)
    d_model = property(lambda self: self.layout.d_model)
    chunk_rows = property(lambda self: self.layout.chunk_rows)
    shard_rows = property(lambda self: self.layout.shard_rows)
    dtype = property(lambda self: self.layout.torch_dtype, doc="torch dtype of the activations")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_tokens / self.chunk_rows)

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, n_tokens={self.n_tokens}, d_model={self.d_model}, "
            f"dtype={self.layout.dtype})"
        )

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.n_chunks:
            raise IndexError(f"chunk {i} out of range [0, {self.n_chunks})")
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.n_tokens)

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"rows [{start}, {stop}) out of range for a store of {self.n_tokens} rows")

    def shard_file(self, array: str, row: int) -> Path:
        """The file holding row `row` of `array` ("activations" or "tokens")."""
        arr = self._acts if array == "activations" else self._toks
        shard = row // self.shard_rows
        return self.path / arr.basename / arr.metadata.encode_chunk_key((shard, 0) if arr.ndim == 2 else (shard,))

    def _damaged(self, arr, chunk: int, problem: str) -> DamagedStoreError:
        a, b = self.chunk_bounds(chunk)
        f = self.shard_file(arr.basename, a)
        if not storage.exists(f):
            problem += " (its shard file is missing)"
        return DamagedStoreError(
            f"The activation store at {self.path} is damaged: chunk {chunk} of its {arr.basename} (rows "
            f"{a}-{b - 1}, in the shard file {f}) {problem}. Rebuild the store: rerun `gsae harvest --force` "
            f"with the same overrides as this command, or delete the directory {self.path} and rerun this "
            "command, which harvests it again."
        )

    def _read(self, arr, start: int, stop: int) -> np.ndarray:
        try:
            return arr[start:stop]
        except Exception as e:  # noqa: BLE001 - checksum/decoding failures mean corruption
            first = e
        # Only on failure: read the range chunk by chunk to name the damaged one.
        for c in range(start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1):
            try:
                arr[slice(*self.chunk_bounds(c))]
            except Exception as e:  # noqa: BLE001
                if storage.is_remote(self.path) and storage.access_error(e):  # not reached: not damage
                    raise StoreError(
                        storage.explain(e, self.path, "the activation store") + " Rerun when "
                        "the storage is reachable; the store itself may be fine."
                    ) from e
                why = (
                    "fails its crc32c checksum (its bytes changed after they were written)"
                    if "checksum" in str(e)
                    else f"cannot be decoded ({type(e).__name__}: {_first_line(e)})"
                )
                raise self._damaged(arr, c, why) from e
        raise StoreError(
            f"reading rows {start}-{stop - 1} of {arr.basename} from the activation store at {self.path} failed "
            f"({type(first).__name__}: {_first_line(first)}), although each chunk reads on its own; rerun, and "
            "if it happens again rebuild the store with `gsae harvest --force` and the same overrides."
        ) from first

    def read_rows(self, start: int, stop: int) -> torch.Tensor:
        """Activations of rows [start, stop) as a CPU tensor of the store dtype (bfloat16 zero-copy).

        Raises DamagedStoreError if a chunk cannot be decoded or holds NaN/inf."""
        self._check_range(start, stop)
        raw = self._read(self._acts, start, stop)
        bad = _nonfinite_rows(raw, self.layout.dtype)
        if bad is not None:
            row = start + int(bad[0])
            c = row // self.chunk_rows
            a, b = self.chunk_bounds(c)
            n_bad = int(((bad + start >= a) & (bad + start < b)).sum())
            raise self._damaged(
                self._acts,
                c,
                f"holds NaN or inf, which a harvest never writes, in {n_bad} of the rows read (first: row {row})",
            )
        t = torch.from_numpy(raw)
        return t.view(torch.bfloat16) if self.layout.dtype == "bfloat16" else t

    def read_tokens(self, start: int, stop: int) -> torch.Tensor:
        """Token ids of rows [start, stop) as an int32 CPU tensor.

        Raises DamagedStoreError if a chunk cannot be decoded or holds the missing-chunk fill (-1)."""
        self._check_range(start, stop)
        raw = self._read(self._toks, start, stop)
        if raw.size and raw.min() < 0:
            row = start + int(np.flatnonzero(raw < 0)[0])
            raise self._damaged(
                self._toks,
                row // self.chunk_rows,
                f"holds negative token ids, which a harvest never writes (first: row {row})",
            )
        return torch.from_numpy(raw)

    def read_chunk(self, i: int) -> torch.Tensor:
        return self.read_rows(*self.chunk_bounds(i))

    def verify(self) -> None:
        """Read every chunk back (checksums, decoding, finite values, valid token ids)."""
        for i in range(self.n_chunks):
            self.read_chunk(i)
            self.read_tokens(*self.chunk_bounds(i))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0].rstrip(".")


def open_store(path: str | os.PathLike, *, allow_incomplete: bool = False) -> ActivationStore:
    """Open a complete activation store read-only, or raise StoreError saying what to do.

    With `allow_incomplete`, a partial store opens too; only rows [0, `.rows_written`) hold data.
    """
    p = storage.location(path)
    storage.check_reachable(p, "the activation store")
    if not storage.exists(p / "zarr.json"):
        raise StoreError(
            f"no activation store at {p}; run `gsae harvest` (with the same model/data overrides) to create it."
        )
    try:
        layout, attrs = _read_layout(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(
            f"{p} does not hold a readable activation store ({type(e).__name__}: {e}); "
            "rebuild it with `gsae harvest ... --force`."
        ) from None
    complete = storage.exists(p / COMPLETE_FILE)
    done = layout.n_tokens if complete else rows_written(p)
    if not complete and not allow_incomplete:
        raise StoreError(_incomplete_message(p, done, layout.n_tokens))
    corrupt = f"the activation store at {p} is corrupt"
    try:
        group = zarr.open_group(storage.zarr_store(p, read_only=True), mode="r")
        acts, toks = _array(group, "activations"), _array(group, "tokens")
    except Exception as e:  # noqa: BLE001
        raise StoreError(f"{corrupt} ({type(e).__name__}: {e}); rebuild it with `gsae harvest ... --force`.") from None
    problems = []
    if acts.shape != (layout.n_tokens, layout.d_model) or toks.shape != (layout.n_tokens,):
        problems.append(
            f"array shapes {acts.shape}/{toks.shape} do not match n_tokens={layout.n_tokens}, d_model={layout.d_model}"
        )
    if acts.dtype != layout.np_dtype or acts.attrs.get("dtype") != layout.dtype or toks.dtype != np.int32:
        problems.append(f"array dtypes {acts.dtype}/{toks.dtype} do not match {layout.dtype}/int32")
    if not problems:  # a missing shard file would silently read back as zeros
        for arr, key in ((acts, lambda i: (i, 0)), (toks, lambda i: (i,))):
            present = storage.files_under(p / arr.basename)  # one listing (strict: errors are not "missing")
            missing = [
                i for i in range(-(-done // layout.shard_rows)) if arr.metadata.encode_chunk_key(key(i)) not in present
            ]
            if missing:
                problems.append(
                    f"{len(missing)} shard file(s) of {arr.basename} are missing (first: shard {missing[0]})"
                )
    if problems:
        raise StoreError(f"{corrupt}: " + "; ".join(problems) + "; rebuild it with `gsae harvest ... --force`.")
    return ActivationStore(p, layout, attrs, group, None if complete else done)


from gsae_cli.batches import ShuffledBatches  # noqa: E402  (re-export; batches does not import this module)
