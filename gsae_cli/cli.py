"""The Typer app: one thin function per stage. Positional arguments are Hydra overrides
(`key=value`, `group=option`); `-m` expands Hydra sweep syntax (`a=1,2 b=x,y`) into runs.
Exit codes: 0 done, 1 failed, 2 bad input or configuration, 130 interrupted."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from gsae_cli.errors import GsaeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Gated SAEs and their baselines: harvest activations, train SAEs, evaluate, report.",
)

OverridesArg = typer.Argument(
    None, help="Hydra overrides, e.g. model=tiny sae=relu sae.l1_coefficient=0.2", show_default=False
)
ForceOpt = typer.Option(False, "--force", help="Rebuild this stage's artifact even if it is complete.")
JsonOpt = typer.Option(False, "--json", help="Print the artifact's summary as JSON on stdout.")
MultiOpt = typer.Option(False, "-m", "--multirun", help="Expand sweep syntax (a=1,2) into one run per combination.")


def _fail(err: BaseException) -> int:
    if isinstance(err, GsaeError):
        typer.echo(f"error: {err}", err=True)
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        typer.echo("interrupted; rerun the same command to resume where it stopped.", err=True)
        return 130
    if os.environ.get("GSAE_DEBUG"):
        traceback.print_exc()
    else:
        typer.echo(
            f"error: unexpected {type(err).__name__}: {err}\nThis is a bug in gsae or an environment "
            "problem; rerun with GSAE_DEBUG=1 for the full traceback and report it.",
            err=True,
        )
    return 1


def _guarded(command: Callable[[], Any]) -> Any:
    """Run `command`: the CLI's one error path, where every failure becomes one message and its exit code."""
    try:
        return command()
    except BaseException as err:  # noqa: BLE001
        if isinstance(err, SystemExit):
            raise
        raise typer.Exit(_fail(err)) from None


def _run(overrides: Optional[List[str]], multirun: bool, stage: Callable[[list[str]], dict]) -> None:
    """Run `stage` once, or once per sweep member; map errors to exit codes."""
    overrides = list(overrides or [])
    if not multirun:
        _guarded(lambda: stage(overrides))
        return
    from gsae_cli.sweep import expand_sweep, run_sweep

    try:
        members = expand_sweep(overrides)
    except GsaeError as err:
        raise typer.Exit(_fail(err)) from None
    failed = run_sweep(members, stage, _fail)
    raise typer.Exit(1 if failed else 0)


def _emit(summary: dict, path: Path, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(str(path))


@app.command()
def harvest(
    overrides: Optional[List[str]] = OverridesArg,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
    multirun: bool = MultiOpt,
) -> None:
    """Write the model's activations at `hook` (or each of `hooks=[...]`) to zarr stores."""

    def stage(ov: list[str]) -> dict:
        from gsae_cli.config import compose_config
        from gsae_cli.core.artifacts import read_json
        from gsae_cli.harvest.run import run_harvest

        results = run_harvest(compose_config(ov), force=force)
        # a rank whose part is done but whose store another rank will complete has no summary yet
        summaries = [
            (read_json(r.path / "summary.json") if r.complete else {"complete": False})
            | {"path": str(r.path), "reused": r.reused}
            for r in results
        ]
        if as_json:
            typer.echo(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2, default=str))
        else:
            for r in results:
                typer.echo(str(r.path))
        return summaries[0]

    _run(overrides, multirun, stage)


@app.command()
def train(
    overrides: Optional[List[str]] = OverridesArg,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
    multirun: bool = MultiOpt,
) -> None:
    """Train the SAE of this config (harvesting its store first if needed)."""

    def stage(ov: list[str]) -> dict:
        from gsae_cli.config import compose_config
        from gsae_cli.train.trainer import run_train

        result = run_train(compose_config(ov), force=force)
        _emit(result.summary, result.path, as_json)
        return result.summary

    _run(overrides, multirun, stage)


@app.command("eval")
def eval_(
    overrides: Optional[List[str]] = OverridesArg,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
    multirun: bool = MultiOpt,
) -> None:
    """Measure L0, loss recovered, shrinkage and more on held-out text (training first if needed)."""

    def stage(ov: list[str]) -> dict:
        from gsae_cli.config import compose_config
        from gsae_cli.evaluate.run import print_table, run_eval

        result = run_eval(compose_config(ov), force=force)
        if not as_json:
            print_table(result.metrics)
        _emit(result.metrics, result.path, as_json)
        return result.metrics

    _run(overrides, multirun, stage)


@app.command(context_settings={"allow_extra_args": False})
def inspect(
    args: Optional[List[str]] = typer.Argument(
        None,
        show_default=False,
        metavar="[compare|study] OVERRIDES",
        help="Hydra overrides choosing the SAE, as for `gsae eval` (sae=relu sae.l1_coefficient=0.1, "
        "or sae.path=DIR), and inspect.* keys. `compare` and `study` also need "
        "inspect.against=DIR, the other SAE's folder.",
    ),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
    multirun: bool = MultiOpt,
) -> None:
    """Feature dashboards: `gsae inspect` writes a static HTML feature browser for one SAE;
    `gsae inspect compare` matches two SAEs' features by decoder cosine; `gsae inspect study`
    writes the paper's blinded rating study (rate it in a browser, then `gsae report --ratings FILE`)."""
    args = list(args or [])
    mode = args.pop(0) if args and args[0] in ("compare", "study") else "browser"

    def stage(ov: list[str]) -> dict:
        from gsae_cli.config import compose_config

        cfg = compose_config(ov)
        if mode == "compare":
            from gsae_cli.inspect.compare import run_compare

            compared = run_compare(cfg, force=force)
            summary, path = compared.summary, compared.path / "index.html"
        elif mode == "study":
            from gsae_cli.inspect.study import run_study

            studied = run_study(cfg, force=force)
            summary, path = studied.summary, Path(studied.summary["rating_page"])
        else:
            from gsae_cli.inspect.dashboard import run_inspect

            inspected = run_inspect(cfg, force=force)
            summary, path = inspected.summary, inspected.path / "index.html"
        _emit(summary, path, as_json)
        return summary

    _run(args, multirun, stage)


@app.command()
def report(
    args: Optional[List[str]] = typer.Argument(
        None,
        show_default=False,
        metavar="KEY=VALUE|PATH",
        help="key=value config overrides, as for every stage: out_dir=DIR (where the evaluations are; "
        "default outputs), eval.bootstrap_samples=N and eval.bootstrap_seed=S (the L0 ratio's "
        "interval; 0 samples: none). Any other argument is an eval artifact or a folder holding "
        "them (default: OUT_DIR/eval); write ./NAME for a path containing '='.",
    ),
    report_dir: str = typer.Option(
        "report",
        "--report-dir",
        help="Where to write results.csv, ratios.json, convergence.json, seeds.json, plots, table.",
    ),
    where: Optional[List[str]] = typer.Option(
        None, "--where", help="Keep rows whose config matches key=value (repeatable), e.g. --where model=smollm2-135m"
    ),
    evidence: Optional[str] = typer.Option(
        None,
        "--evidence",
        help="Also write the kept evaluations' evidence (metrics and per-window sums, kilobytes each) to this "
        "folder and make the report from it: `gsae report FOLDER` then rebuilds it byte for byte anywhere.",
    ),
    ratings: Optional[List[str]] = typer.Option(
        None,
        "--ratings",
        help="Ratings files from a `gsae inspect study` rating page (repeatable): unblind them and report the "
        "study's statistics instead.",
    ),
    legacy_out_dir: Optional[str] = typer.Option(None, "--out-dir", hidden=True, help="Deprecated: out_dir=DIR."),
) -> None:
    """Collect eval results into a CSV, Pareto plots and a markdown table, with 95 % intervals and the
    L0 ratio between architectures at matched loss recovered (paired bootstrap over eval windows);
    its spread over training seeds where several ran, and its change when the training tokens double."""

    def command() -> None:
        if ratings:
            from gsae_cli.report import ratings_command

            out = ratings_command(args or [], Path(report_dir), [Path(r) for r in ratings])
            typer.echo(str(out))
            return
        from gsae_cli.report import report_command

        out = report_command(
            args or [],
            Path(report_dir),
            where or [],
            legacy_out_dir=legacy_out_dir,
            evidence=Path(evidence) if evidence else None,
        )
        typer.echo(str(out))

    _guarded(command)


@app.command("ls")
def ls_(
    overrides: Optional[List[str]] = typer.Argument(
        None,
        show_default=False,
        metavar="KEY=VALUE",
        help="key=value config overrides, as for every stage: out_dir=DIR (default outputs) is the folder "
        "listed, store_url=URL where the activation stores are when not in it.",
    ),
    as_json: bool = JsonOpt,
    legacy_out_dir: Optional[str] = typer.Option(None, "--out-dir", hidden=True, help="Deprecated: out_dir=DIR."),
) -> None:
    """List artifacts under the outputs folder: stage, config, status, size."""

    def command() -> None:
        from gsae_cli.listing import list_artifacts, ls_config, print_listing

        cfg = ls_config(overrides or [], legacy_out_dir)
        stores = None
        if cfg.get("store_url"):  # stores kept elsewhere (maybe on S3) are listed with the rest
            from gsae_cli import config
            from gsae_cli.core import storage

            stores = config.store_root(cfg)
            storage.check_reachable(stores, "the activation stores (store_url)")
        rows = list_artifacts(Path(cfg.out_dir), stores)
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
        else:
            print_listing(rows)

    _guarded(command)


@app.command()
def export(
    overrides: Optional[List[str]] = OverridesArg,
    fmt: str = typer.Option("saelens", "--format", help="Target format: saelens."),
    dest: Optional[str] = typer.Option(None, "--out", help="Destination folder (default: SAE_DIR/export-FORMAT)."),
) -> None:
    """Write the SAE of this config (or sae.path=DIR) in another tool's on-disk format."""

    def stage(ov: list[str]) -> dict:
        from gsae_cli.config import compose_config
        from gsae_cli.export import run_export

        path = run_export(compose_config(ov), fmt, Path(dest) if dest else None)
        typer.echo(str(path))
        return {"path": str(path)}

    _run(overrides, False, stage)


@app.command("show-config")
def show_config(overrides: Optional[List[str]] = OverridesArg) -> None:
    """Print the composed config (every key, with its value) for these overrides."""

    def stage(ov: list[str]) -> dict:
        from gsae_cli.config import compose_config, to_yaml

        typer.echo(to_yaml(compose_config(ov)), nl=False)
        return {}

    _run(overrides, False, stage)


@app.command()
def setup() -> None:
    """Prepare the offline default model (GGUF -> safetensors) and corpus; idempotent."""

    def stage(_: list[str]) -> dict:
        from gsae_cli.config import ModelConfig
        from gsae_cli.lm.data import materialise_default_corpus
        from gsae_cli.lm.models import prepare_gguf_model

        model_dir = prepare_gguf_model(ModelConfig())
        corpus = materialise_default_corpus()
        typer.echo(f"default model: {model_dir}\ndefault corpus: {corpus}", err=True)
        return {}

    _run([], False, stage)


def main() -> None:
    app()


if __name__ == "__main__":
    main()  # as __main__.py: typer exits with the command's status itself
