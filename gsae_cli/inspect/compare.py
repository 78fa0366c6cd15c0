"""`gsae inspect compare`: match the features of two SAEs at one site by decoder cosine and
show matched pairs side by side.

Both SAEs are inspected on the same text (the config's eval set), so their examples line up.
The artifact (out_dir/compare/<model>__<hook>__<archA>-vs-<archB>__<hash>/) opens on its own:
index.html, assets/, a/ and b/ (copies of the two browsers' data), data/compare.js, and
matches.json (every A feature's best B match and cosine, and the reverse)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from gsae_cli.config import compare_hash, out_dir, slug
from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice
from gsae_cli.errors import ConfigError
from gsae_cli.inspect.features import nearest_by_cosine

COSINE_EDGES = [round(-0.2 + 0.05 * i, 2) for i in range(25)]  # -0.2 .. 1.0


@dataclass
class CompareResult:
    path: Path
    summary: dict
    reused: bool


def best_matches(dec_a: Tensor, dec_b: Tensor) -> tuple[Tensor, Tensor]:
    """(index [d_a], cosine [d_a]) of each A direction's most similar B direction."""
    ids, cos = nearest_by_cosine(dec_a, dec_b, 1)
    return ids[:, 0], cos[:, 0]


def cosine_histogram(cos: Tensor) -> list[int]:
    edges = torch.tensor(COSINE_EDGES, dtype=torch.float64)
    return torch.histogram(cos.double().clamp(edges[0], edges[-1]), bins=edges).hist.to(torch.int64).tolist()


def require_other(cfg: DictConfig, what: str) -> str:
    if not cfg.inspect.against:
        raise ConfigError(
            f"`gsae inspect {what}` needs the other SAE: inspect.against=DIR, a folder written by "
            "`gsae train` (it prints it), e.g. inspect.against=$(gsae train sae=relu)."
        )
    return str(cfg.inspect.against)


def inspect_pair(cfg: DictConfig, force: bool = False):
    """Both browsers (A: this config's SAE, B: inspect.against), checked to share model, hook and text."""
    from gsae_cli.inspect.dashboard import run_inspect

    other = require_other(cfg, "compare/study")
    if not Path(other).expanduser().is_dir():
        raise ConfigError(
            f"inspect.against={other} is not a folder; give the folder of an SAE written by `gsae train`."
        )
    from gsae_cli.saes.io import read_sae_meta

    meta = read_sae_meta(Path(other).expanduser())
    wrong = [
        f"{k}={meta[k]} (this config: {k}={have})"
        for k, have in (("model", cfg.model.name), ("hook", cfg.hook))
        if meta.get(k) is not None and meta[k] != have
    ]
    if wrong:
        raise ConfigError(
            f"inspect.against={other} is an SAE trained with {' and '.join(wrong)}; a comparison or study "
            "needs two SAEs at the same site of the same model. Give an SAE trained at this config's "
            "model and hook, or change the config's to match it."
        )
    a = run_inspect(cfg, force=force)
    b = run_inspect(cfg, force=force, sae_path=other)
    for key in ("model", "hook", "eval_set"):
        if a.summary[key] != b.summary[key]:
            raise ConfigError(
                f"The two SAEs differ in {key} ({a.summary[key]} vs {b.summary[key]}); a comparison "
                "needs two SAEs at the same site of the same model, inspected on the same text."
            )
    if a.inspect_hash == b.inspect_hash:
        raise ConfigError(
            f"inspect.against names the same SAE as the config ({a.summary['sae']['path']}); "
            "compare two different SAEs."
        )
    return a, b


def run_compare(cfg: DictConfig, force: bool = False) -> CompareResult:
    from gsae_cli.inspect.webpages import copy_data, data_script, write_assets, write_page
    from gsae_cli.saes.io import load_sae

    a, b = inspect_pair(cfg)
    sa, sb = a.summary, b.summary
    digest = compare_hash(a.inspect_hash, b.inspect_hash)
    name = f"{slug(cfg.model.name)}__{slug(cfg.hook)}__{sa['architecture']}-vs-{sb['architecture']}__{digest}"
    directory = out_dir(cfg) / "compare" / name

    def build() -> dict:
        dec_a = load_sae(sa["sae"]["path"]).decoder_directions.detach()
        dec_b = load_sae(sb["sae"]["path"]).decoder_directions.detach()
        ab_ids, ab_cos = best_matches(dec_a, dec_b)
        ba_ids, ba_cos = best_matches(dec_b, dec_a)
        order = torch.argsort(ab_cos, descending=True, stable=True)
        pairs = [[int(i), int(ab_ids[i]), round(float(ab_cos[i]), 4)] for i in order.tolist()]
        directory.mkdir(parents=True)
        copy_data(a.path, directory / "a")
        copy_data(b.path, directory / "b")
        stats = {
            "median_ab": float(ab_cos.median()),
            "median_ba": float(ba_cos.median()),
            "frac_ab_above_0.9": float((ab_cos > 0.9).double().mean()),
            "frac_ba_above_0.9": float((ba_cos > 0.9).double().mean()),
        }
        page = {
            "kind": "compare",
            "pairs": pairs,
            "edges": COSINE_EDGES,
            "hist_ab": cosine_histogram(ab_cos),
            "hist_ba": cosine_histogram(ba_cos),
            **stats,
        }
        (directory / "data").mkdir()
        artifacts.atomic_write_text(directory / "data" / "compare.js", data_script(page))
        artifacts.write_json(
            directory / "matches.json",
            {
                "a": {
                    "inspect": str(a.path),
                    "label": sa["label"],
                    "best_in_b": ab_ids.tolist(),
                    "cosine": [round(float(c), 6) for c in ab_cos],
                },
                "b": {
                    "inspect": str(b.path),
                    "label": sb["label"],
                    "best_in_a": ba_ids.tolist(),
                    "cosine": [round(float(c), 6) for c in ba_cos],
                },
            },
        )
        write_assets(directory)
        write_page(
            directory / "index.html",
            "compare",
            f"gsae · {sa['label']} vs {sb['label']}",
            ["a/index.js", "a/text.js", "b/index.js", "data/compare.js"],
        )
        summary = {
            "a": {"label": sa["label"], "path": str(a.path), "d_sae": sa["d_sae"]},
            "b": {"label": sb["label"], "path": str(b.path), "d_sae": sb["d_sae"]},
            "model": sa["model"],
            "hook": sa["hook"],
            "compare_hash": digest,
            **stats,
        }
        artifacts.write_json(directory / "summary.json", summary)
        artifacts.mark_complete(directory)
        notice(
            f"comparison: {directory / 'index.html'} (median best-match cosine A→B {stats['median_ab']:.3f}, "
            f"B→A {stats['median_ba']:.3f})"
        )
        return summary

    summary, reused = artifacts.build_once(directory, "comparison", force, build)
    return CompareResult(directory, summary, reused)
