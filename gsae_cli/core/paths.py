"""Where gsae reads its configs and keeps the data it prepares, in a checkout and when installed.

A checkout (the repository, `pip install -e .`) uses its top-level `conf/` and `data/`. An
installed wheel carries the same configs inside the package (`gsae_cli/conf`, built from the
top-level `conf/`) and keeps the converted default model and the corpus file in a user cache
directory, like the Hugging Face cache. Environment variables override each:
  GSAE_CONF_DIR     the config tree to compose from (replaces the built-in one)
  GSAE_CONFIG_PATH  more config folders, os.pathsep-separated, searched after the built-in tree
                    (Hydra appends search paths): a `model/my-model.yaml` there makes `model=my-model`
                    work without copying the tree; to change a built-in option, copy the tree and
                    point GSAE_CONF_DIR at it
  GSAE_DATA_DIR     where the converted model and the corpus file live
                    (default in an installed copy: $XDG_CACHE_HOME/gsae, else ~/.cache/gsae)
Outputs go to `out_dir` (default `outputs`, relative to the current directory) in both cases.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # gsae_cli/ (this file is gsae_cli/core/paths.py)
_CHECKOUT = PACKAGE_DIR.parent


def in_checkout() -> bool:
    return (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf" / "config.yaml").is_file()


def conf_dir() -> Path:
    if os.environ.get("GSAE_CONF_DIR"):
        return Path(os.environ["GSAE_CONF_DIR"]).expanduser()
    return _CHECKOUT / "conf" if in_checkout() else PACKAGE_DIR / "conf"


def extra_conf_dirs() -> list[Path]:
    return [Path(p).expanduser().resolve() for p in os.environ.get("GSAE_CONFIG_PATH", "").split(os.pathsep) if p]


def data_dir() -> Path:
    if os.environ.get("GSAE_DATA_DIR"):
        return Path(os.environ["GSAE_DATA_DIR"]).expanduser()
    if in_checkout():
        return _CHECKOUT / "data"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache.expanduser() / "gsae"
