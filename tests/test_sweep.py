"""`-m`: Hydra sweep expansion and the sequential runner (with a fake stage, no model)."""

from __future__ import annotations

import pytest
import typer

from gsae_cli.errors import ConfigError, GsaeError, StoreError
from gsae_cli.sweep import expand_sweep, run_sweep


def test_two_by_three_product_in_hydra_order_with_fixed_overrides_copied():
    members = expand_sweep(["model=tiny", "sae=relu,gated", "sae.l1_coefficient=0.1,0.2,0.4", "train.n_tokens=1000"])
    assert members == [
        ["model=tiny", f"sae={a}", f"sae.l1_coefficient={c}", "train.n_tokens=1000"]
        for a in ("relu", "gated")
        for c in ("0.1", "0.2", "0.4")
    ]


def test_no_sweep_gives_one_member_verbatim():
    assert expand_sweep([]) == [[]]
    assert expand_sweep(["model=tiny", "~sae.path", "+x=1", "hooks=[a,b]"]) == [
        ["model=tiny", "~sae.path", "+x=1", "hooks=[a,b]"]
    ]


def test_range_choice_and_glob():
    assert expand_sweep(["a=range(1,4)"]) == [["a=1"], ["a=2"], ["a=3"]]
    # float noise from range() is tidied: 0.30000000000000004 would address a different artifact
    assert expand_sweep(["c=range(0.1,0.4,0.1)"]) == [["c=0.1"], ["c=0.2"], ["c=0.3"], ["c=0.4"]]
    assert expand_sweep(["b=choice(x,y)", "a=1"]) == [["b=x", "a=1"], ["b=y", "a=1"]]
    every = ["batchtopk", "gated", "jumprelu", "relu", "rescale_shift", "scaled_relu", "topk"]
    assert expand_sweep(["sae=glob(*)"]) == [[f"sae={a}"] for a in every]
    assert expand_sweep(["sae=glob(*,exclude=[rescale*,*topk])"]) == [
        ["sae=gated"],
        ["sae=jumprelu"],
        ["sae=relu"],
        ["sae=scaled_relu"],
    ]


def test_bad_sweeps_are_config_errors_naming_the_override():
    with pytest.raises(ConfigError, match="a=1,") as e:
        expand_sweep(["b=2", "a=1,"])
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="interval"):
        expand_sweep(["a=interval(0,1)"])
    with pytest.raises(ConfigError, match="no values"):
        expand_sweep(["a=range(5,1)"])


def _fail(err: BaseException) -> int:
    print(f"error: {err}")
    if isinstance(err, KeyboardInterrupt):
        return 130
    return err.exit_code if isinstance(err, GsaeError) else 1


def test_failing_member_does_not_stop_the_sweep(capsys):
    members = expand_sweep(["sae=relu,gated", "l1=1,2"])
    ran = []

    def stage(ov):
        ran.append(ov)
        if ov == ["sae=relu", "l1=2"]:
            raise StoreError("store is broken")
        if ov == ["sae=gated", "l1=2"]:
            raise RuntimeError("boom")
        return {}

    failed = run_sweep(members, stage, _fail)
    assert ran == members  # every member ran, in order
    assert failed == [(["sae=relu", "l1=2"], 2), (["sae=gated", "l1=2"], 1)]
    out, err = capsys.readouterr()
    assert "error: store is broken" in out and "error: boom" in out
    assert "[1/4] sae=relu l1=1" in err and "[4/4] sae=gated l1=2" in err
    assert "failed (exit 2)" in err and "failed (exit 1)" in err and "done" in err
    assert "2 done, 2 failed of 4 runs." in err


def test_all_done_returns_no_failures(capsys):
    assert run_sweep([["a=1"], ["a=2"]], lambda ov: {}, _fail) == []
    assert "2 done, 0 failed of 2 runs." in capsys.readouterr().err


def test_members_load_the_model_once_and_the_sweep_lets_it_go(monkeypatch):
    """A stage's load_model returns the model the previous member loaded (a stand-in loader
    counts the loads); after the sweep nothing is kept."""
    from types import SimpleNamespace

    from gsae_cli.lm import models

    loads = []
    monkeypatch.setattr(models, "_load", lambda cfg, device: loads.append(cfg) or SimpleNamespace(bridge=_Bridge()))
    cfg = {"name": "tiny"}
    got = []
    run_sweep([["a=1"], ["a=2"]], lambda ov: got.append(models.load_model(cfg, "cpu")) or {}, _fail)
    assert len(loads) == 1 and got[0] is got[1]
    assert models._last_loaded is None
    models.load_model(cfg, "cpu")
    assert len(loads) == 2  # outside a sweep every load is a load


class _Bridge:
    def eval(self):
        return self


def test_keyboard_interrupt_stops_the_whole_sweep(capsys):
    ran = []

    def stage(ov):
        ran.append(ov)
        if ov == ["a=2"]:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(typer.Exit) as e:
        run_sweep([["a=1"], ["a=2"], ["a=3"]], stage, _fail)
    assert e.value.exit_code == 130
    assert ran == [["a=1"], ["a=2"]]  # a=3 never started
    err = capsys.readouterr().err
    assert "interrupted" in err and "not run" in err
