"""`gsae ls` on hand-made artifact folders: statuses complete / partial / failed / running."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest
from conftest import gsae

from gsae_cli.core import status
from gsae_cli.errors import ConfigError
from gsae_cli.listing import human_size, is_override, list_artifacts, ls_config, override_key, print_listing

HOOK = "blocks.12.hook_resid_pre"


def _yaml(d: Path, model="smollm2-135m", sae="gated", l1=0.1, train_tokens=200, harvest_tokens=400):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(
        f"model:\n  name: {model}\nhook: {HOOK}\nsae:\n  name: {sae}\n  l1_coefficient: {l1}\n"
        f"train:\n  n_tokens: {train_tokens}\nharvest:\n  n_tokens: {harvest_tokens}\n"
    )


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    # harvest: one complete store, one partial store (a quarter written)
    h = out / "harvest" / f"smollm2-135m__{HOOK}__aaaa"
    h.mkdir(parents=True)
    (h / "zarr.json").write_text("{}")
    (h / "summary.json").write_text(json.dumps({"model": "smollm2-135m", "hook": HOOK, "n_tokens": 400}))
    (h / "COMPLETE").write_text("x\n")
    hp = out / "harvest" / "smollm2-135m__blocks.3.hook_resid_pre__bbbb"
    _yaml(hp)
    (hp / "progress.json").write_text(json.dumps({"rows_written": 100}))
    # train: complete, partial (log says 50 of 200 tokens), failed
    t = out / "train" / f"smollm2-135m__{HOOK}__relu__cccc"
    _yaml(t, sae="relu", l1=0.2)
    (t / "sae.json").write_text(
        json.dumps(
            {
                "architecture": "relu",
                "model": "smollm2-135m",
                "hook": HOOK,
                "l1_coefficient": 0.2,
                "d_model": 4,
                "d_sae": 16,
            }
        )
    )
    (t / "sae.safetensors").write_bytes(b"\0" * 3000)
    (t / "COMPLETE").write_text("x\n")
    tp = out / "train" / f"smollm2-135m__{HOOK}__gated__dddd"
    _yaml(tp, sae="gated", l1=0.1)
    (tp / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "tokens": 25}) + "\n" + json.dumps({"step": 2, "tokens": 50}) + "\n"
    )
    tf = out / "train" / f"smollm2-135m__{HOOK}__gated__eeee"
    _yaml(tf, sae="gated", l1=0.5)
    assert status.mark_failed(tf, "StoreError: the store is corrupt\nsecond line")
    # eval: complete (metrics.json only), and a .trash folder that must not be listed
    e = out / "eval" / "smollm2-135m__ffff"
    e.mkdir(parents=True)
    cfg = {
        "model": {"name": "smollm2-135m"},
        "hook": HOOK,
        "sae": {"name": "gated", "l1_coefficient": 0.1},
        "train": {"n_tokens": 200},
    }
    (e / "metrics.json").write_text(
        json.dumps({"l0": 3.0, "config": cfg, "sae": {"architecture": "relu", "l1_coefficient": 0.3}})
    )
    (e / "COMPLETE").write_text("x\n")
    (out / "eval" / ".trash-smollm2-135m__zzzz-123").mkdir()
    # evalset: the clean and zero-ablated passes shared by a site's evaluations
    es = out / "evalset" / f"smollm2-135m__{HOOK}__gggg"
    es.mkdir(parents=True)
    (es / "config.yaml").write_text(f"model:\n  name: smollm2-135m\nhook: {HOOK}\neval:\n  n_tokens: 508\n")
    (es / "COMPLETE").write_text("x\n")
    return out


def _by_name(rows):
    return {r["name"]: r for r in rows}


def test_statuses_and_config_values(outputs):
    rows = _by_name(list_artifacts(outputs))
    assert len(rows) == 7
    es = rows[f"smollm2-135m__{HOOK}__gggg"]
    assert (es["stage"], es["status"], es["hook"], es["sae"], es["tokens"]) == ("evalset", "complete", HOOK, None, 508)
    h = rows[f"smollm2-135m__{HOOK}__aaaa"]
    assert (h["stage"], h["status"], h["model"], h["hook"], h["tokens"]) == (
        "harvest",
        "complete",
        "smollm2-135m",
        HOOK,
        400,
    )
    hp = rows["smollm2-135m__blocks.3.hook_resid_pre__bbbb"]
    assert hp["status"] == "partial" and hp["progress"] == pytest.approx(0.25)
    assert hp["hook"] == "blocks.3.hook_resid_pre"  # from the folder name: config.yaml's hook is not the store's
    t = rows[f"smollm2-135m__{HOOK}__relu__cccc"]
    assert (t["status"], t["sae"], t["l1_coefficient"], t["tokens"]) == ("complete", "relu", 0.2, 200)
    assert t["size_bytes"] >= 3000 and t["progress"] is None
    tp = rows[f"smollm2-135m__{HOOK}__gated__dddd"]
    assert (tp["status"], tp["sae"], tp["l1_coefficient"]) == ("partial", "gated", 0.1)
    assert tp["progress"] == pytest.approx(0.25)
    tf = rows[f"smollm2-135m__{HOOK}__gated__eeee"]
    assert tf["status"] == "failed" and tf["message"].startswith("StoreError: the store is corrupt")
    e = rows["smollm2-135m__ffff"]
    # the eval records which SAE it measured; that wins over config.sae (an sae.path eval)
    assert (e["stage"], e["status"], e["sae"], e["l1_coefficient"], e["tokens"]) == (
        "eval",
        "complete",
        "relu",
        0.3,
        200,
    )
    # harvest rows first, then train, then the shared eval sets, then eval
    assert [r["stage"] for r in list_artifacts(outputs)] == ["harvest"] * 2 + ["train"] * 3 + ["evalset", "eval"]


def test_running_while_another_process_holds_the_lock(outputs):
    tp = outputs / "train" / f"smollm2-135m__{HOOK}__gated__dddd"
    fresh = outputs / "eval" / "smollm2-135m__gggg"  # lock held, nothing written yet
    held = []
    for d in (tp, fresh):
        fh = open(status.lock_path(d), "a+")  # noqa: SIM115 - flock locks belong to the open file, so this
        fcntl.flock(fh, fcntl.LOCK_EX)  # conflicts with ls's own open, as another process would
        held.append(fh)
    try:
        rows = _by_name(list_artifacts(outputs))
        assert rows[tp.name]["status"] == "running"
        assert rows[fresh.name]["status"] == "running" and rows[fresh.name]["size_bytes"] == 0
        assert rows[fresh.name]["model"] == "smollm2-135m"
    finally:
        for fh in held:
            fh.close()
    rows = _by_name(list_artifacts(outputs))
    assert rows[tp.name]["status"] == "partial"
    assert fresh.name not in rows  # a stale lock file with no folder is not an artifact
    assert not fresh.exists()


def test_failed_note_is_cleared_by_a_new_attempt(tmp_path):
    d = tmp_path / "a"
    assert not status.mark_failed(d, "boom")  # no folder, no note (and no folder created)
    assert not d.exists()
    d.mkdir()
    with pytest.raises(ValueError), status.recording(d):
        raise ValueError("bad value")
    assert status.read_failed(d) == "ValueError: bad value"
    with status.recording(d):
        pass
    assert status.read_failed(d) is None
    # Ctrl-C leaves a partial artifact, not a failed one
    with pytest.raises(KeyboardInterrupt), status.recording(d):
        raise KeyboardInterrupt
    assert status.artifact_status(d, complete=False) == "partial"


def test_print_listing(outputs, capsys):
    print_listing(list_artifacts(outputs))
    out = capsys.readouterr().out
    for word in ("complete", "partial 25%", "failed", "relu", " KiB", str(outputs / "eval" / "smollm2-135m__ffff")):
        assert word in out
    assert "failed: " in out and "the store is corrupt" in out


def test_empty_or_missing_outputs(tmp_path, capsys):
    assert list_artifacts(tmp_path / "missing") == []
    (tmp_path / "outputs" / "train").mkdir(parents=True)
    assert list_artifacts(tmp_path / "outputs") == []
    print_listing([])
    assert "No artifacts yet" in capsys.readouterr().out


def test_human_size():
    assert human_size(0) == "0 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 2**30) == "3.0 GiB"


# ---- out_dir=, as for every stage ----------------------------------------------------------------


def test_cli_ls_takes_out_dir_like_every_stage(outputs):
    p = gsae("ls", f"out_dir={outputs}", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 7 and {r["stage"] for r in rows} == {"harvest", "train", "evalset", "eval"}
    assert all(r["path"].startswith(str(outputs)) for r in rows)
    # the deprecated option still works and says what to write instead
    p = gsae("ls", "--out-dir", str(outputs), "--json")
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 7
    assert f"--out-dir is deprecated; write out_dir={outputs}" in p.stderr


def test_cli_ls_bad_input(outputs):
    # an unknown key fails exactly as it does for every other stage
    bad, ref = gsae("ls", f"out_dir={outputs}", "sae.l1_coefficent=0.1"), gsae("show-config", "sae.l1_coefficent=0.1")
    assert bad.returncode == ref.returncode == 2 and bad.stderr == ref.stderr
    # a bare folder is what a user means by out_dir=FOLDER: the message says so
    p = gsae("ls", str(outputs))
    assert p.returncode == 2 and f"gsae ls out_dir={outputs}" in p.stderr


def test_ls_config(tmp_path, capsys):
    assert ls_config([]).out_dir == "outputs"
    assert ls_config([f"out_dir={tmp_path}"]).out_dir == str(tmp_path)
    assert ls_config([], legacy_out_dir=str(tmp_path / "a b,c")).out_dir == str(tmp_path / "a b,c")  # quoted for Hydra
    assert ls_config(["model=tiny"]).out_dir == "outputs"
    assert "model=tiny: valid, but gsae ls only reads finished artifacts" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="both --out-dir and out_dir="):
        ls_config([f"out_dir={tmp_path}"], legacy_out_dir=str(tmp_path))


def test_overrides_are_told_from_paths():
    for token, key in (
        ("out_dir=x", "out_dir"),
        ("sae=relu", "sae"),
        ("+a.b=1", "a.b"),
        ("++x=2", "x"),
        ("~sae.path=null", "sae.path"),
        ("db/mysql=x", "db/mysql"),
        ("a.b@pkg=1", "a.b"),
    ):
        assert is_override(token) and override_key(token) == key
    for token in ("outputs/eval/m__h", "./a=b", "/abs/x=1", "~/outputs", "~user/outputs", "x", "=a"):
        assert not is_override(token) and override_key(token) is None


def test_a_distributed_harvest_is_running_while_any_rank_holds_its_lock(outputs):
    fresh = outputs / "harvest" / f"smollm2-135m__{HOOK}__abab"  # rank 1 started, nothing written yet
    fh = open(fresh.with_name(f".{fresh.name}.rank1of2.lock"), "a+")  # noqa: SIM115 - held past this block
    fcntl.flock(fh, fcntl.LOCK_EX)
    try:
        rows = _by_name(list_artifacts(outputs))
        assert rows[fresh.name]["status"] == "running"
        assert not [n for n in rows if ".rank" in n]  # one row per store, not one per rank
    finally:
        fh.close()
    assert fresh.name not in _by_name(list_artifacts(outputs))


def test_a_rank_clears_only_its_own_failure_note(tmp_path):
    d = tmp_path / "store"
    d.mkdir()
    with pytest.raises(RuntimeError), status.recording(d, "harvest rank 0 of 2: "):
        raise RuntimeError("out of memory")
    with status.recording(d, "harvest rank 1 of 2: "):  # rank 1 starting later keeps rank 0's failure
        pass
    assert status.read_failed(d) == "harvest rank 0 of 2: RuntimeError: out of memory"
    with status.recording(d, "harvest rank 0 of 2: "):  # rank 0's own rerun clears it
        pass
    assert status.read_failed(d) is None


def test_a_fixed_k_sae_lists_its_k_where_others_list_lambda(tmp_path):
    out = tmp_path / "outputs"
    t = out / "train" / f"smollm2-135m__{HOOK}__topk__kkkk"
    _yaml(t, sae="topk", l1=0.1)  # (the config's λ, which a TopK SAE does not use)
    meta = {"architecture": "topk", "model": "smollm2-135m", "hook": HOOK, "l1_coefficient": None, "k": 32}
    (t / "sae.json").write_text(json.dumps(meta))
    (t / "COMPLETE").write_text("x\n")
    e = out / "eval" / "smollm2-135m__kkkk"
    e.mkdir(parents=True)
    cfg = {"model": {"name": "smollm2-135m"}, "hook": HOOK, "sae": {"name": "topk", "l1_coefficient": 0.1}}
    (e / "metrics.json").write_text(json.dumps({"config": cfg, "sae": {"architecture": "topk", "k": 32}}))
    (e / "COMPLETE").write_text("x\n")
    rows = _by_name(list_artifacts(out))
    assert rows[t.name]["l1_coefficient"] == rows[e.name]["l1_coefficient"] == "k=32"
