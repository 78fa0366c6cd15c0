"""Harvest throughput next to the bare forward pass to the same layer on the same batches, and
bytes on disk per stored activation value.

    .venv/bin/python bench/harvest.py [n_tokens] [overrides...]

Target: harvest >= 0.9x bare forward (zarr encoding and IO run on a background thread and
overlap the next forward pass instead of adding to it).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gsae_cli.config import compose_config  # noqa: E402
from gsae_cli.harvest.run import capture, run_harvest  # noqa: E402
from gsae_cli.lm.data import batched_windows, kept_positions, token_windows  # noqa: E402
from gsae_cli.lm.models import load_model, resolve_device  # noqa: E402


def main() -> None:
    n_tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 32_512
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"harvest.n_tokens={n_tokens}", f"out_dir={tmp}", *sys.argv[2:]])
        hc = cfg.harvest
        device = resolve_device(cfg.device)
        model = load_model(cfg.model, device)
        windows = token_windows(cfg.data, model.tokenizer, "train", hc.ctx_len, model.bos_token_id, model.eos_token_id)
        # the windows the harvest itself will run: each stores ctx_len - site_start rows
        n_windows = -(-n_tokens // (hc.ctx_len - kept_positions(hc.ctx_len, cfg.site_start).start))
        batches = list(batched_windows(itertools.islice(windows, n_windows), hc.batch_size))
        capture(model, batches[0], [cfg.hook])  # warm-up
        t = time.monotonic()
        for b in batches:
            capture(model, b, [cfg.hook])
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare = time.monotonic() - t
        bare_rate = n_tokens / bare
        del model
        result = run_harvest(cfg)[0]
        import json

        summary = json.loads((result.path / "summary.json").read_text())
        rate = summary["throughput"]["tokens_per_s"]
        act_bytes = sum(f.stat().st_size for f in (result.path / "activations").rglob("*") if f.is_file())
        d = summary["d_model"]
        print(f"device                  {device}")
        print(f"model / hook            {cfg.model.name} / {cfg.hook}  (batch {hc.batch_size} x ctx {hc.ctx_len})")
        print(f"tokens                  {n_tokens:,}  ({n_windows:,} windows, positions {cfg.site_start}.. stored)")
        print(f"bare forward to layer   {bare_rate:,.0f} tokens/s")
        print(f"harvest (incl. writes)  {rate:,.0f} tokens/s")
        print(f"harvest / bare          {rate / bare_rate:.3f}   (target >= 0.9)")
        print(f"bytes per value         {act_bytes / (n_tokens * d):.3f}   ({hc.dtype}, activations array)")


if __name__ == "__main__":
    main()
