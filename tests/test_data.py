"""Packing, BOS exclusion and the train/eval split, on hand-made inputs."""

import json

import pytest
import torch

from gsae_cli.config import compose_config
from gsae_cli.data import batched_windows, iter_documents, kept_positions, pack_windows
from gsae_cli.errors import ConfigError

BOS, EOS = 1, 2


def test_pack_windows_concatenates_documents_with_eos_and_starts_each_window_with_bos():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
    # stream: 10 11 12 E 20 21 E 30 31 32 33 34 E  (13 tokens); body = ctx_len - 1 = 4
    windows = list(pack_windows(docs, ctx_len=5, bos=BOS, eos=EOS))
    assert windows == [
        [BOS, 10, 11, 12, EOS],
        [BOS, 20, 21, EOS, 30],
        [BOS, 31, 32, 33, 34],
    ]  # the trailing [EOS] is a partial window and is dropped


def test_pack_windows_splits_a_long_document_across_windows():
    windows = list(pack_windows([list(range(100, 107))], ctx_len=3, bos=BOS, eos=EOS))
    assert windows == [[BOS, 100, 101], [BOS, 102, 103], [BOS, 104, 105], [BOS, 106, EOS]]


def test_kept_positions_excludes_only_the_bos_position():
    window = torch.tensor([[BOS, 5, 6, 7]])
    assert window[:, kept_positions(4, exclude_bos=True)].tolist() == [[5, 6, 7]]
    assert window[:, kept_positions(4, exclude_bos=False)].tolist() == [[BOS, 5, 6, 7]]


def test_batched_windows_keeps_the_tail():
    batches = list(batched_windows([[1, 2]] * 5, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    assert batches[0].dtype == torch.long


def test_train_and_eval_splits_are_disjoint_and_cover_the_corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(50)))
    cfg = compose_config([f"data.path={path}", "data.eval_every=10"])
    train = list(iter_documents(cfg.data, "train"))
    held = list(iter_documents(cfg.data, "eval"))
    assert held == [f"document number {i}" for i in (0, 10, 20, 30, 40)]
    assert len(train) == 45 and not set(train) & set(held)


def test_missing_text_field_is_a_clear_config_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    cfg = compose_config([f"data.path={path}", "data.eval_every=2"])
    with pytest.raises(ConfigError, match="data.text_field"):
        list(iter_documents(cfg.data, "eval"))


def test_missing_local_path_is_a_clear_config_error(tmp_path):
    cfg = compose_config([f"data.path={tmp_path / 'nope.txt'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        list(iter_documents(cfg.data, "train"))


def test_default_corpus_is_real_english_and_large():
    from gsae_cli.data import default_corpus_path, materialise_default_corpus

    path = materialise_default_corpus()
    assert path == default_corpus_path()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 1000
    text = " ".join(json.loads(ln)["text"] for ln in lines)
    assert len(text) > 4_000_000  # ~1.1M tokens of the default tokenizer
    assert "In the beginning God created the heavens and the earth." in text
    assert "1:1" not in text[:2000]  # verse references stripped
