"""The default model's tokenizer takes its special tokens from the GGUF itself, not from whatever
the installed transformers version makes of the GGUF's metadata."""

from __future__ import annotations

import json
import shutil

import pytest

from gsae_cli.config import ModelConfig
from gsae_cli.lm import models


def test_gguf_special_token_ids_are_read_from_the_file():
    ids = models.gguf_special_token_ids(models._gguf_file(ModelConfig()))
    # SmolLM2-135M-Instruct: <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 (pad = eos)
    assert ids == {"bos_token": 1, "eos_token": 2, "unk_token": 0, "pad_token": 2}


def test_a_conversion_with_other_special_tokens_is_corrected_at_load(tmp_path, monkeypatch):
    real = models.prepare_gguf_model(ModelConfig())
    fake = tmp_path / "models" / "smollm2-135m"
    fake.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", models.SPECIAL_TOKENS_FILE):
        shutil.copy(real / name, fake / name)
    (fake / "model.safetensors").write_bytes(b"")  # only the tokenizer is loaded here
    # what transformers 5.17 made of the same GGUF: the document separator became <|im_start|>
    cfg = json.loads((fake / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|im_start|>"
    (fake / "tokenizer_config.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(models, "DATA_DIR", tmp_path)
    tok = models.load_tokenizer(ModelConfig())
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_a_conversion_without_the_record_is_redone(tmp_path, monkeypatch):
    fake = tmp_path / "models" / "smollm2-135m"
    fake.mkdir(parents=True)
    (fake / "config.json").write_text("{}")
    (fake / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(models, "DATA_DIR", tmp_path)

    class Converting(Exception):
        pass

    def gguf_file(cfg):  # the conversion's first step: reaching it proves the folder was not reused
        raise Converting

    monkeypatch.setattr(models, "_gguf_file", gguf_file)
    with pytest.raises(Converting):
        models.prepare_gguf_model(ModelConfig())


def test_a_sweep_keeps_the_loaded_model_for_its_next_member_and_lets_it_go_after():
    """Inside `keep_loaded` (every `-m` sweep) a repeated load returns the loaded model; another
    model config (here the tiny model's initialisation seed) loads anew and replaces it; outside
    a sweep, and after it, every load is a new model."""
    import torch

    from gsae_cli.config import compose_config

    cpu = torch.device("cpu")
    cfg = compose_config(["model=tiny"]).model
    other = compose_config(["model=tiny", f"model.init_seed={cfg.init_seed + 1}"]).model
    assert models.load_model(cfg, cpu) is not models.load_model(cfg, cpu)
    with models.keep_loaded():
        first = models.load_model(cfg, cpu)
        assert models.load_model(compose_config(["model=tiny"]).model, cpu) is first
        second = models.load_model(other, cpu)
        assert second is not first
        w1, w2 = (m.bridge.blocks[0].attn.q.weight for m in (first, second))  # another seed, other weights
        assert not torch.equal(w1, w2)
        assert models.load_model(cfg, cpu) is not first  # one entry: the first was let go
        kept = models.load_model(cfg, cpu)
        models.release()  # as training does
        assert models.load_model(cfg, cpu) is not kept
    assert models._last_loaded is None
