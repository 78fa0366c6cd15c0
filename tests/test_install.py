"""gsae as a user on a cluster gets it: a wheel built from this checkout, installed into a fresh
virtual environment, run from another directory. The configs come from inside the package, the
converted model and corpus go to the user cache directory, outputs to the current directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from gsae_cli import store

# several processes, object storage or a fresh install: end to end, minutes together
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the gsae wheel; the dependencies (torch and the rest, already
    installed for the test run) are reached through a .pth line so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # build from a copy: an in-tree build would write build/ into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for name in ("gsae_cli", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ]
    )
    (wheel,) = (tmp / "dist").glob("gsae-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "gsae_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    return venv


def user_env(tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSAE_")}
    return {**env, "XDG_CACHE_HOME": str(tmp / "cache"), "HF_HUB_OFFLINE": "1", **extra}


def test_installed_wheel_runs_a_stage_from_another_directory(installed, tmp_path):
    gsae = installed / "bin" / "gsae"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = user_env(tmp_path)
    where = run(
        [str(installed / "bin" / "python"), "-c", "import gsae_cli; print(gsae_cli.__file__)"], cwd=work, env=env
    ).stdout.strip()
    assert where.startswith(str(installed)), f"gsae_cli imported from {where}, not the installed wheel"
    # every subpackage is in the wheel, not only the ones a stage imports
    found = run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import pkgutil, gsae_cli; print(sorted("
            "m.name for m in pkgutil.walk_packages(gsae_cli.__path__, 'gsae_cli.') if m.ispkg))",
        ],
        cwd=work,
        env=env,
    ).stdout
    source = sorted(
        f"gsae_cli.{p.parent.relative_to(REPO / 'gsae_cli')}".replace("/", ".")
        for p in (REPO / "gsae_cli").rglob("__init__.py")
        if p.parent != REPO / "gsae_cli"
    )
    assert found.strip() == str(source), found
    # the licence travels with the wheel (metadata and file)
    meta = run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; d = m.distribution('gsae'); "
            "print(d.metadata['License-Expression'], any(f.name == 'LICENSE' for f in d.files))",
        ],
        cwd=work,
        env=env,
    ).stdout.split()
    assert meta == ["MIT", "True"], meta

    shown = run([str(gsae), "show-config", "sae=relu"], cwd=work, env=env).stdout
    assert "smollm2-135m" in shown and "relu" in shown

    hook = "blocks.2.hook_resid_pre"
    proc = run(
        [
            str(gsae),
            "harvest",
            "model=tiny",
            f"hook={hook}",
            "harvest.n_tokens=1016",
            "harvest.batch_size=4",
            "device=cpu",
        ],
        cwd=work,
        env=env,
    )
    printed = Path(proc.stdout.strip().splitlines()[-1])
    assert printed.parts[:2] == ("outputs", "harvest"), f"stores go to ./outputs by default, got {printed}"
    assert store.is_complete(work / printed)
    cache = tmp_path / "cache" / "gsae"
    assert (cache / "models" / "smollm2-135m" / "tokenizer.json").exists()  # the tiny model's tokenizer
    assert any((cache / "corpus").glob("*.jsonl"))
    assert not (REPO / "build").exists()


def test_installed_wheel_finds_a_users_own_config_folder(installed, tmp_path):
    mine = tmp_path / "myconf" / "model"
    mine.mkdir(parents=True)
    (mine / "my-tiny.yaml").write_text("name: my-tiny\nsource: tiny\nn_layers: 2\nd_model: 32\nn_heads: 2\nd_mlp: 64\n")
    env = user_env(tmp_path, GSAE_CONFIG_PATH=str(tmp_path / "myconf"))
    shown = run([str(installed / "bin" / "gsae"), "show-config", "model=my-tiny"], cwd=tmp_path, env=env).stdout
    assert "my-tiny" in shown and "d_model: 32" in shown
    bad = subprocess.run(
        [str(installed / "bin" / "gsae"), "show-config", "model=not-there"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "not-there" in bad.stderr
