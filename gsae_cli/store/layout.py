"""The store's on-disk layout and metadata: dtypes, shards, per-shard row statistics, progress
files, and the cheap checks (`is_complete`, `rows_written`, `store_info`) that read only JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import zarr

if TYPE_CHECKING:
    pass

from gsae_cli.core import atomic, storage
from gsae_cli.errors import ArtifactError, ConfigError, StoreError

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
OWN_ENTRIES = ("zarr.json", "activations", "tokens", PROGRESS_FILE, COMPLETE_FILE)
WAIT_FOR_RANK0_S = 3600.0  # how long a rank > 0 waits for rank 0 to create the store


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


def store_world_size(path: Path) -> int:
    try:
        return int(read_json(path / PROGRESS_FILE).get("world_size", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


def rank_progress(path: Path, rank: int, world_size: int) -> tuple[int, dict[int, list[float]]]:
    """(owned shards done, their statistics by shard index) from a rank's progress file."""
    try:
        part = read_json(path / rank_progress_name(rank, world_size))
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


def raw_numpy(t: torch.Tensor) -> np.ndarray:
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


def nonfinite_rows(raw: np.ndarray, dtype: str) -> np.ndarray | None:
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


def atomic_write_json(path: Path, obj: Any, fsync: bool = True) -> None:
    # A fixed temporary name so that a killed write's debris is known by name and swept on
    # reopen (discard_shards, finish).
    atomic.write_bytes(path, json.dumps(obj).encode(), sync=fsync, tmp_name=path.name + ".tmp")


def read_json(path: Path) -> Any:
    return json.loads(storage.read_bytes(path))


def zarr_array(group: zarr.Group, name: str) -> zarr.Array:
    """The store's array `name` (zarr types a group member as Array | Group)."""
    return cast("zarr.Array", group[name])


def json_normal(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists, ...)."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"activation store attributes must be JSON-serialisable: {e}") from None


def read_meta(path: Path) -> tuple[StoreLayout, dict[str, Any], dict[str, Any]]:
    """(layout, user attrs, the attrs given when the store was created) from the group's zarr.json."""
    meta = read_json(path / "zarr.json")
    attrs = dict(meta.get("attributes") or {})
    store_meta = attrs.pop(META_KEY)
    return StoreLayout.from_json(store_meta), attrs, dict(store_meta.get("open_attrs") or {})


def nan_fill(layout: StoreLayout):
    """A fill value no valid row can hold (NaN is rejected on append; token ids are >= 0): zarr
    leaves out chunks that equal the fill value, which for a legitimately all-zero shard would
    look like a missing file."""
    return 0x7FC0 if layout.dtype == "bfloat16" else float("nan")  # 0x7FC0: a bfloat16 NaN


def read_layout(path: Path) -> tuple[StoreLayout, dict[str, Any]]:
    """(layout, user attrs) from the group's zarr.json, without opening zarr."""
    layout, attrs, _ = read_meta(path)
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
            return read_layout(p)[0].n_tokens
        world = store_world_size(p)
        if world == 1:
            return int(read_json(p / PROGRESS_FILE)["rows_written"])
        layout = read_layout(p)[0]
        done = [rank_progress(p, r, world)[0] for r in range(world)]
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
        layout, attrs = read_layout(p)
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


def incomplete_message(path: Path, done: int, total: int) -> str:
    return (
        f"activation store at {path} is incomplete ({done} of {total} rows); rerun the same "
        "`gsae harvest` command to resume it, or pass --force to rebuild it from scratch."
    )


# ---------------------------------------------------------------------------- writer
