"""What state an artifact directory is in, for `gsae ls`: complete, running, failed or partial.

`complete` is the stage's own marker (artifacts.COMPLETE, or the store's for harvests).
`running` means another process holds the artifact's lock right now (artifacts.locked).
`failed` means the last attempt ended in an error and left a FAILED note behind; the stages
write it with `mark_failed` (or the `recording` context manager) and clear it when they start.
Anything else that exists is `partial`: killed, interrupted, or resumable.
"""

from __future__ import annotations

import fcntl
import glob
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gsae_cli.core import artifacts, storage

FAILED = "FAILED"

COMPLETE, RUNNING, FAILED_STATUS, PARTIAL = "complete", "running", "failed", "partial"


def mark_failed(directory: Path, message: str) -> bool:
    """Leave a FAILED note (time + message) in `directory`. Writes nothing when the directory does
    not exist: creating an empty artifact folder just to hold the note could later be mistaken
    for a half-written artifact by the stage's resume logic. Returns whether the note was written."""
    directory = storage.location(directory)
    if not directory.is_dir():
        return False
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    artifacts.atomic_write_text(directory / FAILED, f"{stamp}\n{message.rstrip()}\n")
    return True


def clear_failed(directory: Path) -> None:
    """Forget an earlier failure; call when a new attempt starts (or when it succeeds)."""
    (storage.location(directory) / FAILED).unlink(missing_ok=True)


def read_failed(directory: Path) -> str | None:
    """The message of the FAILED note (without its time stamp), or None when there is none."""
    path = storage.location(directory) / FAILED
    try:
        lines = path.read_text(errors="replace").splitlines()
    except Exception:  # noqa: BLE001 - unreadable (or unreachable) note: none to show
        return None
    return "\n".join(lines[1:]).strip() or "failed (no message recorded)"


@contextmanager
def recording(directory: Path, who: str = "") -> Iterator[None]:
    """Clear any earlier FAILED note on entry; on an exception, note it and re-raise.
    Ctrl-C is not a failure (the artifact stays partial and resumable), so it is not noted.
    `who` (e.g. "harvest rank 1 of 2: ") heads the note, and a process with a `who` clears only a
    note it wrote itself: a rank starting must not hide another rank's failure."""
    if not who or (read_failed(directory) or "").startswith(who):
        clear_failed(directory)
    try:
        yield
    except Exception as err:
        try:
            mark_failed(directory, f"{who}{type(err).__name__}: {err}")
        except Exception:  # noqa: BLE001 - the note is best-effort (storage may be what failed); keep the real error
            pass
        raise


def lock_path(directory: Path) -> Path:
    """The sibling file that `artifacts.locked` flocks for `directory`."""
    directory = Path(directory)
    return directory.with_name(f".{directory.name}.lock")


def is_running(directory: Path) -> bool:
    """Whether another process holds `directory`'s lock now, or (a store harvested by several
    ranks) any rank's lock, `.NAME.rank<r>of<N>.lock`."""
    directory = Path(directory)
    ranks = directory.parent.glob(f".{glob.escape(directory.name)}.rank*of*.lock")
    return any(_held(p) for p in [lock_path(directory), *ranks])


def _held(path: Path) -> bool:
    """We try a non-blocking *shared* lock: it conflicts only with a builder's exclusive lock,
    never with another `gsae ls`, and we release it at once. Opening read-only never creates a
    lock file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # e.g. a file system without flock: we cannot tell, so do not claim it
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def artifact_status(directory: Path, complete: bool, lock_dir: Path | None = None) -> str:
    """complete > running > failed > partial. `complete` comes from the caller because harvest
    stores have their own completion test; `lock_dir`: where the locks are, when not beside
    `directory` (a store on object storage is locked under out_dir/harvest)."""
    if complete:
        return COMPLETE
    if is_running(lock_dir or directory):
        return RUNNING
    if (storage.location(directory) / FAILED).exists():
        return FAILED_STATUS
    return PARTIAL
