"""Atomic writes, the one way gsae writes a file or a folder: a reader, or a crash at any instant,
sees the old content or the new, never a mix. On disk: write beside the target, fsync, rename
over it, fsync the folder. On object storage a PUT is already all-or-nothing.

- `write_bytes`: bytes we hold (JSON, text, progress records);
- `replacing`: a file a library writes by name (safetensors, `torch.save`);
- `folder`: a whole folder built beside its destination (an export, a converted model).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from gsae_cli.core.storage import Location, fsync, is_remote


def write_bytes(p: Location, data: bytes, *, sync: bool = True, tmp_name: str | None = None) -> None:
    """Replace `p` with `data`. The temporary file gets a unique name, or `tmp_name` where a
    killed write's debris must be known by name (the store sweeps it on reopen)."""
    if is_remote(p):
        p.write_bytes(data)
        return
    p = Path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if tmp_name is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    else:
        tmp = str(p.parent / tmp_name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        fsync(p.parent)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (`.NAME.tmp`) for a writer that takes a file name; when the
    block ends normally it is fsynced and renamed over `path`, when it raises it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


@contextlib.contextmanager
def folder(dest: Path, remove: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A temporary folder beside `dest` to build it in; when the block ends normally its files are
    fsynced, the old `dest` is removed (by `remove`, default: deleted) and the new one renamed into
    place. A kill before the rename leaves the old folder; the temporary one is always removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if dest.exists():
            (remove or shutil.rmtree)(dest)
        os.replace(tmp, dest)
        fsync(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
