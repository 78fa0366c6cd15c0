"""Every published study in docs/results rebuilds from its committed evidence, byte for byte."""

import json
import shutil
from pathlib import Path

import matplotlib
import pytest

from gsae_cli.report import run_report

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted(p.parent.name for p in (REPO / "docs" / "results").glob("*/evidence"))
REPORT_FILES = ("results.md", "results.csv", "ratios.json", "convergence.json", "seeds.json", "settings.json")


@pytest.mark.parametrize("study", STUDIES)
def test_a_published_study_rebuilds_from_its_evidence(study, tmp_path):
    src = REPO / "docs" / "results" / study
    dst = tmp_path / "clone" / "docs" / "results" / study
    shutil.copytree(src / "evidence", dst / "evidence")  # the repository elsewhere, no outputs/
    run_report([str(dst / "evidence")], tmp_path / "no-outputs", dst, [], bootstrap_samples=1000, bootstrap_seed=0)
    # against.json: only where a site has three architectures or more
    assert (dst / "against.json").exists() == (src / "against.json").exists()
    for name in REPORT_FILES + (("against.json",) if (src / "against.json").exists() else ()):
        assert (dst / name).read_bytes() == (src / name).read_bytes(), f"{study}/{name} differs from its rebuild"
    made_with = json.loads((src / "evidence" / "collected.json").read_text())["matplotlib"]
    if made_with == matplotlib.__version__:  # plots are the same bytes only under the same matplotlib
        for name in ("frontier.png", "shrinkage.png"):
            assert (dst / name).read_bytes() == (src / name).read_bytes(), f"{study}/{name} differs from its rebuild"


def test_there_is_a_published_study():
    assert STUDIES, "docs/results holds no study with evidence"
