"""`gsae inspect` end to end on the tiny model: its numbers agree with `gsae eval`'s on the same
text, reruns reuse it, a half-written browser is rebuilt, and bad input gets one paragraph and
exit 2 with nothing left looking complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_HOOK, gsae, tiny
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("insp") / "outputs"
    browser = Path(gsae("inspect", *tiny(out), check=True).stdout.strip().splitlines()[-1]).parent
    relu = gsae("train", *tiny(out, "sae=relu"), check=True).stdout.strip().splitlines()[-1]
    return {"out": out, "browser": browser, "relu": relu}


def _one_paragraph(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and "error:" in err
    err = err[err.index("error:") :]  # after any progress notices: the message, one paragraph
    assert "\n" not in err
    for n in needles:
        assert n in err, err


def test_browser_agrees_with_eval_on_the_same_text(site):
    t = load_file(str(site["browser"] / "features.safetensors"))
    metrics = json.loads(gsae("eval", *tiny(site["out"]), "--json", check=True).stdout)
    # the same SAE on the same eval set: the mean number of features per token is L0
    assert float(t["freq"].sum()) == pytest.approx(metrics["l0"], rel=1e-9)
    assert float((t["freq"] == 0).double().mean()) == pytest.approx(metrics["frac_dead"])
    summary = json.loads((site["browser"] / "summary.json").read_text())
    assert summary["site_tokens"] == 4 * (128 - 4)  # 4 eval windows, site positions 4..127
    # top activations are each feature's largest, in order, and within its max
    live = t["freq"] > 0
    assert torch.equal(t["top_vals"][live, 0], t["max_act"][live])
    assert (t["top_vals"][:, :-1] >= t["top_vals"][:, 1:]).all()
    assert (t["nb_cos"] <= 1 + 1e-6).all() and (t["nb_ids"] != torch.arange(len(t["freq"]))[:, None]).all()


def test_rerun_reuses_and_half_written_is_rebuilt(site):
    again = gsae("inspect", *tiny(site["out"]), check=True)
    assert "reusing complete feature browser" in again.stderr
    (site["browser"] / "COMPLETE").unlink()
    (site["browser"] / "data" / "index.js").write_text("garbage")
    rebuilt = gsae("inspect", *tiny(site["out"]), check=True)
    assert "reusing complete feature browser" not in rebuilt.stderr
    assert (site["browser"] / "COMPLETE").exists()
    assert (site["browser"] / "data" / "index.js").read_text().startswith("GSAE.load(")


def test_compare_and_study_need_another_sae(site):
    _one_paragraph(gsae("inspect", "compare", *tiny(site["out"])), "inspect.against=DIR")
    _one_paragraph(
        gsae("inspect", "study", *tiny(site["out"]), f"inspect.against={site['out']}/nope"), "is not a folder"
    )


def test_an_sae_from_another_hook_is_refused(site, tmp_path):
    other = (
        gsae("train", *tiny(site["out"], "sae=relu", "hook=blocks.1.hook_resid_pre"), check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    proc = gsae("inspect", "compare", *tiny(site["out"]), f"inspect.against={other}")
    _one_paragraph(proc, "blocks.1.hook_resid_pre", TINY_HOOK)
    assert not (site["out"] / "compare").exists() or not any((site["out"] / "compare").glob("*/COMPLETE"))


def test_a_study_larger_than_an_sae_is_refused(site):
    proc = gsae(
        "inspect", "study", *tiny(site["out"]), f"inspect.against={site['relu']}", "inspect.study_features=100000"
    )
    _one_paragraph(proc, "inspect.study_features=100000", "fire on the inspected text")
    assert not any((site["out"] / "study").glob("*/COMPLETE"))


def test_ratings_from_an_unknown_study_are_refused(site, tmp_path):
    from gsae_cli.inspect.study import checksum

    ratings = [{"item": 1, "label": "yes", "explanation": ""}]
    f = tmp_path / "r.json"
    f.write_text(
        json.dumps(
            {
                "format": "gsae-ratings-1",
                "study": "0123456789ab",
                "rater": "x",
                "n_items": 2,
                "ratings": ratings,
                "checksum": checksum("0123456789ab", "x", ratings),
            }
        )
    )
    proc = gsae("report", f"out_dir={site['out']}", "--ratings", str(f), "--report-dir", str(tmp_path / "r"))
    _one_paragraph(proc, "belongs to study 0123456789ab")
    f.write_text("{not json")
    _one_paragraph(gsae("report", "--ratings", str(f)), "not readable JSON")
