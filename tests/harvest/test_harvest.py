"""`gsae harvest` end to end: on the tiny model, on the real default model, killed and resumed,
and with bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GSAE, TINY_HOOK, gsae, tiny

from gsae_cli import store
from gsae_cli.config import compose_config
from gsae_cli.harvest.run import run_harvest
from gsae_cli.store import layout


def _arrays(path):
    s = store.open_store(path)
    return s.read_rows(0, s.n_tokens), s.read_tokens(0, s.n_tokens)


def test_harvest_tiny_writes_a_complete_store_and_reuses_it(out):
    proc = gsae("harvest", *tiny(out), check=True)
    path = proc.stdout.strip().splitlines()[-1]
    s = store.open_store(path)
    assert (s.n_tokens, s.d_model) == (4064, 64)
    assert s.attrs["hook"] == TINY_HOOK and s.attrs["ctx_len"] == 128 and s.attrs["dtype"] == "bfloat16"
    assert s.dtype == torch.bfloat16
    acts, toks = _arrays(path)
    bos = s.attrs["bos_token_id"]
    assert not (toks == bos).any()  # BOS positions excluded
    assert s.attrs["site_start"] == 4 and json.loads((Path(path) / "summary.json").read_text())["site_start"] == 4
    # the recorded norm statistics are those of the stored values
    assert s.attrs["norms"]["mean_sq_norm"] == pytest.approx(acts.double().pow(2).sum(1).mean().item(), rel=1e-9)
    assert {"torch", "zarr", "transformer-lens"} <= set(s.attrs["versions"])
    again = gsae("harvest", *tiny(out), check=True)
    assert again.stdout.strip().splitlines()[-1] == path
    assert "reusing" in again.stderr


def test_harvest_json_summary_and_several_hooks_in_one_pass(out):
    hooks = "hooks=[blocks.1.hook_resid_pre,blocks.3.hook_mlp_out]"
    proc = gsae("harvest", *tiny(out), hooks, "--json", check=True)
    summaries = json.loads(proc.stdout)
    assert [s["hook"] for s in summaries] == ["blocks.1.hook_resid_pre", "blocks.3.hook_mlp_out"]
    a0, t0 = _arrays(summaries[0]["path"])
    a1, t1 = _arrays(summaries[1]["path"])
    assert torch.equal(t0, t1) and not torch.equal(a0, a1)


def test_keys_left_out_of_the_store_hash_leave_its_values_alone(tmp_path):
    """`hooks` and `harvest.batch_size` are not in a store's hash (config.NON_IDENTITY_KEYS): a
    store harvested beside another hook is bit-identical to one harvested alone, and another batch
    size regroups the forward pass's sums, which moves a bf16 value by at most one rounding step."""
    both = tiny(tmp_path / "both", "hooks=[blocks.1.hook_resid_pre,blocks.3.hook_mlp_out]")
    alone = tiny(tmp_path / "alone", "hook=blocks.1.hook_resid_pre")
    other_batch = tiny(tmp_path / "batch1", "hook=blocks.1.hook_resid_pre", "harvest.batch_size=1")
    paths = [run_harvest(compose_config(a))[0].path for a in (both, alone, other_batch)]
    assert len({Path(p).name for p in paths}) == 1  # one identity: the same store name
    (a, t), (b, u), (c, v) = (_arrays(p) for p in paths)
    assert torch.equal(t, u) and torch.equal(t, v)
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    step = b.float().abs().clamp_min(1e-30) * 2.0**-7  # one bf16 rounding step (8 significant bits)
    assert ((c.float() - b.float()).abs() <= step * 1.0001).all()


def test_harvest_values_match_a_direct_forward(out):
    """The store holds exactly the hook's activations (bf16-rounded) from position site_start on."""
    from gsae_cli.lm.data import batched_windows, token_windows
    from gsae_cli.lm.models import load_model

    cfg = compose_config(tiny(out, "harvest.n_tokens=252", "site_start=2"))  # two windows of 128 - 2
    path = run_harvest(cfg)[0].path
    model = load_model(cfg.model, torch.device("cpu"))
    windows = token_windows(cfg.data, model.tokenizer, "train", 128, model.bos_token_id, model.eos_token_id)
    batch = next(batched_windows(windows, 2))
    _, cache = model.bridge.run_with_cache(batch, names_filter=[TINY_HOOK])
    expected = cache[TINY_HOOK][:, 2:].reshape(-1, 64).to(torch.bfloat16)
    acts, toks = _arrays(path)
    assert torch.equal(toks, batch[:, 2:].reshape(-1).to(toks.dtype))
    assert torch.allclose(acts.float(), expected.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.slow
def test_killed_harvest_resumes_to_an_identical_store(out, tmp_path):
    args = tiny(
        out, "harvest.n_tokens=30480", "harvest.chunk_rows=256", "harvest.shard_chunks=1", "harvest.batch_size=2"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([*GSAE, "harvest", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    path = compose_config(args)
    from gsae_cli.config import harvest_dir

    target = harvest_dir(path, TINY_HOOK)
    deadline = time.monotonic() + 600  # a hang guard only, not a speed check
    while store.rows_written(target) < 2048 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = store.rows_written(target)
    assert 0 < killed_at < 30480, "the kill should land mid-harvest"
    assert not store.is_complete(target)
    resumed = gsae("harvest", *args, check=True)
    assert "resuming harvest" in resumed.stderr
    fresh_out = tmp_path / "fresh"
    fresh = gsae("harvest", *[a if not a.startswith("out_dir=") else f"out_dir={fresh_out}" for a in args], check=True)
    a, t = _arrays(target)
    b, u = _arrays(fresh.stdout.strip().splitlines()[-1])
    assert torch.equal(t, u)
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))  # bit-identical values
    s1, s2 = store.open_store(target), store.open_store(fresh.stdout.strip().splitlines()[-1])
    assert s1.attrs["norms"] == pytest.approx(s2.attrs["norms"])


SITE_DOCS = [
    "held out: index 0",
    "The cat sat on the mat.",
    "Dogs bark at night and sleep by day.",
    "A third document, a little longer than the others, ends here.",
    "Short one.",
    "The fifth and last document of this tiny corpus.",
]


@pytest.mark.parametrize("site_start", [0, 1, 2])
def test_site_start_decides_which_window_positions_are_stored(out, tmp_path, site_start):
    """Windows of 6 tokens: BOS + 5 text tokens of the documents joined by EOS; the store holds
    positions site_start..5 of each window, window after window."""
    from gsae_cli.lm.models import load_tokenizer

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in SITE_DOCS))
    per_window = 6 - site_start
    n_windows = 4
    cfg = compose_config(
        tiny(
            out,
            f"data.path={path}",
            "data.eval_every=1000",
            "harvest.ctx_len=6",
            f"site_start={site_start}",
            f"harvest.n_tokens={n_windows * per_window}",
            "harvest.chunk_rows=4",
        )
    )
    store_path = run_harvest(cfg)[0].path
    tok = load_tokenizer(cfg.model)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    stream = []
    for text in SITE_DOCS[1:]:  # document 0 is the held-out one (index % 1000 == 0)
        stream += tok(text, add_special_tokens=False)["input_ids"] + [eos]
    windows = [[bos] + stream[5 * i : 5 * i + 5] for i in range(n_windows)]
    expected = [t for w in windows for t in w[site_start:]]
    s = store.open_store(store_path)
    assert s.read_tokens(0, s.n_tokens).tolist() == expected
    assert s.attrs["site_start"] == site_start and s.attrs["corpus"]["windows"] == n_windows
    assert (s.read_tokens(0, s.n_tokens) == bos).sum() == (n_windows if site_start == 0 else 0)


@pytest.mark.parametrize("damage", ["overwritten bytes", "NaN"])
def test_training_on_a_damaged_store_exits_2_naming_the_chunk_and_the_fix(out, damage):
    """The tiny store: 4,064 bf16 rows of d_model 64 in chunks of 512 rows, all 8 chunks in one
    shard file (each chunk 512 * 64 * 2 bytes + a 4-byte crc32c, then a 8 * 16 + 4 byte index)."""
    import zarr

    path = Path(gsae("harvest", *tiny(out), check=True).stdout.strip().splitlines()[-1])
    shard = path / "activations" / "c" / "0" / "0"
    chunk_bytes = 512 * 64 * 2 + 4
    assert shard.stat().st_size == 8 * chunk_bytes + 8 * 16 + 4
    if damage == "NaN":
        zarr.open_group(str(path), mode="r+")["activations"][3000, 5] = 0x7FC0  # bfloat16 NaN bits
        chunk, rows, what = 5, "2560-3071", r"holds NaN or inf, which a harvest never writes"
    else:
        middle = shard.stat().st_size // 2  # 262,226: byte 66 of chunk 4
        assert middle // chunk_bytes == 4
        with open(shard, "r+b") as fh:
            fh.seek(middle)
            fh.write(b"\xde\xad\xbe\xef")
        chunk, rows, what = 4, "2048-2559", "fails its crc32c checksum"
    proc = gsae("train", *tiny(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = " ".join(proc.stderr.split())  # undo the terminal's line wrapping
    assert (
        f"The activation store at {path} is damaged: chunk {chunk} of its activations (rows {rows}, "
        f"in the shard file {shard})" in message
    )
    assert re.search(what, message)
    assert "gsae harvest --force` with the same overrides" in message and f"delete the directory {path}" in message
    assert "Traceback" not in proc.stderr and "only zero or non-finite" not in proc.stderr


def test_shard_statistics_on_hand_values():
    a = layout.shard_stats(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32), "float32")
    b = layout.shard_stats(np.array([[1.0, 0.0]], np.float32), "float32")
    assert a == [2, 25.0, 5.0, 5.0] and b == [1, 1.0, 1.0, 1.0]
    r = layout.combine_stats([a, b])
    assert r["mean_sq_norm"] == pytest.approx((25 + 0 + 1) / 3)
    assert r["mean_norm"] == pytest.approx((5 + 0 + 1) / 3)
    assert r["max_norm"] == 5.0 and r["count"] == 3
    bf16 = torch.tensor([[3.0, 4.0]], dtype=torch.bfloat16).view(torch.uint16).numpy()  # raw store bits
    assert layout.shard_stats(bf16, "bfloat16") == [1, 25.0, 5.0, 5.0]


@pytest.mark.parametrize(
    "override, text",
    [
        ("hook=blocks.2.hook_nonsense", "Valid hooks"),
        ("hook=blocks.99.hook_resid_pre", "Valid hooks"),
        ("harvest.bogus=1", "harvest.bogus"),
        ("model=nonexistent", "Available options"),
    ],
)
def test_bad_input_exits_2_with_a_message_not_a_traceback(out, override, text):
    proc = gsae("harvest", *tiny(out), override)
    assert proc.returncode == 2, proc.stderr
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corpus_too_small_is_a_clear_error(out, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("just a few words here.\n\nand a second paragraph.\n")
    proc = gsae("harvest", *tiny(out), f"data.path={small}", "data.eval_every=1000")
    assert proc.returncode == 2 and "ran out" in proc.stderr and "Traceback" not in proc.stderr


def test_hub_model_not_cached_offline_says_how_to_provide_it(out):
    proc = gsae("harvest", f"out_dir={out}", "model=pythia-70m", "harvest.n_tokens=10")
    assert proc.returncode == 2
    assert "not in the local Hugging Face cache" in proc.stderr and "huggingface-cli download" in proc.stderr


@pytest.mark.slow
def test_harvest_default_model_offline(out):
    """The real SmolLM2-135M at the default hook: shape [n, 576], values finite, mid-size norms."""
    proc = gsae("harvest", f"out_dir={out}", "harvest.n_tokens=2540", "device=cpu", "--json", check=True)
    summary = json.loads(proc.stdout)
    s = store.open_store(summary["path"])
    assert (s.n_tokens, s.d_model) == (2540, 576)
    acts, _ = _arrays(summary["path"])
    assert torch.isfinite(acts.float()).all()
    assert summary["model"] == "smollm2-135m" and summary["hook"] == "blocks.12.hook_resid_pre"
    assert 1.0 < summary["norms"]["mean_norm"] < 1000.0
    assert np.isclose(summary["norms"]["mean_sq_norm"], acts.double().pow(2).sum(1).mean().item())


@pytest.mark.slow
def test_harvest_killed_inside_finish_completes_on_rerun(out):
    """All rows on disk but no completion marker (a kill between the last shard and COMPLETE)."""
    path = gsae("harvest", *tiny(out), check=True).stdout.strip().splitlines()[-1]
    before = _arrays(path)
    os.remove(os.path.join(path, "COMPLETE"))
    assert not store.is_complete(path)
    gsae("harvest", *tiny(out), check=True)
    after = _arrays(path)
    assert store.is_complete(path)
    assert torch.equal(before[0].view(torch.int16), after[0].view(torch.int16)) and torch.equal(before[1], after[1])


def test_a_per_head_hook_stores_one_flattened_row_per_position(out):
    proc = gsae("harvest", *tiny(out, "hook=blocks.1.attn.hook_z", "harvest.n_tokens=1016"), check=True)
    s = store.open_store(proc.stdout.strip().splitlines()[-1])
    assert s.d_model == 64  # 4 heads x d_head 16, flattened: the width the probe must report
