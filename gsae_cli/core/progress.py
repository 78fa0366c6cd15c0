"""Progress on stderr: a rich bar with throughput and ETA on a terminal, plain lines otherwise,
so stdout carries only results."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True, highlight=False)


def notice(text: str) -> None:
    """A message for the user on stderr, printed verbatim: paths and overrides may hold [brackets]
    that rich would take for markup."""
    stderr.print(text, soft_wrap=True, markup=False, emoji=False)


class _Plain:
    """Stand-in for a rich task when stderr is not a terminal: a line every `every` seconds."""

    def __init__(self, description: str, total: float, unit: str, every: float = 10.0):
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.done = 0.0
        self.fields: dict = {}
        self.start = self.last = time.monotonic()

    def advance(self, n: float, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
            print(
                f"{self.description}: {self.done:,.0f}/{self.total:,.0f} {self.unit} "
                f"({rate:,.0f} {self.unit}/s) {extra}".rstrip(),
                file=sys.stderr,
                flush=True,
            )


class _Rich:
    def __init__(self, progress: Progress, task_id, unit: str):
        self.progress, self.task_id, self.unit = progress, task_id, unit
        self.start = time.monotonic()
        self.done = 0.0

    def advance(self, n: float, **fields) -> None:
        self.done += n
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        info = " ".join(f"{k}={v}" for k, v in fields.items())
        self.progress.update(self.task_id, advance=n, rate=f"{rate:,.0f} {self.unit}/s", info=info)


@contextmanager
def track(description: str, total: float, unit: str = "tokens", completed: int = 0) -> Iterator:
    """Yield an object with `advance(n, **fields)`; `completed` is work already done (a resume)."""
    if not stderr.is_terminal:
        bar = _Plain(description, total, unit)
        bar.done = completed
        yield bar
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=stderr, transient=False) as progress:
        task_id = progress.add_task(description, total=total, completed=completed, rate="", info="")
        yield _Rich(progress, task_id, unit)
