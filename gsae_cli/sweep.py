"""`-m/--multirun`: expand Hydra sweep syntax into runs and run them one after another.

Expansion uses Hydra's own override grammar, so `a=1,2`, `a=range(1,4)`, `a=choice(x,y)` and
`group=glob(*)` mean exactly what they mean to Hydra, and members come out in the order of
Hydra's BasicSweeper (a cartesian product, the last sweep varying fastest).
"""

from __future__ import annotations

import itertools
import math
import os
import shlex
import sys
from collections import OrderedDict
from collections.abc import Callable

from gsae_cli.errors import ConfigError

Member = list[str]


class _ConfGroups:
    """The one ConfigLoader method `glob(...)` sweeps need: the options of a config group,
    read from `<dir>/<group>/*.yaml` of every config folder searched (GSAE_CONFIG_PATH, then the
    built-in tree). Stands in for Hydra's internal ConfigLoaderImpl."""

    def get_group_options(self, group_name: str, results_filter=None, config_name=None, overrides=None) -> list[str]:
        from gsae_cli.config import CONF_DIR
        from gsae_cli.core import paths

        folders = [d / group_name for d in [*paths.extra_conf_dirs(), CONF_DIR]]
        return sorted({p.stem for f in folders if f.is_dir() for p in f.iterdir() if p.suffix in (".yaml", ".yml")})


def _tidy_float(text: str) -> str:
    """range(0.1, 0.4, 0.1) yields 0.30000000000000004 by float arithmetic; the user meant 0.3,
    and the long form would address (and train) a different artifact than `...=0.3` does."""
    try:
        value = float(text)
    except ValueError:
        return text
    if "." not in text and "e" not in text.lower():
        return text  # an int stays an int
    short = f"{value:.12g}"
    if "." not in short and "e" not in short:
        short += ".0"
    close = math.isclose(float(short), value, rel_tol=1e-12, abs_tol=0.0)
    return short if close and len(short) < len(text) else text


def expand_sweep(overrides: list[str]) -> list[Member]:
    """One override list per sweep member. Non-sweep overrides are copied verbatim into every
    member; a key given twice keeps its first position and its last value, as in Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    parser = OverridesParser.create(config_loader=_ConfGroups())  # type: ignore[arg-type]
    parsed = []
    for text in overrides:  # one at a time, so the message can name the override at fault
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as e:
            raise ConfigError(f"Cannot parse the override `{text}`: {str(e).strip()}") from None

    choices: OrderedDict[str, list[str]] = OrderedDict()
    for text, ov in zip(overrides, parsed):
        key = ov.get_key_element()
        if not ov.is_sweep_override():
            choices[key] = [text]
            continue
        if not ov.is_discrete_sweep():
            raise ConfigError(
                f"`{text}` is an interval sweep, which has no finite list of values; "
                "gsae -m enumerates lists (a=1,2), range(...), choice(...) and glob(...)."
            )
        try:
            values = list(ov.sweep_string_iterator())
        except HydraException as e:
            raise ConfigError(f"Cannot expand `{text}`: {str(e).strip()}") from None
        if ov.value_type == ValueType.RANGE_SWEEP:
            values = [_tidy_float(v) for v in values]
        if not values:
            raise ConfigError(
                f"`{text}` expands to no values (an empty range, or a glob that matches no "
                "option of that config group); nothing to run."
            )
        choices[key] = [f"{key}={v}" for v in values]
    return [list(m) for m in itertools.product(*choices.values())]


def _show(member: Member) -> str:
    return " ".join(shlex.quote(o) for o in member) or "(no overrides)"


def _summary(members: list[Member], codes: dict[int, int], stopped_at: int | None) -> None:
    """A table on stderr: one line per member, so a user sees at a glance what to rerun."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, markup=False, highlight=False)
    table = Table(title="sweep summary", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("result")
    table.add_column("overrides", overflow="fold")
    for i, member in enumerate(members):
        if i in codes:
            result = "done" if codes[i] == 0 else f"failed (exit {codes[i]})"
        else:
            result = "interrupted" if i == stopped_at else "not run"
        table.add_row(str(i + 1), result, _show(member))
    console.print(table)
    n_failed = sum(1 for c in codes.values() if c)
    n_done = sum(1 for c in codes.values() if not c)
    line = f"{n_done} done, {n_failed} failed"
    if len(codes) < len(members):
        line += f", {len(members) - len(codes)} not finished"
    console.print(line + " of " + f"{len(members)} runs.")


def run_sweep(
    members: list[Member], stage: Callable[[Member], object], fail: Callable[[BaseException], int]
) -> list[tuple[Member, int]]:
    """Run `stage` on each member in turn. A failing member is reported through `fail` (which
    prints the error and returns its exit code) and the sweep goes on; the failures are returned.
    Ctrl-C ends the whole sweep: the summary is printed and the CLI exits with fail's code (130).
    Rerunning the same command resumes, since finished artifacts are reused."""
    import typer

    from gsae_cli.core import distributed
    from gsae_cli.lm import models

    world = distributed.world_from_env()
    if world.size > 1:  # under torchrun: the members are spread over the ranks, each run alone
        members = members[world.rank :: world.size]
        os.environ[distributed.SPREAD_MEMBERS] = "1"
        print(
            f"rank {world.rank} of {world.size}: {len(members)} of the sweep's members (every "
            f"{world.size}th from #{world.rank + 1})",
            file=sys.stderr,
            flush=True,
        )
    n = len(members)
    codes: dict[int, int] = {}
    failed: list[tuple[Member, int]] = []
    with models.keep_loaded():  # members sharing a model load it once
        for i, member in enumerate(members):
            print(f"[{i + 1}/{n}] {_show(member)}", file=sys.stderr, flush=True)
            try:
                stage(list(member))
            except KeyboardInterrupt as err:
                code = fail(err)
                _summary(members, codes, stopped_at=i)
                raise typer.Exit(code) from None
            except Exception as err:  # noqa: BLE001 — one member's failure must not end the sweep
                code = fail(err) or 1
                codes[i] = code
                failed.append((list(member), code))
            else:
                codes[i] = 0
    if n > 1 or failed:
        _summary(members, codes, stopped_at=None)
    return failed
