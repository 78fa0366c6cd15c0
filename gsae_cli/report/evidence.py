"""Evidence: the small files every number of a report is computed from, kept where a report
can be rebuilt from them on any machine (docs/results/*/evidence in the repository).

One folder per evaluation, named as its eval artifact: `metrics.json` (every metric, its
interval, the resolved config and which SAE), `per_window.safetensors` with the per-window
scalar sums only (metrics.WINDOW_SCALARS: what the report's paired bootstrap needs; the
[n_windows, d_model] vector sums are left out, so an evaluation is tens of kilobytes), and the
completion marker. What the report would otherwise look up on the machine that made it is
frozen into metrics.json: whether the SAE's training diverged. The SAE's own path is cut to its
folder name. `gsae report EVIDENCE --report-dir DIR` rebuilds the report byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gsae_cli.core import artifacts
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.report.bootstrap import WINDOW_FILE, load_window_data
from gsae_cli.train.divergence import divergence_of_sae

SOURCE_FILE = "collected.json"  # where the evaluations came from, and the filters that kept them


def provenance(paths: Sequence[str | Path]) -> str | None:
    """ "Evaluations collected from ..., filtered by ..." as recorded when the one folder in
    `paths` was exported as evidence, else None."""
    if len(paths) != 1 or not (Path(paths[0]) / SOURCE_FILE).is_file():
        return None
    return str(artifacts.read_json(Path(paths[0]) / SOURCE_FILE).get("source"))


def export_evidence(eval_dirs: Sequence[Path], dest: Path, source: str) -> list[Path]:
    """Write the evidence of each evaluation folder into `dest`/<its name>, and `source` (where
    they were collected from, in words) beside them; returns the folders written. `dest` must be
    empty or hold only evidence: what is there is replaced, so the folder holds exactly this
    report's evaluations."""
    dest = Path(dest)
    inside = [d for d in eval_dirs if Path(d).resolve().is_relative_to(dest.resolve())]
    if inside:
        raise ConfigError(
            f"--evidence {dest} holds the evaluation {inside[0]} it would be written from; give the "
            "evidence a folder of its own (e.g. docs/results/STUDY/evidence)."
        )
    if dest.exists() and any(dest.iterdir()):
        if not (dest / SOURCE_FILE).is_file():  # never rewrite a folder gsae did not write as evidence
            raise ConfigError(
                f"--evidence {dest} is not empty and holds no {SOURCE_FILE}, so it is not an earlier "
                "report's evidence; give an empty or new folder (the evidence folder is rewritten whole)."
            )
        strays = [p for p in dest.iterdir() if p.name != SOURCE_FILE and not (p / "metrics.json").exists()]
        if strays:
            raise ConfigError(
                f"--evidence {dest} holds {strays[0].name}, which is not evidence of an evaluation; "
                "give an empty or new folder (the evidence folder is rewritten whole)."
            )
    names = [Path(d).name for d in eval_dirs]
    if len(set(names)) != len(names):
        raise ConfigError(
            "two evaluations share a folder name; export the evidence of each outputs folder "
            "to its own --evidence folder."
        )
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_dir() and old.name not in names:
            artifacts.remove(old)
    import matplotlib

    written = [_export_one(Path(d), dest / Path(d).name) for d in eval_dirs]
    # the plots are the same bytes only under the same matplotlib: a rebuild can check
    artifacts.write_json(dest / SOURCE_FILE, {"source": source, "matplotlib": matplotlib.__version__})
    return written


def _export_one(src: Path, out: Path) -> Path:
    from safetensors.torch import save

    from gsae_cli.evaluate.metrics import WINDOW_FORMAT

    metrics = artifacts.read_json(src / "metrics.json")
    sae = dict(metrics.get("sae") or {})
    sae["divergence"] = divergence_of_sae(sae.get("path"), sae)
    if sae.get("path"):
        sae["path"] = Path(sae["path"]).name
    metrics["sae"] = sae
    try:  # the report's own reader: the same checks, the scalar sums only
        data = load_window_data(src)
    except ArtifactError:
        data = None  # no usable sums (an older evaluation): its report says so, as it would from src
    out.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    if data is not None:
        meta = {"format": WINDOW_FORMAT, **({"eval_set": data.eval_set} if data.eval_set else {})}
        sums = {k: v.contiguous() for k, v in data.sums.items()}
        artifacts.atomic_write_bytes(out / WINDOW_FILE, save(sums, metadata=meta))
    elif (out / WINDOW_FILE).exists():
        (out / WINDOW_FILE).unlink()
    artifacts.mark_complete(out)
    return out
