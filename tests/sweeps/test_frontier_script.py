"""sweeps/frontier.sh's own logic (member order, JOBS, failures, exit codes), with a recording
stand-in for the gsae executable; the real stages are tested end to end elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKE = """#!/usr/bin/env bash
echo "$1 procs=${GSAE_LOCAL_PROCS:-} $*" >> "$LOG"
[[ "$1" == eval && "$*" == *sae.l1_coefficient=0.2* ]] && exit 3
sleep 0.2
exit 0
"""


def frontier(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake = tmp_path / "gsae"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    log = tmp_path / "log"
    # the share frontier.sh gives each member is what is tested: not the one pytest-xdist's
    # workers take (conftest)
    mine = {k: v for k, v in os.environ.items() if k != "GSAE_LOCAL_PROCS"}
    full = {
        **mine,
        "GSAE": str(fake),
        "LOG": str(log),
        "HOOKS": "blocks.1.hook_resid_pre",
        "ARCHS": "relu gated",
        "COEFFS": "0.1 0.2",
        "DOUBLE": "0",
        "SEEDS": "0",
        "OUT_DIR": str(tmp_path / "out"),
        **env,
    }
    proc = subprocess.run([str(REPO / "sweeps" / "frontier.sh")], env=full, capture_output=True, text=True, timeout=120)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_jobs_run_members_at_once_with_a_share_each_and_collect_failures(tmp_path):
    proc, calls = frontier(tmp_path, JOBS="2")
    assert proc.returncode == 1
    assert "2 of 4 members failed" in proc.stderr
    assert len(re.findall(r"sae.l1_coefficient=0.2 train.lr=\S+ \(exit 3\)", proc.stderr)) == 2
    stages = [c.split()[0] for c in calls]
    assert stages[0] == "harvest" and stages[-1] == "report" and stages.count("eval") == 4
    # the report covers this sweep's sites and store size only, not older rounds in out_dir
    assert calls[-1].endswith("--where hook=blocks.1.hook_resid_pre --where harvest.n_tokens=4000000")
    assert calls[0].split()[1] == "procs="  # the harvest runs alone, on every core
    assert all(c.split()[1] == "procs=2" for c in calls if c.startswith("eval"))


def test_the_report_can_keep_its_evidence(tmp_path):
    proc, calls = frontier(tmp_path, COEFFS="0.1", EVIDENCE="docs/results/x/evidence")
    assert proc.returncode == 0, proc.stderr
    assert calls[-1].startswith("report ") and calls[-1].endswith("--evidence docs/results/x/evidence")


def test_one_job_runs_members_in_order(tmp_path):
    proc, calls = frontier(tmp_path, COEFFS="0.1 0.3")
    assert proc.returncode == 0, proc.stderr
    evals = [c for c in calls if c.startswith("eval")]
    assert [("sae=relu" in c, "0.1" in c) for c in evals] == [
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    ]
    assert all(c.split()[1] == "procs=1" for c in evals)


def test_bad_jobs_is_refused(tmp_path):
    proc, calls = frontier(tmp_path, JOBS="0")
    assert proc.returncode == 2 and "JOBS=0" in proc.stderr and calls == []


def test_slurm_array_mode_runs_only_its_member(tmp_path):
    proc, calls = frontier(tmp_path, SLURM_ARRAY_TASK_ID="2")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[0] for c in calls] == ["eval"]  # no harvest pass, no report: one member
    assert "sae=gated" in calls[0] and "sae.l1_coefficient=0.1" in calls[0]  # member 2: gated, first λ
    proc, calls = frontier(tmp_path, SLURM_ARRAY_TASK_ID="9")
    assert proc.returncode == 2 and "--array=0-3" in proc.stderr


def test_further_seeds_repeat_the_mid_frontier_last(tmp_path):
    proc, calls = frontier(tmp_path, COEFFS="0.1 0.3", DOUBLE_COEFFS="0.3", SEEDS="0 1 2")
    assert proc.returncode == 0, proc.stderr
    evals = [c for c in calls if c.startswith("eval")]
    assert len(evals) == 8 and not any("train.seed" in c for c in evals[:4])  # seed 0: the sweep as before
    seeded = [(re.search(r"sae=(\w+)", c).group(1), re.search(r"train.seed=(\d+)", c).group(1)) for c in evals[4:]]
    assert seeded == [("relu", "1"), ("gated", "1"), ("relu", "2"), ("gated", "2")]
    assert all("sae.l1_coefficient=0.3" in c for c in evals[4:])
    listed = subprocess.run(
        [str(REPO / "sweeps" / "frontier.sh"), "--list"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "HOOKS": "h",
            "ARCHS": "relu",
            "COEFFS": "0.1",
            "DOUBLE": "0",
            "DOUBLE_COEFFS": "0.1",
            "SEEDS": "0 3",
        },
    ).stdout.splitlines()
    assert listed == ["0 h 2000000 relu 0.1 - 0", "1 h 2000000 relu 0.1 - 3"]


def test_bad_seeds_are_refused(tmp_path):
    proc, calls = frontier(tmp_path, SEEDS="0 one")
    assert proc.returncode == 2 and "SEEDS item 'one'" in proc.stderr and calls == []


def test_default_members_site_by_site_and_seeds_normalised():
    def listed(**env):
        return subprocess.run(
            [str(REPO / "sweeps" / "frontier.sh"), "--list"], capture_output=True, text=True, env={**os.environ, **env}
        ).stdout.splitlines()

    rows = [line.split() for line in listed()]
    # per site: 3 archs x 5 λ at 2M, 3 x 3 at 4M (seed 0), then seeds 1 and 2 x 3 archs x 3 λ at
    # 2M and at 4M; the MLP site has its own 6 λ and its own 3 mid-frontier λ
    assert len(rows) == 60 + 60 + 63
    sites = {
        "blocks.12.hook_resid_pre": (rows[:60], 5, ("0.04", "0.08", "0.16")),
        "blocks.24.attn.hook_z": (rows[60:120], 5, ("0.04", "0.08", "0.16")),
        "blocks.24.hook_mlp_out": (rows[120:], 6, ("0.01", "0.02", "0.04")),
    }
    for hook, (site, n_coeffs, mid) in sites.items():
        n2 = 3 * n_coeffs
        assert all(r[1] == hook for r in site)
        assert [r[2] for r in site[: n2 + 9]] == ["2000000"] * n2 + ["4000000"] * 9
        assert all(r[-1] == "0" for r in site[: n2 + 9])
        assert [(r[-1], r[2]) for r in site[n2 + 9 :]] == (
            [("1", "2000000")] * 9 + [("1", "4000000")] * 9 + [("2", "2000000")] * 9 + [("2", "4000000")] * 9
        )
        assert all(r[4] in mid for r in site[n2:])
    assert [r[4] for r in rows[120:126]] == ["0.005", "0.01", "0.02", "0.04", "0.08", "0.16"]
    # block 24 trains every architecture at 1e-3, the residual stream keeps each one's sae.lr
    assert {(r[1], r[3], r[5]) for r in rows if r[1] != "blocks.12.hook_resid_pre"} == {
        (h, a, "1e-3")
        for h in ("blocks.24.attn.hook_z", "blocks.24.hook_mlp_out")
        for a in ("relu", "gated", "rescale_shift")
    }
    assert {(r[3], r[5]) for r in rows[:60]} == {("relu", "-"), ("gated", "-"), ("rescale_shift", "-")}
    rows = [line.split() for line in listed(HOOKS="h", ARCHS="relu", DOUBLE="0", SEEDS="0 08 8 01")]
    assert [r[-1] for r in rows] == ["0"] * 5 + ["8"] * 3 + ["1"] * 3


def test_architectures_with_overrides_of_their_own(tmp_path):
    # the paper's equal-compute baseline and a gated ablation beside the plain architectures
    proc, calls = frontier(
        tmp_path,
        ARCHS="gated relu relu:sae.expansion_factor=6 gated:sae.tie_weights=false:sae.r_mag=false",
        COEFFS="0.1",
        LRS="gated=3e-3",
    )
    assert proc.returncode == 0, proc.stderr
    evals = [c.split() for c in calls if c.startswith("eval")]
    assert [[w for w in e if w.startswith(("sae", "train.lr"))] for e in evals] == [
        ["sae=gated", "sae.l1_coefficient=0.1", "train.lr=3e-3"],
        ["sae=relu", "sae.l1_coefficient=0.1"],
        ["sae=relu", "sae.l1_coefficient=0.1", "sae.expansion_factor=6"],
        ["sae=gated", "sae.l1_coefficient=0.1", "sae.tie_weights=false", "sae.r_mag=false", "train.lr=3e-3"],
    ]
    (tmp_path / "bad").mkdir()
    proc, calls = frontier(tmp_path / "bad", ARCHS="relu relu:expansion")
    assert proc.returncode == 2 and "ARCHS item 'relu:expansion'" in proc.stderr and calls == []


def test_architectures_with_a_sparsity_setting_of_their_own(tmp_path):
    """TopK and BatchTopK sweep k (sae.k), JumpReLU its L0 λ, each from ARCH_COEFFS at every
    site; the doubled-token check takes DOUBLE_ARCH_COEFFS; the rest keep COEFFS."""
    proc, calls = frontier(
        tmp_path,
        ARCHS="relu topk jumprelu",
        COEFFS="0.1",
        DOUBLE="1",
        DOUBLE_COEFFS="0.1",
        TRAIN_TOKENS="1000",
        HARVEST_TOKENS="2000",
        ARCH_COEFFS="topk=8,32 jumprelu=0.01",
        DOUBLE_ARCH_COEFFS="topk=16",
    )
    assert proc.returncode == 0, proc.stderr
    evals = [[w for w in c.split() if w.startswith(("sae", "train.n_tokens"))] for c in calls if c.startswith("eval")]
    assert evals == [
        ["train.n_tokens=1000", "sae=relu", "sae.l1_coefficient=0.1"],
        ["train.n_tokens=1000", "sae=topk", "sae.k=8"],
        ["train.n_tokens=1000", "sae=topk", "sae.k=32"],
        ["train.n_tokens=1000", "sae=jumprelu", "sae.l1_coefficient=0.01"],
        ["train.n_tokens=2000", "sae=relu", "sae.l1_coefficient=0.1"],
        ["train.n_tokens=2000", "sae=topk", "sae.k=16"],
        ["train.n_tokens=2000", "sae=jumprelu", "sae.l1_coefficient=0.1"],  # no item of its own: DOUBLE_COEFFS
    ]
    (tmp_path / "bad").mkdir()
    proc, calls = frontier(tmp_path / "bad", ARCH_COEFFS="topk:8")
    assert proc.returncode == 2 and "ARCH_COEFFS item 'topk:8'" in proc.stderr and calls == []


def test_learning_rates_per_architecture_and_per_site(tmp_path):
    def listed(**env):
        return subprocess.run(
            [str(REPO / "sweeps" / "frontier.sh"), "--list"],
            capture_output=True,
            text=True,
            env={**os.environ, "ARCHS": "relu gated", "COEFFS": "0.1", "DOUBLE": "0", "SEEDS": "0", **env},
        )

    proc = listed(
        HOOKS="blocks.1.hook_resid_pre blocks.2.attn.hook_z",
        LRS="gated=3e-3 blocks.2.attn.hook_z:relu=1e-3 blocks.2.attn.hook_z:gated=1e-3",
    )
    assert proc.returncode == 0, proc.stderr
    # columns: index hook tokens arch λ lr seed; a site's own rate wins over the architecture's
    assert [(r[1], r[3], r[5]) for r in map(str.split, proc.stdout.splitlines())] == [
        ("blocks.1.hook_resid_pre", "relu", "-"),
        ("blocks.1.hook_resid_pre", "gated", "3e-3"),
        ("blocks.2.attn.hook_z", "relu", "1e-3"),
        ("blocks.2.attn.hook_z", "gated", "1e-3"),
    ]
    proc = listed(LRS="blocks.2:relu:1e-3")
    assert proc.returncode == 2 and "LRS item 'blocks.2:relu:1e-3'" in proc.stderr


def test_coefficients_per_site(tmp_path):
    def listed(**env):
        return subprocess.run(
            [str(REPO / "sweeps" / "frontier.sh"), "--list"],
            capture_output=True,
            text=True,
            env={
                k: v
                for k, v in {**os.environ, "ARCHS": "relu", "HOOKS": "a b", "SEEDS": "0 1", "LRS": "", **env}.items()
                if v is not None
            },
        )

    proc = listed(COEFFS="0.1 0.2 b:0.01,0.02,0.03", DOUBLE_COEFFS="0.2 b:0.02")
    assert proc.returncode == 0, proc.stderr
    # columns: index hook tokens arch λ lr seed
    assert [(r[1], r[2], r[4], r[6]) for r in map(str.split, proc.stdout.splitlines())] == [
        ("a", "2000000", "0.1", "0"),
        ("a", "2000000", "0.2", "0"),
        ("a", "4000000", "0.2", "0"),
        ("a", "2000000", "0.2", "1"),
        ("a", "4000000", "0.2", "1"),
        ("b", "2000000", "0.01", "0"),
        ("b", "2000000", "0.02", "0"),
        ("b", "2000000", "0.03", "0"),
        ("b", "4000000", "0.02", "0"),
        ("b", "2000000", "0.02", "1"),
        ("b", "4000000", "0.02", "1"),
    ]
    for bad in ("0.1,0.2", "b:0.1,x", "b:", "-", "*", "0.1 c:0.2", "0.1 b:0.1 b:0.2"):
        proc = listed(COEFFS=bad)
        assert proc.returncode == 2 and f"item '{bad.split()[-1]}'" in proc.stderr and proc.stdout == "", bad
    proc = listed(COEFFS="b:0.1")  # site a would get no λ
    assert proc.returncode == 2 and "no λ for a" in proc.stderr
    # the defaults name block 24's MLP site; a sweep of other sites does not trip over that
    proc = listed(COEFFS=None, DOUBLE_COEFFS=None)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2 * (5 + 3 + 3 + 3)
