"""Config composition, validation and artifact hashing."""

import copy
import dataclasses
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gsae_cli.config import (
    ARCH_ONLY_KEYS,
    NON_IDENTITY_KEYS,
    Config,
    compose_config,
    config_hash,
    effective_lr,
    eval_identity,
    evalset_hash,
    harvest_dir,
    harvest_hash,
    inspect_hash,
    study_identity,
    train_dir,
    train_hash,
)
from gsae_cli.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_compose():
    cfg = compose_config([])
    assert cfg.model.name == "smollm2-135m" and cfg.sae.name == "gated"
    assert cfg.hook == "blocks.12.hook_resid_pre"


@pytest.mark.parametrize(
    "override, text",
    [
        ("nonsense_key=1", "nonsense_key"),
        ("sae.l1=3", "sae.l1"),
        ("harvest.n_tokens=abc", "harvest.n_tokens"),
        ("harvest.dtype=int8", "bfloat16"),
        ("device=tpu", "cpu"),
        ("harvest.n_tokens=0", "positive"),
    ],
)
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


def _leaves(cls, prefix=""):
    """(dotted key, type) for every leaf of the structured config schema."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from _leaves(t, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", t


_CHOICES = {
    "model.source": "hub",
    "model.dtype": "bfloat16",
    "harvest.dtype": "float32",
    "device": "cuda",
    "train.autocast": "bf16",
    "sae.name": "relu",
    "hooks": ["blocks.0.hook_mlp_out"],
}


def _changed(key, value, typ):
    if value is None:  # Optional[T]: some value of T
        inner = [a for a in typing.get_args(typ) if a is not type(None)][0]
        return {int: 3, float: 0.5, str: "something"}[inner]
    if key in _CHOICES:
        return _CHOICES[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "-x"
    raise AssertionError(f"no changed value for {key}={value!r}")


def _hashes(cfg):
    return {
        "harvest": harvest_hash(cfg, cfg.hook),
        "train": train_hash(cfg),
        "eval": config_hash(eval_identity(cfg, "sae")),
        "evalset": evalset_hash(cfg),
        "inspect": inspect_hash(cfg, "sae"),
        "study": config_hash(study_identity(cfg, "a", "b")),
    }


# The artifact whose hash must change with each group's keys.
_SHAPES = {
    "model": "harvest",
    "data": "harvest",
    "harvest": "harvest",
    "hook": "harvest",
    "site_start": "harvest",
    "sae": "train",
    "train": "train",
    "eval": "eval",
    "inspect": "inspect",
    "inspect.study_features": "study",
    "inspect.study_seed": "study",
}


def test_every_key_that_can_change_a_result_is_in_its_artifacts_hash():
    base = compose_config([])  # gated, so the gated-only switches count
    keys = dict(_leaves(Config))
    assert set(keys) >= NON_IDENTITY_KEYS, "a non-identity key that is not in the schema"
    for key, typ in keys.items():
        # an architecture's own key is changed on an SAE of that architecture
        own = key.startswith("sae.") and key[4:] in ARCH_ONLY_KEYS and "gated" not in ARCH_ONLY_KEYS[key[4:]]
        start = compose_config([f"sae={ARCH_ONLY_KEYS[key[4:]][0]}"]) if own else base
        value = OmegaConf.select(start, key)
        cfg = copy.deepcopy(start)
        OmegaConf.update(cfg, key, _changed(key, value, typ), force_add=False)
        before, after = _hashes(start), _hashes(cfg)
        if key in NON_IDENTITY_KEYS:
            assert after == before, f"{key} is listed as speed/logging-only but changes a hash"
        else:
            artifact = _SHAPES.get(key) or _SHAPES[key.split(".")[0]]
            assert after[artifact] != before[artifact], f"{key} changes results but not the {artifact} hash"


def test_keys_that_matter_only_in_some_settings():
    relu = compose_config(["sae=relu"])
    assert train_hash(relu) == train_hash(compose_config(["sae=relu", "sae.r_mag=false"]))
    untied = compose_config(["sae.tie_weights=false"])
    assert train_hash(untied) == train_hash(compose_config(["sae.tie_weights=false", "sae.r_mag=false"]))
    off = compose_config(["train.resample=false"])
    assert train_hash(off) == train_hash(compose_config(["train.resample=false", "train.resample_interval=0.2"]))
    # fixed-k architectures have no λ, and like jumprelu are never resampled; jumprelu has its own
    # λ warm-up; no architecture's own key reaches another's identity
    topk = compose_config(["sae=topk"])
    for extra in (
        "sae.l1_coefficient=0.5",
        "train.resample_interval=0.2",
        "train.l1_warmup_steps=9",
        "sae.bandwidth=1",
    ):
        assert train_hash(topk) == train_hash(compose_config(["sae=topk", extra])), extra
    assert train_hash(topk) != train_hash(compose_config(["sae=topk", "train.resample_dead_window=0.1"]))  # AuxK's cap
    jump = compose_config(["sae=jumprelu"])
    for extra in ("sae.k=7", "train.l1_warmup_steps=9", "train.resample=false", "sae.tie_weights=false"):
        assert train_hash(jump) == train_hash(compose_config(["sae=jumprelu", extra])), extra
    for extra in ("sae.k=7", "sae.bandwidth=1", "sae.threshold_window=0.5", "sae.aux_k=3"):
        assert train_hash(relu) == train_hash(compose_config(["sae=relu", extra])), extra
    # the keys added for them left every earlier architecture's artifacts where they were
    assert [train_hash(compose_config([f"sae={a}"])) for a in ("relu", "gated", "rescale_shift")] == [
        "494a28059e9f",
        "701f850114b2",
        "f2a203e8e389",
    ]
    # rescale_shift's identity includes the relu SAE it is built on
    rs = compose_config(["sae=rescale_shift"])
    assert train_hash(rs) != train_hash(compose_config(["sae=rescale_shift", "sae.lr=0.5"]))
    import gsae_cli.config.compose as config_module  # where baseline_config looks compose_config up

    real_compose = config_module.compose_config
    before = train_hash(rs)
    try:  # relu's default LR changing (conf/sae/relu.yaml) must change rescale_shift's hash
        config_module.compose_config = lambda ov: OmegaConf.merge(real_compose(ov), {"sae": {"lr": 0.123}})
        assert train_hash(rs) != before
    finally:
        config_module.compose_config = real_compose
    # the learning rate is hashed as the effective one, wherever it was set
    assert effective_lr(compose_config([])) == 3e-3
    assert train_hash(compose_config(["train.lr=0.003"])) == train_hash(compose_config([]))
    assert train_hash(compose_config(["sae.lr=0.001"])) == train_hash(compose_config(["train.lr=0.001"]))
    # the default corpus's content version is part of every store's identity
    import gsae_cli.config.identity as config  # where corpus_identity reads the version

    h = harvest_hash(relu, relu.hook)
    old = config.DEFAULT_CORPUS_VERSION
    try:
        config.DEFAULT_CORPUS_VERSION = old - 1
        assert harvest_hash(relu, relu.hook) != h
    finally:
        config.DEFAULT_CORPUS_VERSION = old


def test_out_dir_moves_every_artifact(tmp_path):
    cfg = compose_config([f"out_dir={tmp_path}"])
    assert harvest_dir(cfg, cfg.hook).is_relative_to(tmp_path)
    assert train_dir(cfg).is_relative_to(tmp_path)


def test_default_learning_rates_come_from_one_procedure_and_defaults_compare_fairly():
    """Every architecture's default rate is the best of the same sweep at the default budget
    (docs/evidence/lr_sweep.csv), and the default configs of the architectures differ in nothing
    else but their name and gated's own switches: `-m sae=relu,gated` with defaults is a fair
    comparison."""
    import csv

    rows = list(csv.DictReader((REPO / "docs" / "evidence" / "lr_sweep.csv").open()))
    default = compose_config([])
    archs = sorted({r["sae"] for r in rows})
    assert archs == ["batchtopk", "gated", "jumprelu", "relu", "rescale_shift", "scaled_relu", "topk"]
    for arch in archs:
        best = min((r for r in rows if r["sae"] == arch), key=lambda r: float(r["objective"]))
        cfg = compose_config([f"sae={arch}"])
        assert cfg.sae.lr == pytest.approx(float(best["lr"])), arch
        assert all(r["site"] == default.hook for r in rows if r["sae"] == arch)
        if arch == "rescale_shift":  # fitted on the relu SAE trained at relu's default rate
            assert {float(r["baseline_lr"]) for r in rows if r["sae"] == arch} == {compose_config(["sae=relu"]).sae.lr}
        plain = OmegaConf.to_container(cfg, resolve=True)
        ref = OmegaConf.to_container(default, resolve=True)
        for c in (plain, ref):
            c["sae"] = {k: v for k, v in c["sae"].items() if k not in ("name", "lr", *ARCH_ONLY_KEYS)}
        assert plain == ref, arch
        # the L1 architectures share the default λ (jumprelu's λ weighs L0, another scale)
        if arch in ("gated", "relu", "rescale_shift", "scaled_relu"):
            assert cfg.sae.l1_coefficient == default.sae.l1_coefficient


def test_resampling_keys_shape_exactly_the_architectures_that_resample():
    """config/identity.py's list of architectures never resampled agrees with each class's own
    `resamples` flag (the identity cannot import the SAE classes: torch stays out of start-up)."""
    from gsae_cli.saes import SAE_REGISTRY

    for name, cls in SAE_REGISTRY.items():
        base = compose_config([f"sae={name}"])
        changed = compose_config([f"sae={name}", "train.resample_interval=0.2"])
        assert (train_hash(base) != train_hash(changed)) == cls.resamples, name
