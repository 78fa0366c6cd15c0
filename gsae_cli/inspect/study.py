"""`gsae inspect study`: the paper's blinded interpretability study (§4.3), and its statistics.

A study samples `inspect.study_features` live features from each of two SAEs at one site
(seeded), pairs the k-th draws, shuffles all 2N and numbers them. The artifact
(out_dir/study/<hash>/) holds `rater/` (the folder to hand to raters: rate.html without feature
ids or SAE names), `key.json` (which SAE and feature each item is) and `study.json`.

`gsae report --ratings FILE ...` unblinds ratings files and computes the paper's statistics
(§4.3.2): No = 0, Maybe = 1, Yes = 2; items paired within (study, rater, draw); the mean
difference A - B with a 90 % BCa bootstrap interval over pairs, and the one-sided Wilcoxon
signed-rank test with Pratt's zero handling (H1: A more interpretable). docs/guide/inspect.md."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from gsae_cli.config import config_hash, out_dir, study_identity
from gsae_cli.core import artifacts
from gsae_cli.core.progress import notice
from gsae_cli.errors import ConfigError

LABELS = {"no": 0, "maybe": 1, "yes": 2}  # the paper's scale
RATINGS_FORMAT = "gsae-ratings-1"
CI_LEVEL = 0.90  # the paper's BCa interval


@dataclass
class StudyResult:
    path: Path
    summary: dict
    reused: bool


def sample_study(
    freq_a: torch.Tensor, freq_b: torch.Tensor, n: int, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """(A's features, B's features, the shuffled order of the 2n items as indices into
    A's then B's list). Only features that fire are drawn; too few is an error."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for name, freq in (("A", freq_a), ("B", freq_b)):
        live = torch.nonzero(freq > 0).flatten()
        if live.numel() < n:
            raise ConfigError(
                f"The study asks for inspect.study_features={n} features from SAE {name}, but only "
                f"{live.numel()} of its {freq.numel()} features fire on the inspected text. Lower "
                "inspect.study_features or inspect more text (inspect.n_tokens)."
            )
        picks.append(live[torch.randperm(live.numel(), generator=gen)[:n]].tolist())
    order = torch.randperm(2 * n, generator=gen).tolist()
    return picks[0], picks[1], order


def checksum(study: str, rater: str, ratings: list[dict]) -> str:
    """FNV-1a (32 bit) of the ratings' canonical text, as the rating page computes it."""
    canon = f"{study}|{rater}|" + ",".join(f"{r['item']}:{r['label']}" for r in ratings)
    h = 0x811C9DC5
    for byte in canon.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def run_study(cfg: DictConfig, force: bool = False) -> StudyResult:
    from gsae_cli.inspect.compare import inspect_pair
    from gsae_cli.inspect.dashboard import load_feature_data
    from gsae_cli.inspect.webpages import data_script, feature_dicts_from_artifact, write_assets, write_page

    a, b = inspect_pair(cfg)
    digest = config_hash(study_identity(cfg, a.inspect_hash, b.inspect_hash))
    directory = out_dir(cfg) / "study" / digest

    def build() -> dict:
        ta, _ = load_feature_data(a.path)
        tb, _ = load_feature_data(b.path)
        n = int(cfg.inspect.study_features)
        fa, fb, order = sample_study(ta["freq"], tb["freq"], n, int(cfg.inspect.study_seed))
        sources = [("a", k, f) for k, f in enumerate(fa)] + [("b", k, f) for k, f in enumerate(fb)]
        dash_a = dict(zip(fa, feature_dicts_from_artifact(a.path, fa)))
        dash_b = dict(zip(fb, feature_dicts_from_artifact(b.path, fb)))
        items, key = [], []
        for number, src in enumerate(order, start=1):
            side, k, f = sources[src]
            dash = dict((dash_a if side == "a" else dash_b)[f])
            for private in ("i", "nb"):  # a feature id or its neighbours' ids could unblind it
                dash.pop(private, None)
            items.append({"n": number, "dash": dash})
            key.append({"item": number, "sae": side, "pair": k, "feature": f})
        rater = directory / "rater"
        (rater / "data").mkdir(parents=True)
        artifacts.atomic_write_bytes(rater / "data" / "text.js", (a.path / "data" / "text.js").read_bytes())
        settings = a.summary["settings"]
        artifacts.atomic_write_text(
            rater / "data" / "items.js",
            data_script({"kind": "study", "study": digest, "settings": settings, "items": items}),
        )
        write_assets(rater)
        write_page(
            rater / "rate.html",
            "rate",
            f"gsae · blinded feature rating · study {digest}",
            ["data/text.js", "data/items.js"],
        )
        artifacts.write_json(directory / "key.json", {"study": digest, "items": key})
        summary = {
            "study": digest,
            "n_per_sae": n,
            "seed": int(cfg.inspect.study_seed),
            "a": {"label": a.summary["label"], "inspect": str(a.path), "sae": a.summary["sae"]},
            "b": {"label": b.summary["label"], "inspect": str(b.path), "sae": b.summary["sae"]},
            "model": a.summary["model"],
            "hook": a.summary["hook"],
            "rating_page": str(rater / "rate.html"),
            "labels": LABELS,
        }
        artifacts.write_json(directory / "study.json", summary)
        artifacts.mark_complete(directory)
        notice(
            f"study {digest}: give raters the folder {rater} (open rate.html); "
            f"the key stays in {directory / 'key.json'}"
        )
        return summary

    summary, reused = artifacts.build_once(directory, "study", force, build, "study.json")
    return StudyResult(directory, summary, reused)


# ---------------------------------------------------------------------------------------------
# Ratings -> statistics
# ---------------------------------------------------------------------------------------------


def _bad(path: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"The ratings file {path} {problem}. Download the ratings again from the study's rate.html "
        "(ratings are kept in the browser), and do not edit the file by hand."
    )


def read_ratings(path: Path) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"No ratings file at {path}; give the file the rating page downloaded.") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"is not readable JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != RATINGS_FORMAT:
        raise _bad(path, f"is not a gsae ratings file (format {RATINGS_FORMAT!r} expected)")
    ratings = obj.get("ratings")
    if not isinstance(ratings, list) or not all(isinstance(r, dict) for r in ratings):
        raise _bad(path, "has no list of ratings")
    for r in ratings:
        if r.get("label") not in LABELS or not isinstance(r.get("item"), int):
            raise _bad(path, f"holds a rating {r!r} that is not an item number with a label yes/maybe/no")
    if checksum(str(obj.get("study")), str(obj.get("rater", "")), ratings) != obj.get("checksum"):
        raise _bad(path, "was changed after it was downloaded (its checksum does not match its ratings)")
    return obj


def find_study(root: Path, study: str, path: Path) -> Path:
    directory = Path(root) / "study" / str(study)
    if not artifacts.is_complete(directory) or not (directory / "key.json").exists():
        known = (
            sorted(p.name for p in (Path(root) / "study").glob("*") if artifacts.is_complete(p))
            if (Path(root) / "study").is_dir()
            else []
        )
        raise ConfigError(
            f"The ratings file {path} belongs to study {study}, which is not under {Path(root) / 'study'} "
            f"(studies there: {', '.join(known) or 'none'}). Pass out_dir=DIR where that study was made."
        )
    return directory


def paired_differences(files: list[dict], keys: dict[str, dict]) -> dict[tuple[str, str], dict]:
    """Per SAE pair (label A, label B): paired label differences A - B over (study, rater, k)
    and each side's labels. Items a rater left unrated drop their pair."""
    out: dict[tuple[str, str], dict] = {}
    for f in files:
        study = keys[f["study"]]
        by_item = {r["item"]: LABELS[r["label"]] for r in f["ratings"]}
        pairs: dict[int, dict[str, int]] = {}
        for it in study["key"]["items"]:
            if it["item"] in by_item:
                pairs.setdefault(it["pair"], {})[it["sae"]] = by_item[it["item"]]
        name = (study["summary"]["a"]["label"], study["summary"]["b"]["label"])
        entry = out.setdefault(name, {"diffs": [], "a": [], "b": [], "raters": set(), "studies": set()})
        for k in sorted(pairs):
            if len(pairs[k]) == 2:
                entry["diffs"].append(pairs[k]["a"] - pairs[k]["b"])
                entry["a"].append(pairs[k]["a"])
                entry["b"].append(pairs[k]["b"])
        entry["raters"].add(f.get("rater") or "anonymous")
        entry["studies"].add(f["study"])
    return out


def pair_statistics(diffs: list[int], seed: int = 0) -> dict:
    """Mean difference, its 90 % BCa bootstrap interval, and the one-sided Wilcoxon-Pratt p."""
    import numpy as np
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    out = {"n_pairs": int(d.size), "mean_difference": float(d.mean()) if d.size else math.nan}
    if d.size < 2:
        return {**out, "ci": [math.nan, math.nan], "p_one_sided": math.nan}
    if np.all(d == d[0]):  # no spread: the bootstrap distribution is a point
        ci = [float(d[0]), float(d[0])]
    else:
        res = stats.bootstrap(
            (d,),
            np.mean,
            confidence_level=CI_LEVEL,
            method="BCa",
            n_resamples=9999,
            random_state=np.random.default_rng(seed),
        )
        ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    # all differences zero: no evidence either way
    p = 1.0 if np.all(d == 0) else float(stats.wilcoxon(d, zero_method="pratt", alternative="greater").pvalue)
    return {**out, "ci": ci, "p_one_sided": p}


def ratings_report(paths: list[Path], root: Path) -> list[dict]:
    files = [read_ratings(p) | {"_path": str(p)} for p in paths]
    keys: dict[str, dict] = {}
    for f, p in zip(files, paths):
        if f["study"] not in keys:
            directory = find_study(root, f["study"], p)
            keys[f["study"]] = {
                "key": artifacts.read_json(directory / "key.json"),
                "summary": artifacts.read_json(directory / "study.json"),
            }
        n_items = len(keys[f["study"]]["key"]["items"])
        if f.get("n_items") != n_items or any(not 1 <= r["item"] <= n_items for r in f["ratings"]):
            raise _bad(p, f"does not fit study {f['study']} ({n_items} items)")
        if len({r["item"] for r in f["ratings"]}) != len(f["ratings"]):
            raise _bad(p, "rates one item twice")
    rows = []
    for (la, lb), e in paired_differences(files, keys).items():
        st = pair_statistics(e["diffs"])
        rows.append(
            {
                "a": la,
                "b": lb,
                "raters": sorted(e["raters"]),
                "studies": sorted(e["studies"]),
                "mean_a": float(sum(e["a"]) / len(e["a"])) if e["a"] else math.nan,
                "mean_b": float(sum(e["b"]) / len(e["b"])) if e["b"] else math.nan,
                "counts_a": {k: e["a"].count(v) for k, v in LABELS.items()},
                "counts_b": {k: e["b"].count(v) for k, v in LABELS.items()},
                **st,
            }
        )
    return rows


def ratings_markdown(rows: list[dict]) -> str:
    lines = [
        "# Blinded rating study",
        "",
        "Labels No = 0, Maybe = 1, Yes = 2 (the paper's scale). Items are paired within study, rater and draw; "
        "the difference is A − B, with a 90 % BCa bootstrap interval over pairs and the one-sided Wilcoxon "
        "signed-rank test (Pratt's zero handling; H1: A is more interpretable), as in the paper's §4.3.2.",
        "",
        "| A | B | pairs | raters | mean A | mean B | A − B | 90 % CI | p (one-sided) "
        "| A yes/maybe/no | B yes/maybe/no |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ca, cb = r["counts_a"], r["counts_b"]
        lines.append(
            f"| {r['a']} | {r['b']} | {r['n_pairs']} | {len(r['raters'])} | {r['mean_a']:.3f} | {r['mean_b']:.3f} | "
            f"{r['mean_difference']:+.3f} | [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | {r['p_one_sided']:.3g} | "
            f"{ca['yes']}/{ca['maybe']}/{ca['no']} | {cb['yes']}/{cb['maybe']}/{cb['no']} |"
        )
    return "\n".join(lines) + "\n"
