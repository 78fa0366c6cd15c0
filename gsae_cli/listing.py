"""`gsae ls`: every artifact under the outputs folder with the config values that tell them
apart, its status (complete / running / failed / partial, see core/status.py) and its size.

It reads only small files (summary.json, sae.json, metrics.json, config.yaml, the store's JSON)
and never fails on a damaged artifact: what cannot be read shows as blank.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from gsae_cli.core import status, storage
from gsae_cli.errors import ConfigError

STAGES = ("harvest", "train", "evalset", "eval", "inspect", "compare", "study")
FIELDS = (
    "stage",
    "name",
    "model",
    "hook",
    "sae",
    "l1_coefficient",
    "tokens",
    "status",
    "progress",
    "size_bytes",
    "path",
    "message",
)


# ---- the config of the commands that only read artifacts (ls, report) ---------------------------

# A Hydra override: a dotted (or group/path) key with optional ~, +, ++ and @package, then `=`.
# Anything else on a read-only command's line is a path: `./a=b` and `~/x` are (keys never start
# with a dot or a slash).
_OVERRIDE = re.compile(r"^(?:~|\+\+?)?([A-Za-z_][\w\-]*(?:[./][\w\-]+)*)(?:@[\w.\-/]*)?=")


def is_override(token: str) -> bool:
    return _OVERRIDE.match(token) is not None


def override_key(token: str) -> str | None:
    m = _OVERRIDE.match(token)
    return m.group(1) if m else None


def _quote(value: str) -> str:
    """A path as one Hydra value: quoted unless plainly safe (spaces, commas and brackets would
    otherwise be read as Hydra syntax)."""
    if re.fullmatch(r"[\w./\-~:]+", value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def reader_config(
    overrides: Sequence[str], *, command: str, uses: Iterable[str], legacy_out_dir: str | None = None, hint: str = ""
):
    """Compose the config exactly as the building stages do, so `out_dir=X` (and any typo in a key)
    means the same to `gsae ls`/`gsae report` as to `gsae eval`. Keys outside `uses` are valid
    but change nothing here; a notice says so rather than silently ignoring them."""
    from gsae_cli.config import compose_config

    overrides = list(overrides)
    if legacy_out_dir is not None:
        if any(override_key(o) == "out_dir" for o in overrides):
            raise ConfigError(
                f"gsae {command}: both --out-dir and out_dir= were given; drop --out-dir "
                "(deprecated) and keep out_dir=DIR, as for every other stage."
            )
        print(
            f"note: --out-dir is deprecated; write out_dir={legacy_out_dir} as for every other stage.",
            file=sys.stderr,
            flush=True,
        )
        overrides.append(f"out_dir={_quote(legacy_out_dir)}")
    cfg = compose_config(overrides)
    uses = set(uses)
    idle = [o for o in overrides if override_key(o) not in uses]
    if idle:
        print(
            f"note: {', '.join(idle)}: valid, but gsae {command} only reads finished artifacts and uses "
            f"only {', '.join(sorted(uses))} from the config{hint}.",
            file=sys.stderr,
            flush=True,
        )
    return cfg


def ls_config(args: Sequence[str], legacy_out_dir: str | None = None):
    """`gsae ls`'s arguments are overrides only: a bare path is most likely an outputs folder
    meant as out_dir=PATH, and the error says exactly that."""
    paths = [a for a in args if not is_override(a)]
    if paths:
        raise ConfigError(
            f"gsae ls takes key=value overrides, not paths: got {' '.join(paths)}. To list "
            f"another outputs folder write `gsae ls out_dir={paths[0]}`."
        )
    return reader_config(args, command="ls", uses={"out_dir", "store_url"}, legacy_out_dir=legacy_out_dir)


# ---- reading small files without ever raising --------------------------------------------------


def _json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _yaml(path: Path) -> dict:
    import yaml

    try:
        obj = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _size(path: Path) -> int:
    if storage.is_remote(path):
        return int(path.fs.du(path.path))
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass  # removed while we walked (a running stage renaming its temporary files)
    return total


def _from_name(name: str) -> dict:
    """The directory name carries model and hook (config/identity.py: model__hook[__sae]__hash)."""
    parts = name.split("__")
    return {
        "model": parts[0] if len(parts) >= 2 else None,
        "hook": parts[1] if len(parts) >= 3 else None,
        "sae": parts[2] if len(parts) >= 4 else None,
    }


def _last_json_line(path: Path, tail_bytes: int = 8192) -> dict:
    """The last complete line of a JSON-lines log, reading only its tail (logs grow long)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - tail_bytes))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            obj = json.loads(line)
            return obj if isinstance(obj, dict) else {}
        except ValueError:
            continue
    return {}


def _fraction(done: Any, total: Any) -> float | None:
    try:
        return max(0.0, min(1.0, float(done) / float(total)))
    except (TypeError, ValueError, ZeroDivisionError):
        return None


# ---- one reader per stage: (complete, fields, progress) -----------------------------------------


def _harvest(d: Path) -> tuple[bool, dict, float | None]:
    from gsae_cli import store

    complete = store.is_complete(d)
    summary, cfg = _json(d / "summary.json"), _yaml(d / "config.yaml")
    try:
        info = store.store_info(d) or {}
    except Exception:  # noqa: BLE001 — ls must list a damaged store, not crash on it
        info = {}
    ident = (info.get("attrs") or {}).get("gsae_identity") or {}
    # A multi-hook harvest writes the same config.yaml (cfg.hook is not this store's hook) into
    # every store, so the store's own records come first.
    fields = {
        "model": _first(summary.get("model"), _get(ident, "model.name"), _get(cfg, "model.name")),
        "hook": _first(summary.get("hook"), ident.get("hook")),
        "sae": None,
        "l1_coefficient": None,
        "tokens": _first(summary.get("n_tokens"), info.get("n_tokens"), _get(cfg, "harvest.n_tokens")),
    }
    progress = None
    if not complete:
        try:
            progress = _fraction(store.rows_written(d), fields["tokens"])
        except Exception:  # noqa: BLE001
            progress = None
    return complete, fields, progress


def _train(d: Path) -> tuple[bool, dict, float | None]:
    from gsae_cli.core import artifacts

    complete = artifacts.is_complete(d)
    meta, summary, cfg = _json(d / "sae.json"), _json(d / "summary.json"), _yaml(d / "config.yaml")
    tokens = _first(_get(cfg, "train.n_tokens"), summary.get("tokens"))
    fields = {
        "model": _first(meta.get("model"), summary.get("model"), _get(cfg, "model.name")),
        "hook": _first(meta.get("hook"), summary.get("hook"), _get(cfg, "hook")),
        "sae": _first(meta.get("architecture"), summary.get("architecture"), _get(cfg, "sae.name")),
        "l1_coefficient": _sparsity(
            _first(meta.get("k"), summary.get("k")),
            _first(meta.get("l1_coefficient"), summary.get("l1_coefficient"), _get(cfg, "sae.l1_coefficient")),
        ),
        "tokens": tokens,
    }
    progress = None
    if not complete:
        progress = _fraction(_last_json_line(d / "metrics.jsonl").get("tokens"), tokens)
    return complete, fields, progress


def _sparsity(k: Any, l1: Any) -> Any:
    """What sets the SAE's sparsity, for the λ column: "k=32" for a fixed-k architecture, else λ."""
    return f"k={k}" if k is not None else l1


def _eval(d: Path) -> tuple[bool, dict, float | None]:
    from gsae_cli.core import artifacts

    complete = artifacts.is_complete(d)
    metrics = _json(d / "metrics.json")
    cfg = metrics["config"] if isinstance(metrics.get("config"), dict) else _yaml(d / "config.yaml")
    sae = metrics["sae"] if isinstance(metrics.get("sae"), dict) else {}
    # An SAE given by sae.path may not be what config.sae says: trust what the eval recorded.
    fields = {
        "model": _get(cfg, "model.name"),
        "hook": _get(cfg, "hook"),
        "sae": _first(sae.get("architecture"), _get(cfg, "sae.name")),
        "l1_coefficient": _sparsity(sae.get("k"), _first(sae.get("l1_coefficient"), _get(cfg, "sae.l1_coefficient"))),
        "tokens": _get(cfg, "train.n_tokens"),
    }
    return complete, fields, None


def _evalset(d: Path) -> tuple[bool, dict, float | None]:
    """The clean and zero-ablated passes shared by every SAE evaluated at one site."""
    from gsae_cli.core import artifacts

    cfg = _yaml(d / "config.yaml")
    fields = {
        "model": _get(cfg, "model.name"),
        "hook": _get(cfg, "hook"),
        "sae": None,
        "l1_coefficient": None,
        "tokens": _get(cfg, "eval.n_tokens"),
    }
    return artifacts.is_complete(d), fields, None


def _inspect(d: Path) -> tuple[bool, dict, float | None]:
    """A feature browser (gsae inspect), a comparison or a study: their summary names the SAE(s)."""
    from gsae_cli.core import artifacts

    summary = _json(d / "summary.json") or _json(d / "study.json")
    cfg = _yaml(d / "config.yaml")
    sae = summary.get("architecture")
    if sae is None and isinstance(summary.get("a"), dict) and isinstance(summary.get("b"), dict):
        sae = f"{summary['a'].get('label')} vs {summary['b'].get('label')}"
    fields = {
        "model": _first(summary.get("model"), _get(cfg, "model.name")),
        "hook": _first(summary.get("hook"), _get(cfg, "hook")),
        "sae": sae,
        "l1_coefficient": summary.get("l1_coefficient"),
        "tokens": summary.get("site_tokens"),
    }
    return artifacts.is_complete(d), fields, None


READERS: dict[str, Callable[[Path], tuple[bool, dict, float | None]]] = {
    "harvest": _harvest,
    "train": _train,
    "evalset": _evalset,
    "eval": _eval,
    "inspect": _inspect,
    "compare": _inspect,
    "study": _inspect,
}


def _row(stage: str, d: Path, lock_dir: Path) -> dict:
    guessed = _from_name(d.name)
    if d.is_dir():
        try:
            complete, fields, progress = READERS[stage](d)
        except Exception:  # noqa: BLE001 — one unreadable artifact must not hide the others
            complete, fields, progress = False, {}, None
        size = _size(d)
    else:  # only a held lock so far: the stage is loading its model before writing anything
        complete, fields, progress, size = False, {}, None, 0
    if stage in ("harvest", "evalset"):
        guessed["sae"] = None
    state = status.artifact_status(d, complete, lock_dir)
    row = {
        "stage": stage,
        "name": d.name,
        **{k: _first(fields.get(k), guessed.get(k)) for k in ("model", "hook", "sae", "l1_coefficient", "tokens")},
        "status": state,
        "progress": progress,
        "size_bytes": size,
        "path": str(d),
        "message": status.read_failed(d) if state == status.FAILED_STATUS else None,
    }
    return {k: row[k] for k in FIELDS}


def list_artifacts(out_dir: Path, stores: Path | None = None) -> list[dict]:
    """One row per artifact under OUT_DIR/{harvest,train,evalset,eval}, harvest first; [] if none.
    `stores`: where the activation stores are when not in OUT_DIR/harvest (store_url; the locks of
    stores on object storage are in OUT_DIR/harvest, of local ones beside them: harvest/run.py)."""
    out_dir = Path(out_dir).expanduser()
    rows: list[dict] = []
    for stage in STAGES:
        base = stores if stage == "harvest" and stores is not None else out_dir / stage
        local = out_dir / stage if storage.is_remote(base) else base  # where the stage's lock files are
        names = set()
        for p in local.iterdir() if local.is_dir() else ():
            if p.name.startswith(".") and p.name.endswith(".lock"):
                # `.NAME.lock` without NAME: a stage that holds the lock but has written nothing yet
                # (`.NAME.rank<r>of<N>.lock`: one rank of a distributed harvest)
                name = re.sub(r"\.rank\d+of\d+$", "", p.name[1:-5])
                if not (base / name).exists() and status.is_running(local / name):
                    names.add(name)
        for p in base.iterdir() if base.is_dir() else ():
            if not p.name.startswith(".") and p.is_dir():  # not lock, .trash-* or temporary files
                names.add(p.name)
        stage_rows = [_row(stage, base / n, local / n) for n in names]
        stage_rows.sort(
            key=lambda r: (
                str(r["model"]),
                str(r["hook"]),
                str(r["sae"]),
                _num(r["l1_coefficient"]),
                _num(r["tokens"]),
                r["name"],
            )
        )
        rows += stage_rows
    return rows


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("-inf")


# ---- printing ----------------------------------------------------------------------------------


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _tokens(v: Any) -> str:
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return "" if v is None else str(v)


_STYLE = {"complete": "green", "running": "cyan", "failed": "red", "partial": "yellow"}


def print_listing(rows: list[dict]) -> None:
    """A table on stdout (this is the command's result), failure messages under it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    probe = Console(highlight=False)
    # Piped output must not be cut at 80 columns: paths are what scripts and users copy.
    console = Console(highlight=False, soft_wrap=False, width=None if probe.is_terminal else 250)
    if not rows:
        console.print(
            Text(
                "No artifacts yet: nothing has been harvested, trained or evaluated here. "
                "Start with `gsae eval` (it harvests and trains first) or sweeps/frontier.sh."
            )
        )
        return
    table = Table(show_lines=False, header_style="bold")
    fold = {"overflow": "fold"}  # wrap long names, never cut them: users copy them
    for col, kw in (
        ("stage", {"no_wrap": True}),
        ("model", fold),
        ("hook", fold),
        ("sae", fold),
        ("λ (l1)", {"justify": "right", "no_wrap": True}),
        ("tokens", {"justify": "right", "no_wrap": True}),
        ("status", {"no_wrap": True}),
        ("size", {"justify": "right", "no_wrap": True}),
        ("path", {**fold, "ratio": 1}),
    ):
        table.add_column(col, **kw)
    for r in rows:
        state = r["status"] + (f" {r['progress']:.0%}" if r.get("progress") is not None else "")
        l1 = (
            ""
            if r["l1_coefficient"] is None
            else f"{r['l1_coefficient']:g}"
            if isinstance(r["l1_coefficient"], (int, float))
            else str(r["l1_coefficient"])
        )
        cells = [r["stage"], r["model"] or "", r["hook"] or "", r["sae"] or "", l1, _tokens(r["tokens"])]
        table.add_row(
            *[Text(str(c)) for c in cells],
            Text(state, style=_STYLE.get(r["status"], "")),
            Text(human_size(r["size_bytes"])),
            Text(r["path"]),
        )
    console.print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in _STYLE}
    console.print(
        Text(
            ", ".join(f"{n} {s}" for s, n in counts.items() if n) + " · tokens: harvested (harvest) "
            "or trained on (train, eval)",
            style="dim",
        )
    )
    for r in rows:
        if r["status"] == "failed":
            first = (r["message"] or "").splitlines()[0] if r["message"] else ""
            console.print(Text(f"failed: {r['path']}: {first}", style="red"))
