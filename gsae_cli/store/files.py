"""The store's files: creating the zarr group and its arrays, checking a reopened store against what
is asked, sweeping a killed write's debris, and the lock under which the last rank finishes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

if TYPE_CHECKING:
    from zarr.abc.codec import BytesBytesCodec
    from zarr.core.array_spec import ArrayConfigParams

from gsae_cli.core import storage
from gsae_cli.errors import StoreError
from gsae_cli.store.layout import (
    COMPLETE_FILE,
    META_KEY,
    OWN_ENTRIES,
    PROGRESS_FILE,
    WAIT_FOR_RANK0_S,
    ZSTD_LEVEL,
    StoreLayout,
    atomic_write_json,
    nan_fill,
    read_meta,
)


def create_group(path: Path, layout: StoreLayout, attrs: dict, fsync: bool, world_size: int = 1) -> zarr.Group:
    """Create the store's zarr group, its two arrays and its first progress record, sweeping the
    leftovers of a creation that died first."""
    path.mkdir(parents=True, exist_ok=True)
    # Leftovers of a creation that died before progress.json was written hold no rows.
    for p in [path / e for e in OWN_ENTRIES] + list(path.glob("progress.rank*of*.json")):
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
        fill_value=nan_fill(layout),
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
    atomic_write_json(path / PROGRESS_FILE, progress, fsync)
    return group


def check_reopened(path: Path, layout: StoreLayout, attrs: dict) -> None:
    """Raise StoreError unless the store at `path` has the layout and attributes asked for."""
    try:
        old_layout, _, old_attrs = read_meta(path)
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


@contextlib.contextmanager
def finish_lock(path: Path) -> Iterator[None]:
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


def wait_for_creation(path: Path, rank: int) -> None:
    import time

    from gsae_cli.core.progress import notice

    notice(f"harvest rank {rank}: waiting for rank 0 to create the store at {path}")
    deadline = time.monotonic() + WAIT_FOR_RANK0_S
    while not storage.exists(path / PROGRESS_FILE) and not storage.exists(path / COMPLETE_FILE):
        if time.monotonic() > deadline:
            raise StoreError(
                f"harvest rank {rank} waited {WAIT_FOR_RANK0_S:.0f} s for rank 0 to create the store at "
                f"{path}; start rank 0 (harvest.rank=0) with the same config."
            )
        time.sleep(0.5)


def discard_shards(path: Path, acts, toks, shards: list[int], temporaries: bool) -> None:
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
