"""Artifact directories: atomic file writes, the completion marker, and a per-artifact lock so
that concurrent sweep processes never build the same artifact twice or corrupt each other."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gsae_cli.core import atomic, storage
from gsae_cli.errors import ArtifactError

COMPLETE = "COMPLETE"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (core/atomic.py)."""
    atomic.write_bytes(storage.location(path), data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    path = storage.location(path)
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(
            f"Cannot read {path} ({e}); the artifact is damaged. Remove its folder "
            f"(rm -r {path.parent}) or rerun the stage with --force."
        ) from None


def is_complete(directory: Path) -> bool:
    return (storage.location(directory) / COMPLETE).exists()


def mark_complete(directory: Path) -> None:
    """Written last: an artifact without it is partial, whatever else is there."""
    atomic_write_text(Path(directory) / COMPLETE, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


def remove(directory: Path) -> None:
    """Remove an artifact for --force: rename aside first so a kill never leaves half a folder
    that looks like the artifact."""
    directory = storage.location(directory)
    if storage.is_remote(directory):  # no renames on object storage: the markers go first
        storage.rmtree(directory, first=(COMPLETE, "progress.json"))
        return
    if not directory.exists():
        return
    trash = directory.with_name(f".trash-{directory.name}-{os.getpid()}")
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def locked(directory: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (an flock on a sibling file). A second process
    waits for the first to finish, then finds the artifact complete and reuses it."""
    from gsae_cli.core.progress import notice

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.with_name(f".{directory.name}.lock")
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notice(f"waiting for another gsae process that is building {what} ({directory})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(
    directory: Path, what: str, force: bool, build: Callable[[], Any], result_file: str = "summary.json"
) -> tuple[Any, bool]:
    """(the artifact's result, reused?): under its lock, reuse a complete artifact (its
    `result_file`), else remove any half-written folder and `build()` it (build writes the files
    and the COMPLETE marker last, and returns the result)."""
    from gsae_cli.core.progress import notice

    with locked(directory, what):
        if force:
            remove(directory)
        if is_complete(directory):
            notice(f"reusing complete {what} {directory}")
            return read_json(Path(directory) / result_file), True
        remove(directory)  # interrupted: rebuilt, never shown half-written
        return build(), False
