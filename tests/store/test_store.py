"""The activation store: round trips, append/truncation, resume after crashes (simulated and a
real SIGKILL), parameter checks, error propagation from the writer thread, reader errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gsae_cli import store as st
from gsae_cli.errors import ArtifactError, StoreError
from gsae_cli.store import StoreWriter, is_complete, layout, open_store, rows_written

REPO = Path(__file__).resolve().parents[2]

# Deterministic activations as a function of the row index, so that a resumed writer can
# regenerate exactly the rows it lost. Shared verbatim with the SIGKILL subprocess.
GEN_SRC = """
import torch
def gen_rows(start, k, d_model):
    r = torch.arange(start, start + k, dtype=torch.float64)[:, None]
    c = torch.arange(d_model, dtype=torch.float64)[None, :]
    return (torch.sin(r * 0.37 + c * 1.3) * (1 + (r % 7))).float()
def gen_tokens(start, k):
    return (torch.arange(start, start + k) * 7919) % 50257
"""
_gen: dict = {}
exec(GEN_SRC, _gen)
gen_rows, gen_tokens = _gen["gen_rows"], _gen["gen_tokens"]

ALL_DTYPES = ["float16", "float32", "bfloat16"]


def write_store(
    path, n, d, dtype, sizes=(37,), chunk_rows=16, shard_chunks=2, attrs=None, final=None, start=0, **kw
) -> StoreWriter:
    """Write rows [start, n) with appends cycling through `sizes`, then finish."""
    w = StoreWriter.open(path, d, n, dtype, chunk_rows, attrs or {"model": "m"}, shard_chunks=shard_chunks, **kw)
    pos, i = start, 0
    while pos < n:
        k = sizes[i % len(sizes)]
        w.append(gen_rows(pos, k, d), gen_tokens(pos, k))
        pos, i = pos + k, i + 1
    w.finish(final or {"norm": 1.5})
    return w


def bits(x: torch.Tensor) -> torch.Tensor:
    """Integer view of a float tensor, for bit-exact comparison."""
    return x.view({2: torch.int16, 4: torch.int32}[x.element_size()])


def assert_same_store(p1, p2):
    a, b = open_store(p1), open_store(p2)
    assert (a.n_tokens, a.d_model, a.dtype, a.attrs) == (b.n_tokens, b.d_model, b.dtype, b.attrs)
    assert torch.equal(bits(a.read_rows(0, a.n_tokens)), bits(b.read_rows(0, b.n_tokens)))
    assert torch.equal(a.read_tokens(0, a.n_tokens), b.read_tokens(0, b.n_tokens))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_is_bit_exact(tmp_path, dtype):
    n, d = 203, 12  # n not a multiple of the chunk or shard
    write_store(tmp_path / "s", n, d, dtype, sizes=(1, 50, 0, 9, 100), attrs={"model": "m", "hook": "h"})
    s = open_store(tmp_path / "s")
    tdt = getattr(torch, dtype)
    assert (s.n_tokens, s.d_model, s.dtype, s.chunk_rows, s.n_chunks) == (n, d, tdt, 16, 13)
    attrs = dict(s.attrs)
    norms = attrs.pop("norms")  # the writer's own row statistics, combined over shards
    assert attrs == {"model": "m", "hook": "h", "norm": 1.5}
    x = s.read_rows(0, n)
    sq = x.double().pow(2).sum(1)
    assert norms["count"] == n and norms["mean_sq_norm"] == pytest.approx(sq.mean().item(), rel=1e-12)
    assert norms["mean_norm"] == pytest.approx(sq.sqrt().mean().item(), rel=1e-12)
    assert norms["max_norm"] == pytest.approx(sq.max().sqrt().item(), rel=1e-12)
    assert x.dtype == tdt and x.shape == (n, d)
    assert torch.equal(bits(x), bits(gen_rows(0, n, d).to(tdt)))
    toks = s.read_tokens(0, n)
    assert toks.dtype == torch.int32 and torch.equal(toks, gen_tokens(0, n).int())
    assert torch.equal(bits(s.read_chunk(12)), bits(x[192:203]))
    assert torch.equal(bits(s.read_rows(17, 40)), bits(x[17:40]))
    if dtype == "bfloat16":  # raw bits on disk, the dtype recorded in the array's attributes
        meta = json.loads((tmp_path / "s" / "activations" / "zarr.json").read_text())
        assert meta["data_type"] == "uint16" and meta["attributes"]["dtype"] == "bfloat16"


def test_append_sizes_do_not_matter(tmp_path):
    n, d = 300, 5
    write_store(tmp_path / "one", n, d, "bfloat16", sizes=(n,))
    write_store(tmp_path / "ragged", n, d, "bfloat16", sizes=(1, 2, 31, 0, 64, 65, 3))
    write_store(tmp_path / "huge", n, d, "bfloat16", sizes=(1000,))  # one append past n_tokens
    assert_same_store(tmp_path / "one", tmp_path / "ragged")
    assert_same_store(tmp_path / "one", tmp_path / "huge")


def test_truncates_silently_at_n_tokens(tmp_path):
    d = 4
    w = StoreWriter.open(tmp_path / "s", d, 50, torch.float32, 16, {}, shard_chunks=2)
    w.append(gen_rows(0, 40, d), gen_tokens(0, 40))
    w.append(gen_rows(40, 40, d), gen_tokens(40, 40))
    assert w.rows_appended == 50
    w.append(gen_rows(80, 10, d), gen_tokens(80, 10))  # ignored
    w.finish({})
    s = open_store(tmp_path / "s")
    assert s.n_tokens == 50 and torch.equal(s.read_rows(0, 50), gen_rows(0, 50, d))
    assert w.complete and w.rows_written == 50


def test_layout_uses_zarr_sharding_and_optional_zstd(tmp_path):
    n, d = 100, 8
    for comp in ("none", "zstd"):
        write_store(tmp_path / comp, n, d, "bfloat16", chunk_rows=10, shard_chunks=3, compressor=comp)
        meta = json.loads((tmp_path / comp / "activations" / "zarr.json").read_text())
        codec = meta["codecs"][0]
        assert codec["name"] == "sharding_indexed"
        assert codec["configuration"]["chunk_shape"] == [10, d] and meta["chunk_grid"]["configuration"][
            "chunk_shape"
        ] == [30, d]
        inner = [c["name"] for c in codec["configuration"]["codecs"]]
        assert inner == (["bytes", "zstd", "crc32c"] if comp == "zstd" else ["bytes", "crc32c"])
        assert [c["name"] for c in codec["configuration"]["index_codecs"]][-1] == "crc32c"
        shards = sorted(p.name for p in (tmp_path / comp / "activations" / "c").iterdir())
        assert shards == ["0", "1", "2", "3"]  # one file per shard of 30 rows
    assert_same_store(tmp_path / "none", tmp_path / "zstd")


def test_default_shard_size_is_bounded_by_bytes():
    assert st.default_shard_chunks(576, "bfloat16", 8192) == 7  # 57344 rows, 63 MiB
    assert st.default_shard_chunks(2304, torch.bfloat16, 8192) == 1
    assert st.default_shard_chunks(4096, "float32", 8192) == 1  # one chunk even if it is larger
    assert st.default_shard_chunks(16, "float32", 1024) == 1024


# --------------------------------------------------------------------------- resume


def _write_partial(path, n, d, upto, sizes=(23,), **kw):
    """Append rows [0, upto) and stop as a crash would (no finish); returns rows_written."""
    w = StoreWriter.open(path, d, n, "bfloat16", 16, {"model": "m"}, shard_chunks=2, **kw)
    pos, i = 0, 0
    while pos < upto:
        k = min(sizes[i % len(sizes)], upto - pos)
        w.append(gen_rows(pos, k, d), gen_tokens(pos, k))
        pos, i = pos + k, i + 1
    w.flush()
    w.close()
    return w.rows_written


@pytest.mark.parametrize("n", [320, 333])  # the last shard full / short
def test_resume_after_simulated_crash_is_identical(tmp_path, n):
    d = 6
    write_store(tmp_path / "ref", n, d, "bfloat16")
    path = tmp_path / "s"
    done = _write_partial(path, n, d, upto=150)
    assert done == 128 and rows_written(path) == 128 and not is_complete(path)
    # Debris of a crash while writing the next shard (and the last one): garbage shard files,
    # a zarr temporary file, a half-written progress file.
    for shard in (4, (n - 1) // 32):
        (path / "activations" / "c" / str(shard)).mkdir(parents=True, exist_ok=True)
        (path / "activations" / "c" / str(shard) / "0").write_bytes(b"\x00garbage" * 7)
        (path / "tokens" / "c" / str(shard)).write_bytes(b"junk")
    (path / "activations" / "c" / "4" / "0.0123abcd.partial").write_bytes(b"half")
    (path / "progress.json.tmp").write_text('{"rows_wri')
    with pytest.raises(StoreError, match=rf"incomplete \(128 of {n} rows\)"):
        open_store(path)

    w = StoreWriter.open(path, d, n, "bfloat16", 16, {"model": "m"}, shard_chunks=2)
    assert w.rows_written == 128 and not w.complete
    assert not list(path.rglob("*.partial")) and not (path / "progress.json.tmp").exists()
    pos = w.rows_written
    for k in (5, 100, 1, 400):
        w.append(gen_rows(pos, k, d), gen_tokens(pos, k))
        pos += k
    w.finish({"norm": 1.5})
    assert_same_store(tmp_path / "ref", path)


def test_resume_when_killed_inside_finish(tmp_path):
    n, d = 100, 4
    write_store(tmp_path / "ref", n, d, "bfloat16")
    path = tmp_path / "s"
    assert _write_partial(path, n, d, upto=n) == n  # every shard written, no COMPLETE
    w = StoreWriter.open(path, d, n, "bfloat16", 16, {"model": "m"}, shard_chunks=2)
    assert w.rows_written == n and not w.complete
    w.append(gen_rows(0, 10, d), gen_tokens(0, 10))  # nothing left to take: ignored
    w.finish({"norm": 1.5})
    assert_same_store(tmp_path / "ref", path)
    again = StoreWriter.open(path, d, n, "bfloat16", 16, {"model": "m"}, shard_chunks=2)
    assert again.complete and again.rows_written == n
    again.finish({"norm": 99})  # a no-op on a complete store
    assert open_store(path).attrs["norm"] == 1.5


def test_resume_keeps_foreign_files_and_recreates_uninitialised_store(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "config.yaml").write_text("x: 1\n")  # the harvest artifact's own files live here too
    (path / "zarr.json").write_text("{trunc")  # died while creating the store: no progress.json
    write_store(path, 40, 3, "float16")
    assert (path / "config.yaml").read_text() == "x: 1\n"
    assert open_store(path).n_tokens == 40


SIGKILL_SCRIPT = (
    GEN_SRC
    + """
import sys, time
from gsae_cli.store import StoreWriter
path, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = StoreWriter.open(path, d, n, "bfloat16", 32, {"model": "m"}, shard_chunks=2)
pos = w.rows_written
while pos < n:
    k = 5 + pos % 11
    w.append(gen_rows(pos, k, d), gen_tokens(pos, k))
    pos += k
    time.sleep(0.002)
print("finished without being killed", flush=True)
"""
)


def test_sigkill_mid_harvest_then_resume_is_identical(tmp_path):
    n, d, shard = 6000, 8, 64
    path = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGKILL_SCRIPT, str(path), str(n), str(d)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 600  # a hang guard only, not a speed check (it takes ~1 s)
        while rows_written(path) < 5 * shard:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the writer subprocess hung"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = rows_written(path)
    assert 5 * shard <= done < n and done % shard == 0 and not is_complete(path)

    write_store(tmp_path / "ref", n, d, "bfloat16", sizes=(997,), chunk_rows=32, fsync=False)
    w = StoreWriter.open(path, d, n, "bfloat16", 32, {"model": "m"}, shard_chunks=2)
    assert w.rows_written == done
    pos = done
    while pos < n:
        w.append(gen_rows(pos, 1000, d), gen_tokens(pos, 1000))
        pos += 1000
    w.finish({"norm": 1.5})
    assert_same_store(tmp_path / "ref", path)


# --------------------------------------------------------------------------- errors


def test_reopen_with_other_parameters_is_refused(tmp_path):
    path = tmp_path / "s"
    _write_partial(path, 100, 4, upto=40)
    cases = [
        dict(d_model=5),
        dict(n_tokens=101),
        dict(dtype="float16"),
        dict(chunk_rows=8),
        dict(attrs={"model": "other"}),
        dict(attrs={"model": "m", "extra": 1}),
        dict(compressor="zstd"),
    ]
    for change in cases:
        kw = dict(d_model=4, n_tokens=100, dtype="bfloat16", chunk_rows=16, attrs={"model": "m"}, shard_chunks=2)
        kw.update(change)
        with pytest.raises(StoreError, match="--force") as e:
            StoreWriter.open(path, **kw)
        key = next(iter(change))
        assert (repr(key) if key == "attrs" else key) in str(e.value) or "attribute" in str(e.value)
    # the same parameters still resume
    assert StoreWriter.open(path, 4, 100, "bfloat16", 16, {"model": "m"}, shard_chunks=2).rows_written == 32


def test_nan_inf_and_bad_shapes_are_refused(tmp_path):
    d = 4
    w = StoreWriter.open(tmp_path / "s", d, 100, "float16", 16, {}, shard_chunks=2)
    w.append(gen_rows(0, 10, d), gen_tokens(0, 10))
    x = gen_rows(10, 20, d)
    x[3, 1] = float("nan")
    x[7, 0] = float("inf")
    with pytest.raises(StoreError, match=r"NaN or inf in 2 of the 20 rows.*first bad row 13"):
        w.append(x, gen_tokens(10, 20))
    big = gen_rows(10, 5, d) * 1e6  # finite in float32, overflows float16
    with pytest.raises(StoreError, match="overflow float16"):
        w.append(big, gen_tokens(10, 5))
    with pytest.raises(StoreError, match="d_model=4"):
        w.append(torch.zeros(5, 3), gen_tokens(10, 5))
    with pytest.raises(StoreError, match="d_model=4"):
        w.append(torch.zeros(2, 5, 4), gen_tokens(10, 10))
    with pytest.raises(StoreError, match="one token id per activation row"):
        w.append(gen_rows(10, 5, d), gen_tokens(10, 4))
    assert w.rows_appended == 10  # nothing from the refused calls
    w.append(gen_rows(10, 90, d), gen_tokens(10, 90))
    w.finish({})
    assert torch.equal(open_store(tmp_path / "s").read_rows(0, 100), gen_rows(0, 100, d).half())


def test_finish_before_n_tokens_is_refused(tmp_path):
    w = StoreWriter.open(tmp_path / "s", 4, 100, "float32", 16, {}, shard_chunks=2)
    w.append(gen_rows(0, 60, 4), gen_tokens(0, 60))
    with pytest.raises(StoreError, match="60 of 100 rows"):
        w.finish({})
    w.close()
    assert not is_complete(tmp_path / "s") and rows_written(tmp_path / "s") == 32


def test_writer_thread_error_reaches_the_caller(tmp_path, monkeypatch):
    real = StoreWriter._write_shard
    calls = []

    def failing(self, shard, acts, toks):
        calls.append(shard)
        if shard == 1:
            raise OSError(28, "No space left on device")
        real(self, shard, acts, toks)

    monkeypatch.setattr(StoreWriter, "_write_shard", failing)
    w = StoreWriter.open(tmp_path / "s", 4, 1000, "float32", 16, {}, shard_chunks=2)
    with pytest.raises(StoreError, match=r"No space left on device.*32 rows are safely on disk"):
        for pos in range(0, 1000, 10):  # fails on a later append, once the thread hit the error
            w.append(gen_rows(pos, 10, 4), gen_tokens(pos, 10))
            time.sleep(0.002)
    with pytest.raises(StoreError, match="No space left"):
        w.finish({})
    w.close()  # already reported: closes quietly
    assert rows_written(tmp_path / "s") == 32 and not is_complete(tmp_path / "s")
    assert 1 in calls and 3 not in calls  # after the error the queued shards are dropped, not written


def test_writer_thread_error_surfaces_in_flush(tmp_path, monkeypatch):
    def failing(self, shard, acts, toks):
        raise RuntimeError("boom")

    monkeypatch.setattr(StoreWriter, "_write_shard", failing)
    w = StoreWriter.open(tmp_path / "s", 4, 100, "float32", 16, {}, shard_chunks=2)
    w.append(gen_rows(0, 40, 4), gen_tokens(0, 40))
    with pytest.raises(StoreError, match="boom"):
        w.flush()


def test_open_store_errors_say_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="no activation store at .*gsae harvest"):
        open_store(tmp_path / "nothing")
    _write_partial(tmp_path / "part", 100, 4, upto=70)
    with pytest.raises(StoreError, match=r"incomplete \(64 of 100 rows\).*same `gsae harvest`.*--force"):
        open_store(tmp_path / "part")
    part = open_store(tmp_path / "part", allow_incomplete=True)
    assert part.rows_written == 64 and torch.equal(part.read_rows(0, 64), gen_rows(0, 64, 4).bfloat16())

    write_store(tmp_path / "gone", 100, 4, "float32")
    (tmp_path / "gone" / "activations" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError, match="corrupt.*missing"):
        open_store(tmp_path / "gone")

    write_store(tmp_path / "flip", 100, 4, "float32")
    f = tmp_path / "flip" / "tokens" / "c" / "2"
    f.write_bytes(f.read_bytes()[:-3] + b"xyz")  # damage the checksummed shard index
    s = open_store(tmp_path / "flip")
    with pytest.raises(
        st.DamagedStoreError,
        match=r"chunk 4 of its tokens \(rows 64-79, in the shard file "
        rf"{re.escape(str(f))}\) fails its crc32c checksum",
    ):
        s.read_tokens(64, 80)

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="readable activation store"):
        open_store(tmp_path / "bad")


# --------------------------------------------------------------------------- damaged chunks

# write_store's layout: 16-row chunks, 2 per shard file. An uncompressed chunk of d=4 bfloat16
# is 16 * 4 * 2 = 128 bytes + a 4-byte crc32c; the shard index (2 x (offset, length) uint64 +
# its crc32c) follows the chunks, so a shard file is 2 * 132 + 36 = 300 bytes.


def _damage_message(path, chunk, rows, shard_file, what):
    return (
        rf"The activation store at {re.escape(str(path))} is damaged: chunk {chunk} of its activations "
        rf"\(rows {rows}, in the shard file {re.escape(str(shard_file))}\) {what}.*"
        rf"rerun `gsae harvest --force` with the same overrides.*delete the directory {re.escape(str(path))}"
    )


@pytest.mark.parametrize("payload", [b"\x00" * 8, b"\x12\x34\x56\x78"], ids=["zeros", "garbage"])
def test_bytes_overwritten_in_the_middle_of_a_shard_name_the_damaged_chunk(tmp_path, payload):
    path = tmp_path / "s"
    write_store(path, 100, 4, "bfloat16")
    f = path / "activations" / "c" / "1" / "0"  # shard 1: rows 32-63, chunks 2 and 3
    raw = bytearray(f.read_bytes())
    assert len(raw) == 300
    raw[150 : 150 + len(payload)] = payload  # byte 150: inside the shard's second chunk (132-263)
    f.write_bytes(bytes(raw))
    s = open_store(path)  # opening is cheap and does not read chunks
    with pytest.raises(
        st.DamagedStoreError, match=_damage_message(path, 3, "48-63", f, "fails its crc32c checksum")
    ) as e:
        s.read_rows(40, 70)
    assert isinstance(e.value, ArtifactError) and e.value.exit_code == 2
    with pytest.raises(st.DamagedStoreError, match="chunk 3 "):
        s.verify()
    with pytest.raises(st.DamagedStoreError, match="chunk 3 "):
        s.read_chunk(3)
    # every other chunk, including the other one in the same shard file, still reads
    assert torch.equal(bits(s.read_rows(0, 48)), bits(gen_rows(0, 48, 4).bfloat16()))
    assert torch.equal(bits(s.read_rows(64, 100)), bits(gen_rows(64, 36, 4).bfloat16()))


@pytest.mark.parametrize(
    "dtype, value",
    [("bfloat16", float("nan")), ("float16", float("inf")), ("float32", float("-inf")), ("float32", float("nan"))],
)
def test_non_finite_values_on_disk_name_the_chunk(tmp_path, dtype, value):
    import zarr

    path = tmp_path / "s"
    write_store(path, 100, 4, dtype)
    arr = zarr.open_group(str(path), mode="r+")["activations"]  # bypasses append's own check
    if dtype == "bfloat16":  # stored as raw bits: NaN is 0x7FC0
        arr[50, 1] = arr[53, 3] = 0x7FC0
    else:
        arr[50, 1] = arr[53, 3] = value
    s = open_store(path)
    f = path / "activations" / "c" / "1" / "0"
    with pytest.raises(
        st.DamagedStoreError,
        match=_damage_message(
            path,
            3,
            "48-63",
            f,
            r"holds NaN or inf, which a harvest never writes, in 2 of the rows read "
            r"\(first: row 50\)",
        ),
    ):
        s.read_rows(0, 100)
    with pytest.raises(st.DamagedStoreError, match=r"in 1 of the rows read \(first: row 53\)"):
        s.read_rows(51, 60)
    assert s.read_rows(0, 50).shape == (50, 4) and s.read_rows(54, 100).shape == (46, 4)


def test_negative_token_ids_on_disk_name_the_chunk(tmp_path):
    import zarr

    path = tmp_path / "s"
    write_store(path, 100, 4, "bfloat16")
    zarr.open_group(str(path), mode="r+")["tokens"][70] = -1  # the fill of a chunk missing from its shard
    s = open_store(path)
    with pytest.raises(
        st.DamagedStoreError,
        match=rf"chunk 4 of its tokens \(rows 64-79, in the shard file "
        rf"{re.escape(str(path / 'tokens' / 'c' / '2'))}\) holds "
        r"negative token ids, which a harvest never writes \(first: row 70\)",
    ):
        s.read_tokens(60, 100)
    assert s.read_tokens(0, 70).tolist() == gen_tokens(0, 70).tolist()


def test_nonfinite_rows_on_hand_made_bits():
    bf16 = np.array(
        [
            [0x3F80, 0x7F7F],  # 1.0, the largest finite bfloat16
            [0xFF80, 0x0000],  # -inf
            [0x7FC1, 0x3F80],  # NaN
            [0xFF7F, 0x8000],
        ],  # -largest finite, -0.0
        dtype=np.uint16,
    )
    assert layout.nonfinite_rows(bf16, "bfloat16").tolist() == [1, 2]
    f16 = np.array([[0x7BFF, 0x7C00], [0xFBFF, 0x0001], [0xFE00, 0x0000]], dtype=np.uint16)
    assert layout.nonfinite_rows(f16, "float16").tolist() == [0, 2]  # inf; NaN
    f32 = np.array([[3.4e38, -3.4e38], [0.0, np.nan], [1.0, 2.0]], dtype=np.float32)
    assert layout.nonfinite_rows(f32, "float32").tolist() == [1]
    assert layout.nonfinite_rows(f32[[0, 2]], "float32") is None
    assert layout.nonfinite_rows(np.empty((0, 4), np.uint16), "bfloat16") is None


def test_cheap_helpers(tmp_path):
    path = tmp_path / "s"
    assert not is_complete(path) and rows_written(path) == 0 and st.store_info(path) is None
    _write_partial(path, 100, 4, upto=70)
    assert not is_complete(path) and rows_written(path) == 64
    info = st.store_info(path)
    assert info["complete"] is False and info["rows_written"] == 64 and info["n_tokens"] == 100
    write_store(path, 100, 4, "bfloat16", start=64)
    assert is_complete(path) and rows_written(path) == 100
    attrs = st.store_info(path)["attrs"]
    assert attrs.pop("norms")["count"] == 100  # statistics of the resumed store cover every row
    assert attrs == {"model": "m", "norm": 1.5}
    open_store(path).verify()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_all_zero_rows_and_token_ids_are_stored_not_mistaken_for_missing_shards(tmp_path, dtype):
    """zarr omits chunks equal to the fill value; zeros must still read back as a complete store."""
    w = StoreWriter.open(tmp_path / "z", d_model=4, n_tokens=64, dtype=dtype, chunk_rows=16, shard_chunks=1)
    w.append(torch.zeros(64, 4), torch.zeros(64, dtype=torch.int32))
    w.finish({})
    w.close()
    s = open_store(tmp_path / "z")
    assert torch.equal(s.read_rows(0, 64).float(), torch.zeros(64, 4))
    assert torch.equal(s.read_tokens(0, 64), torch.zeros(64, dtype=torch.int32))


def test_two_writers_fill_one_store_like_one_writer_and_the_last_completes_it(tmp_path):
    n, d = 203, 12  # 7 shards of 32 rows (chunk 16 x 2): rank 0 owns 0,2,4,6 and rank 1 owns 1,3,5
    one = write_store(tmp_path / "one", n, d, "bfloat16")
    assert one.complete
    w0 = StoreWriter.open(tmp_path / "two", d, n, "bfloat16", 16, {"model": "m"}, shard_chunks=2, rank=0, world_size=2)
    w1 = StoreWriter.open(tmp_path / "two", d, n, "bfloat16", 16, {"model": "m"}, shard_chunks=2, rank=1, world_size=2)
    assert (w0.next_row, w1.next_row) == (0, 32)
    assert w0.owned_rows(0, n) == 32 * 3 + (n - 192) and w1.owned_rows(0, n) == 96
    last = 200  # rows 200-202 end rank 0's short shard 6: held back, rank 0 cannot be done early
    for start in range(0, n, 50):  # both see every block, in order; each keeps its own shards
        k = min(50, n - start)
        for w in (w0, w1):
            if w.needs(start, start + k) and (w, start) != (w0, last):
                w.append_at(start, gen_rows(start, k, d), gen_tokens(start, k))
    debris = tmp_path / "two" / "activations" / "c" / "9.partial"  # a killed rank's half-written file
    debris.parent.mkdir(parents=True, exist_ok=True)
    debris.write_bytes(b"x")
    assert w1.finish({"norm": 1.5}) is False and not is_complete(tmp_path / "two")  # rank 0 not done
    w0.append_at(last, gen_rows(last, n - last, d), gen_tokens(last, n - last))
    w0.flush()  # every row is on disk now, yet the store is complete only once rank 0 finishes
    assert rows_written(tmp_path / "two") == n and not is_complete(tmp_path / "two")
    assert w0.finish({"norm": 1.5}) is True and is_complete(tmp_path / "two")
    assert not debris.exists()
    assert_same_store(tmp_path / "one", tmp_path / "two")
    assert open_store(tmp_path / "two").attrs["norms"] == open_store(tmp_path / "one").attrs["norms"]
