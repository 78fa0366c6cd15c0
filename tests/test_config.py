"""Config composition, validation and artifact hashing."""

import pytest

from gsae_cli.config import (compose_config, harvest_dir, harvest_hash, train_dir, train_hash)
from gsae_cli.errors import ConfigError


def test_defaults_compose():
    cfg = compose_config([])
    assert cfg.model.name == "smollm2-135m" and cfg.sae.name == "gated"
    assert cfg.hook == "blocks.12.hook_resid_pre"


@pytest.mark.parametrize("override, text", [
    ("nonsense_key=1", "nonsense_key"),
    ("sae.l1=3", "sae.l1"),
    ("harvest.n_tokens=abc", "harvest.n_tokens"),
    ("harvest.dtype=int8", "bfloat16"),
    ("device=tpu", "cpu"),
    ("harvest.n_tokens=0", "positive"),
])
def test_bad_overrides_are_config_errors(override, text):
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert text in str(err.value)


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose_config(["model=nope"])
    assert "smollm2-135m" in str(err.value) and "tiny" in str(err.value)


def test_hash_covers_only_the_keys_that_determine_the_artifact():
    base = compose_config([])
    h = harvest_hash(base, base.hook)
    assert harvest_hash(compose_config(["harvest.batch_size=3"]), base.hook) == h
    assert harvest_hash(compose_config(["train.lr=0.5", "sae=relu"]), base.hook) == h
    assert harvest_hash(compose_config(["harvest.n_tokens=1000"]), base.hook) != h
    assert harvest_hash(base, "blocks.3.hook_resid_pre") != h
    t = train_hash(base)
    assert train_hash(compose_config(["train.log_every=1", "train.checkpoint_every=7"])) == t
    assert train_hash(compose_config(["sae.l1_coefficient=0.2"])) != t
    assert train_hash(compose_config(["harvest.n_tokens=1000"])) != t  # a different store
    # gated-only switches do not split relu artifacts
    assert train_hash(compose_config(["sae=relu"])) == train_hash(compose_config(["sae=relu", "sae.aux_loss=false"]))


def test_out_dir_moves_every_artifact(tmp_path):
    cfg = compose_config([f"out_dir={tmp_path}"])
    assert harvest_dir(cfg, cfg.hook).is_relative_to(tmp_path)
    assert train_dir(cfg).is_relative_to(tmp_path)
