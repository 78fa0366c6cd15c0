"""Activation stores on S3-compatible object storage (store_url=s3://bucket/prefix), against a real
S3 server on 127.0.0.1 (moto's standalone server; tests/s3server.py): harvest to it, train from it,
kill a harvest mid-upload and resume it, and compare everything with the same run on local disk.
Bad URLs and missing credentials get the usual one-paragraph error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import GSAE, TINY_HOOK, gsae, tiny
from s3server import s3_server
from safetensors.torch import load_file

from gsae_cli import store
from gsae_cli.config import compose_config, harvest_dir
from gsae_cli.core import storage
from gsae_cli.store import layout as store_layout

# several processes, object storage or a fresh install: end to end, minutes together
pytestmark = pytest.mark.slow

BUCKET = "gsae-test"


@pytest.fixture(scope="module")
def s3() -> dict:
    with s3_server(BUCKET) as env:
        yield env


def args(out: Path, *extra: str) -> list[str]:  # 16 shards of 256 rows
    return tiny(out, "harvest.chunk_rows=256", "harvest.shard_chunks=1", "threads=1", *extra)


def run_env(s3: dict) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **s3)


def assert_same_store(a, b) -> None:
    sa, sb = store.open_store(a), store.open_store(b)
    assert torch.equal(sa.read_rows(0, sa.n_tokens).view(torch.int16), sb.read_rows(0, sb.n_tokens).view(torch.int16))
    assert torch.equal(sa.read_tokens(0, sa.n_tokens), sb.read_tokens(0, sb.n_tokens))
    assert sa.attrs["norms"] == sb.attrs["norms"]


def test_harvest_to_s3_and_train_from_it_match_local_disk(tmp_path, s3):
    url = f"s3://{BUCKET}/round-trip"
    local = gsae("harvest", *args(tmp_path / "local"), check=True).stdout.strip().splitlines()[-1]
    remote = gsae("harvest", *args(tmp_path / "out", f"store_url={url}"), check=True)
    target = remote.stdout.strip().splitlines()[-1]
    assert target.startswith(f"{url}/tiny__"), target
    loc = storage.location(target)
    assert store.is_complete(loc) and (loc / "summary.json").is_file() and (loc / "config.yaml").is_file()
    assert not list((tmp_path / "out").glob("harvest/tiny__*/zarr.json")), "the store went to S3, not out_dir"
    assert_same_store(loc, Path(local))

    # training streams the store from S3 (prefetching chunks) and gives the same SAE bit for bit
    sae_local = gsae("train", *args(tmp_path / "local"), check=True).stdout.strip().splitlines()[-1]
    again = gsae("train", *args(tmp_path / "out", f"store_url={url}"), check=True)
    assert "reusing complete activation store s3://" in again.stderr
    sae_remote = again.stdout.strip().splitlines()[-1]
    wa, wb = load_file(Path(sae_local, "sae.safetensors")), load_file(Path(sae_remote, "sae.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # gsae ls lists the store where it is, with the SAE trained from it
    rows = json.loads(gsae("ls", f"out_dir={tmp_path / 'out'}", f"store_url={url}", "--json", check=True).stdout)
    stores = [r for r in rows if r["stage"] == "harvest"]
    assert [(r["path"], r["status"]) for r in stores] == [(target, "complete")] and stores[0]["size_bytes"] > 0
    assert [r["stage"] for r in rows if r["stage"] != "harvest"] == ["train"]


def test_a_harvest_killed_mid_upload_resumes_to_the_same_store(tmp_path, s3):
    url = f"s3://{BUCKET}/killed"
    over = args(tmp_path / "out", f"store_url={url}", "harvest.n_tokens=32512")  # 127 shards
    target = storage.location(str(harvest_dir(compose_config(over), TINY_HOOK)))
    progress = target / store_layout.PROGRESS_FILE
    proc = subprocess.Popen(
        [*GSAE, "harvest", *over], env=run_env(s3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600  # a hang guard only
    while proc.poll() is None and time.monotonic() < deadline and store.rows_written(target) == 0:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = store.rows_written(target)
    assert 0 < done < 32512 - 256 and not store.is_complete(target), f"the kill should land mid-harvest ({done} rows)"
    assert progress.is_file()
    # an upload that finished after the last progress record: on S3 it is whole or absent, never
    # half; plant one with the wrong bytes past the resume point: reopening deletes it
    stray = target / "activations" / "c" / str(done // 256 + 1) / "0"
    stray.write_bytes(b"not a shard")
    layout, _, created_with = store_layout.read_meta(target)
    store.StoreWriter.open(
        target,
        d_model=layout.d_model,
        n_tokens=layout.n_tokens,
        dtype=layout.dtype,
        chunk_rows=layout.chunk_rows,
        shard_chunks=layout.shard_rows // layout.chunk_rows,
        compressor=layout.compressor,
        attrs=created_with,
    ).close()
    assert not stray.exists() and store.rows_written(target) == done
    with pytest.raises(Exception, match="incomplete"):
        store.open_store(target)
    again = gsae("harvest", *over, check=True)
    assert f"resuming harvest at row {done:,}" in again.stderr
    local = gsae("harvest", *args(tmp_path / "local", "harvest.n_tokens=32512"), check=True)
    assert_same_store(target, Path(local.stdout.strip().splitlines()[-1]))


def test_force_rebuilds_a_store_on_s3(tmp_path, s3):
    over = args(tmp_path / "out", f"store_url=s3://{BUCKET}/forced")
    first = gsae("harvest", *over, check=True).stdout.strip().splitlines()[-1]
    loc = storage.location(first)
    (loc / "junk").write_text("left by someone")
    gsae("harvest", *over, "--force", check=True)
    assert store.is_complete(loc) and not (loc / "junk").exists()


@pytest.mark.parametrize(
    "override, env_change, expected",
    [
        ("store_url=s3://no-such-bucket/x", {}, "the bucket 'no-such-bucket' does not exist"),
        (
            f"store_url=s3://{BUCKET}/x",
            {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
            "no S3 credentials were found; set AWS_ACCESS_KEY_ID",
        ),
        (f"store_url=s3://{BUCKET}/x", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot be reached"),
        ("store_url=gs://bucket/x", {}, "not gs://"),
        ("store_url=s3:///x", {}, "names no bucket"),
        ("out_dir=s3://bucket/x", {}, "keep out_dir a path"),
    ],
)
def test_bad_urls_and_credentials_get_one_clear_error(tmp_path, s3, override, env_change, expected):
    env = run_env(s3) | env_change
    proc = subprocess.run(
        [*GSAE, "train", *args(tmp_path / "out"), override], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not list((tmp_path / "out").glob("*/tiny__*")), "nothing but lock files is left behind"


def test_two_harvest_ranks_write_one_s3_store_equal_to_one_process(tmp_path, s3):
    over = args(tmp_path / "out", f"store_url=s3://{BUCKET}/ranks", "harvest.world_size=2")
    ranks = [
        subprocess.Popen(
            [*GSAE, "harvest", *over, f"harvest.rank={r}"],
            env=run_env(s3),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (1, 0)
    ]  # rank 1 first: it waits for 0
    results = [p.communicate(timeout=600) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), [err[-2000:] for _, err in results]
    target = storage.location(str(harvest_dir(compose_config(over), TINY_HOOK)))
    assert store.is_complete(target)
    local = gsae("harvest", *args(tmp_path / "local"), check=True).stdout.strip().splitlines()[-1]
    assert_same_store(target, Path(local))
