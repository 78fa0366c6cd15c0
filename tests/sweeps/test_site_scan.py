"""sweeps/site_scan.py: the zero-ablation scan that chooses the attention and MLP sites."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gsae_cli.config import compose_config
from gsae_cli.evaluate.evalset import select_windows
from gsae_cli.lm.models import load_model

SCRIPT = Path(__file__).resolve().parents[2] / "sweeps" / "site_scan.py"
TINY = ["model=tiny", "eval.n_tokens=508", "device=cpu"]  # 4 windows of 128


def _module():
    spec = importlib.util.spec_from_file_location("site_scan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_parse_blocks():
    parse = _module().parse_blocks
    assert parse("2-4") == [2, 3, 4]
    assert parse("12") == [12]
    assert parse("24, 3,10-11,3") == [3, 10, 11, 24]
    for bad in ("4-2", "a", "2-", "1,,2"):
        with pytest.raises(ValueError, match="--blocks"):
            parse(bad)


@pytest.mark.slow
def test_scan_gives_the_hand_computed_ce_increase_and_ranks_blocks(tmp_path: Path):
    out = tmp_path / "scan.json"
    proc = _run("--blocks", "1-2", "--confirm-tokens", "1016", "--json", str(out), *TINY, f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    screen = result["screen"]
    assert [r["hook"] for r in screen["rows"]] == [
        f"blocks.{b}.{s}" for b in (1, 2) for s in ("attn.hook_z", "hook_mlp_out")
    ]

    # Independently: full forwards over the eval's windows, zeros at positions 4.. (site_start),
    # CE over every next-token prediction, as loss recovered's denominator counts them.
    cfg = compose_config([*TINY, f"out_dir={tmp_path}"])
    model = load_model(cfg.model, torch.device("cpu"))
    windows, _, _ = select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)

    def ce(hooks) -> float:
        with torch.no_grad():
            logits = model.bridge.run_with_hooks(windows, return_type="logits", fwd_hooks=hooks)
        return float(F.cross_entropy(logits[:, :-1].flatten(0, 1).double(), windows[:, 1:].flatten()))

    def zero(act, hook):
        act = act.clone()
        act[:, 4:] = 0
        return act

    clean = ce([])
    assert screen["ce_clean"] == pytest.approx(clean, abs=1e-5)
    assert screen["n_windows"] == 4 and screen["first"] == 4
    delta = {}
    for row in screen["rows"]:
        delta[row["hook"]] = ce([(row["hook"], zero)]) - clean
        assert row["delta_ce"] == pytest.approx(delta[row["hook"]], abs=1e-5)
        assert row["ci"][0] <= row["delta_ce"] <= row["ci"][1]
    smaller = {b: min(delta[f"blocks.{b}.attn.hook_z"], delta[f"blocks.{b}.hook_mlp_out"]) for b in (1, 2)}
    for b in (1, 2):
        block = screen["blocks"][str(b)]
        assert block["min_delta_ce"] == pytest.approx(smaller[b], abs=1e-5)
        assert block["ci"][0] <= block["min_delta_ce"] <= block["ci"][1]
    assert screen["ranked"] == sorted(smaller, key=lambda b: -smaller[b])
    assert f"{smaller[1]:.4f}" in proc.stdout and f"{smaller[2]:.4f}" in proc.stdout  # the printed table

    # The second stage re-measures exactly the blocks whose interval reaches the best one's.
    best = screen["blocks"][str(screen["ranked"][0])]
    contenders = [b for b in screen["ranked"] if screen["blocks"][str(b)]["ci"][1] >= best["ci"][0]]
    if len(contenders) > 1:
        assert result["confirm"]["n_windows"] == 8
        assert sorted(result["confirm"]["ranked"]) == sorted(contenders)
        assert result["chosen"] == result["confirm"]["ranked"][0]
    else:
        assert result["confirm"] is None and result["chosen"] == screen["ranked"][0]
    assert f"chosen: block {result['chosen']}" in proc.stdout


def test_contenders_are_the_blocks_whose_interval_reaches_the_best():
    stage = {
        "ranked": [24, 2, 21],
        "blocks": {"24": {"ci": [0.17, 0.23]}, "2": {"ci": [0.16, 0.24]}, "21": {"ci": [0.10, 0.14]}},
    }
    assert _module().contenders(stage) == [24, 2]
    stage["blocks"]["21"]["ci"] = [0.10, 0.17]  # touching the best's lower end counts
    assert _module().contenders(stage) == [24, 2, 21]


def test_bad_blocks_and_unknown_hooks_are_one_message_and_exit_2(tmp_path: Path):
    proc = _run("--blocks", "5-3", *TINY)
    assert proc.returncode == 2 and "the range 5-3 is empty" in proc.stderr
    proc = _run("--blocks", "1", "--confirm-tokens", "-5", *TINY)
    assert proc.returncode == 2 and "--confirm-tokens -5" in proc.stderr
    proc = _run("--blocks", "7", *TINY, f"out_dir={tmp_path}")
    assert proc.returncode == 2
    assert "Unknown hook blocks.7.attn.hook_z" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("--blocks", "1", "model=nope")
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_one_clean_pass_for_all_hooks_equals_an_eval_set_per_hook(tmp_path: Path):
    """zero_ablation_nll (the scan's passes) gives exactly build_evalset's nll_clean and nll_zero,
    for hooks inside blocks, at a block's entry and on the full-forward path."""
    from gsae_cli.evaluate.evalset import build_evalset, zero_ablation_nll

    cfg = compose_config([*TINY, f"out_dir={tmp_path}"])
    model = load_model(cfg.model, torch.device("cpu"))
    windows, _, _ = select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)
    hooks = ["blocks.1.attn.hook_z", "blocks.2.hook_mlp_out", "blocks.1.hook_resid_pre"]
    for method in ("auto", "full"):
        with torch.no_grad():
            clean, zero = zero_ablation_nll(model, hooks, windows, 4, batch_size=3, method=method)
            for hook in hooks:
                es = build_evalset(model, hook, windows, 4, batch_size=3, method=method, kl_mode="logits")
                assert torch.equal(clean, es.nll_clean), (method, hook)
                assert torch.equal(zero[hook], es.nll_zero), (method, hook)
                assert (zero[hook] > clean).any()  # the ablation did something
