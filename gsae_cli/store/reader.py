"""Reading a store: `open_store` checks it is whole, `ActivationStore` reads rows and tokens,
refusing chunks that fail their checksum or hold values a harvest never writes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr

if TYPE_CHECKING:
    pass

from gsae_cli.core import storage
from gsae_cli.errors import StoreError
from gsae_cli.store.layout import (
    COMPLETE_FILE,
    DamagedStoreError,
    StoreLayout,
    incomplete_message,
    nonfinite_rows,
    read_layout,
    rows_written,
    zarr_array,
)


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
        self._acts = zarr_array(group, "activations")
        self._toks = zarr_array(group, "tokens")

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
        bad = nonfinite_rows(raw, self.layout.dtype)
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
        layout, attrs = read_layout(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(
            f"{p} does not hold a readable activation store ({type(e).__name__}: {e}); "
            "rebuild it with `gsae harvest ... --force`."
        ) from None
    complete = storage.exists(p / COMPLETE_FILE)
    done = layout.n_tokens if complete else rows_written(p)
    if not complete and not allow_incomplete:
        raise StoreError(incomplete_message(p, done, layout.n_tokens))
    corrupt = f"the activation store at {p} is corrupt"
    try:
        group = zarr.open_group(storage.zarr_store(p, read_only=True), mode="r")
        acts, toks = zarr_array(group, "activations"), zarr_array(group, "tokens")
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
