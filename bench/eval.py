"""Evaluation cost relative to one bare forward pass of the model on the same tokens.

    .venv/bin/python bench/eval.py [--n-tokens 2048] [--sae DIR] [--method auto|full] [OVERRIDES...]

Times `gsae_cli.evaluate.evaluate_batches` (clean, SAE-spliced and zero-ablated passes plus all
metrics) on already-tokenised held-out batches, and one plain `bridge(tokens)` forward over the
same batches; model loading and tokenising are not timed. Target: ratio <= 3.2 (three passes
would be 3.0 if each were a full forward; the spliced and ablated passes restart at the hook's
block). Without --sae, a freshly initialised SAE of the configured architecture is used (its
weights do not change the cost). Both timings follow one untimed warm-up batch; they are interleaved and the best of
--repeats is reported for each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gsae_cli.config import compose_config  # noqa: E402
from gsae_cli.data import batched_windows  # noqa: E402
from gsae_cli.evaluate import eval_windows, evaluate_batches  # noqa: E402
from gsae_cli.models import load_model, resolve_device, validate_hooks  # noqa: E402
from gsae_cli.sae_io import load_sae  # noqa: E402
from gsae_cli.saes import build_sae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-tokens", type=int, default=2048, help="CE positions to evaluate (default 2048)")
    ap.add_argument("--sae", default=None, help="an SAE directory (default: a fresh SAE of the config)")
    ap.add_argument("--method", default="auto", choices=["auto", "from_layer", "full"])
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed repetitions, bare and eval interleaved; the best of each is reported "
                         "(robust to other load on a shared machine)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. hook=blocks.6.hook_resid_pre")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config([*args.overrides, f"eval.n_tokens={args.n_tokens}"])
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    validate_hooks(model, [cfg.hook])
    if args.sae:
        sae = load_sae(args.sae, device)
    else:
        options = {"tie_weights": cfg.sae.tie_weights, "aux_loss": cfg.sae.aux_loss,
                   "freeze_aux_decoder": cfg.sae.freeze_aux_decoder} if cfg.sae.name == "gated" else {}
        sae = build_sae(cfg.sae.name, model.d_model, cfg.sae.expansion_factor * model.d_model,
                        **options).to(device).eval()
    batches = [b.to(device) for b in batched_windows(eval_windows(cfg, model), cfg.eval.batch_size)]
    n_tokens = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> None:
        with torch.no_grad():
            for b in batches:
                model.bridge(b, return_type="logits")

    def evaluate() -> dict:
        return evaluate_batches(model, sae, cfg.hook, batches, method=args.method)

    # warm-up (allocator, lazy init) on one batch, untimed
    with torch.no_grad():
        model.bridge(batches[0], return_type="logits")
    evaluate_batches(model, sae, cfg.hook, batches[:1], method=args.method)

    def timed(fn) -> tuple[float, float, object]:
        """(wall s, this process's CPU s, result). CPU time is a second opinion that other
        processes competing for the cores inflate much less than wall time."""
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        return time.perf_counter() - w0, time.process_time() - c0, result

    best = {"bare": (float("inf"), float("inf")), "eval": (float("inf"), float("inf"))}
    out: dict = {}
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("eval", evaluate)):
            wall, cpu, result = timed(fn)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            if name == "eval":
                out = result  # type: ignore[assignment]
    (t_bare, c_bare), (t_eval, c_eval) = best["bare"], best["eval"]

    print(f"model={cfg.model.name} hook={cfg.hook} device={device} batches={len(batches)}x"
          f"{cfg.eval.batch_size}x{cfg.eval.ctx_len} tokens={n_tokens} patched passes={out['method']}")
    print(f"bare forward: {t_bare:8.3f} s wall  {c_bare:8.3f} s cpu  ({n_tokens / t_bare:,.0f} tokens/s)")
    print(f"evaluation:   {t_eval:8.3f} s wall  {c_eval:8.3f} s cpu  ({n_tokens / t_eval:,.0f} tokens/s)")
    print(f"ratio:        {t_eval / t_bare:8.2f} wall  {c_eval / c_bare:8.2f} cpu  (target <= 3.2)")


if __name__ == "__main__":
    main()
