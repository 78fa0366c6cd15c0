"""How much each block's attention and MLP outputs matter to the loss: the rule that chose
round 4's attention and MLP sites (docs/results/round4.md; docs/method.md, "Choosing a site").

    .venv/bin/python sweeps/site_scan.py                       # blocks 2-27 of the default model
    .venv/bin/python sweeps/site_scan.py --blocks 1-2 --confirm-tokens 1016 --json scan.json \
        model=tiny eval.n_tokens=508

Loss recovered is (CE_zero - CE_spliced) / (CE_zero - CE_clean). Where zero-ablating a site
barely raises the loss, the denominator is small and the metric's interval over windows swamps
any difference between SAEs (block 12's attention output of SmolLM2-135M: 0.04 nats). So a site
is chosen by that denominator alone, before any SAE exists, which cannot favour an architecture:
per block, the smaller of its two sublayers' CE increases; the block where that is largest wins.

Each figure is `gsae eval`'s own: `ce_zero_ablation - ce_clean` of the eval set that
`build_evalset` would make for the hook (the eval's held-out windows for the given overrides, zeros
at positions site_start.., every next-token prediction of the window counted; computed by
`zero_ablation_nll`, the same passes with one clean forward for all hooks), with a 95 %
bootstrap interval over windows (the block's smaller effect is bootstrapped jointly, both
sublayers on the same resampled windows). Two stages:
  1. screen: every block on eval.n_tokens (4064, 32 windows of 128, unless an override gives it);
  2. confirm: the blocks whose interval reaches the best block's are measured again on
     --confirm-tokens (default 32512: the reproduction's 256 eval windows), and the largest there
     wins. --confirm-tokens 0 skips it.
Exit status: 0, or 2 with one message for bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# the attention output before W_O (the heads' concatenated outputs, the paper's attention site)
# and the MLP output; zeroing either zeroes what its sublayer adds to the residual stream
# (where W_O has no bias, as in Llama-style models)
SUBLAYERS = ("attn.hook_z", "hook_mlp_out")
SCREEN_TOKENS = 4064
CONFIRM_TOKENS = 32512


def parse_blocks(text: str) -> list[int]:
    """'2-27' or '3,12,24' (or a mix) as a sorted list of block numbers."""
    blocks: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"--blocks {text!r}: give numbers and ranges, e.g. 2-27 or 3,12,24")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"--blocks {text!r}: the range {part} is empty")
        blocks.update(range(first, last + 1))
    return sorted(blocks)


def measure(cfg, model, blocks: list[int]) -> dict:
    """One stage: both sublayers of every block on the eval windows of `cfg`, with intervals."""
    import torch

    from gsae_cli.core.progress import track
    from gsae_cli.evaluate.evalset import first_spliced, select_windows, zero_ablation_nll
    from gsae_cli.evaluate.metrics import bootstrap_indices, percentile_interval

    windows, _, total = select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)
    index = bootstrap_indices(windows.shape[0], cfg.eval.bootstrap_samples, cfg.eval.bootstrap_seed)
    hooks = [f"blocks.{b}.{s}" for b in blocks for s in SUBLAYERS]
    with torch.no_grad(), track(f"scan ({len(hooks)} sites)", windows.shape[0], "windows") as bar:
        nll_clean, nll_zero = zero_ablation_nll(
            model,
            hooks,
            windows,
            first_spliced(cfg),  # one clean pass
            batch_size=cfg.eval.batch_size,
            advance=bar.advance,
        )
    predictions = windows.shape[1] - 1
    # CE increase from zeroing each site, per window, in nats per next-token prediction
    effects = {h: (nll_zero[h] - nll_clean) / predictions for h in hooks}
    rows = []
    for hook in hooks:
        lo, hi = percentile_interval(effects[hook][index].mean(dim=1))
        rows.append({"hook": hook, "delta_ce": float(effects[hook].mean()), "ci": [lo, hi]})
        print(f"{hook}: {rows[-1]['delta_ce']:.4f} nats ({windows.shape[0]} windows)", file=sys.stderr, flush=True)
    by_block = {}
    for b in blocks:
        pair = torch.stack([effects[f"blocks.{b}.{s}"] for s in SUBLAYERS])  # [2, n_windows]
        lo, hi = percentile_interval(pair[:, index].mean(dim=2).min(dim=0).values)
        by_block[b] = {"min_delta_ce": float(pair.mean(dim=1).min()), "ci": [lo, hi]}
    ranked = sorted(blocks, key=lambda b: -by_block[b]["min_delta_ce"])
    return {
        "n_windows": int(windows.shape[0]),
        "held_out_windows": total,
        "first": first_spliced(cfg),
        "ce_clean": float(nll_clean.sum() / (windows.shape[0] * predictions)),
        "rows": rows,
        "blocks": {str(b): by_block[b] for b in blocks},
        "ranked": ranked,
    }


def contenders(stage: dict) -> list[int]:
    """The best block and every block whose smaller effect's interval reaches the best one's."""
    best = stage["blocks"][str(stage["ranked"][0])]
    return [b for b in stage["ranked"] if stage["blocks"][str(b)]["ci"][1] >= best["ci"][0]]


def scan(overrides: list[str], blocks: list[int], confirm_tokens: int) -> dict:
    from gsae_cli.config import compose_config
    from gsae_cli.lm.models import load_model, resolve_device, validate_hooks

    if not any(o.split("=", 1)[0].lstrip("+~") == "eval.n_tokens" for o in overrides):
        overrides = [f"eval.n_tokens={SCREEN_TOKENS}", *overrides]
    cfg = compose_config(overrides)
    model = load_model(cfg.model, resolve_device(cfg.device))
    validate_hooks(model, [f"blocks.{b}.{s}" for b in blocks for s in SUBLAYERS])
    result = {"model": cfg.model.name, "screen": measure(cfg, model, blocks), "confirm": None}
    finalists = contenders(result["screen"])
    if confirm_tokens and len(finalists) > 1:
        cfg.eval.n_tokens = confirm_tokens
        result["confirm"] = measure(cfg, model, finalists)
    result["chosen"] = (result["confirm"] or result["screen"])["ranked"][0]
    return result


def print_table(model: str, stage: dict, title: str) -> None:
    rows = {r["hook"]: r for r in stage["rows"]}
    print(
        f"{model}, {title}: CE increase from zero-ablating each sublayer (nats per prediction), "
        f"{stage['n_windows']} held-out windows, clean CE {stage['ce_clean']:.4f}"
    )
    print(f"{'block':>5}  {'attn.hook_z [95% CI]':>26}  {'hook_mlp_out [95% CI]':>26}  {'smaller [95% CI]':>26}")
    for b in stage["ranked"]:
        cells = [rows[f"blocks.{b}.{s}"] for s in SUBLAYERS]
        block = stage["blocks"][str(b)]
        text = [f"{c['delta_ce']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}]" for c in cells]
        text.append(f"{block['min_delta_ce']:.4f} [{block['ci'][0]:.4f}, {block['ci'][1]:.4f}]")
        print(f"{b:>5}  {text[0]:>26}  {text[1]:>26}  {text[2]:>26}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", default="2-27", help="blocks to scan: a range and/or list (default 2-27)")
    ap.add_argument(
        "--confirm-tokens",
        type=int,
        default=CONFIRM_TOKENS,
        help=f"eval tokens for the second stage (default {CONFIRM_TOKENS}; 0 skips it)",
    )
    ap.add_argument("--json", type=Path, help="also write the result as JSON here")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for gsae eval (model=..., data=...)")
    args = ap.parse_args(argv)
    from gsae_cli.errors import GsaeError

    try:
        blocks = parse_blocks(args.blocks)
        if args.confirm_tokens < 0:
            raise ValueError(f"--confirm-tokens {args.confirm_tokens}: give 0 (no second stage) or more")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = scan(args.overrides, blocks, args.confirm_tokens)
    except GsaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print_table(result["model"], result["screen"], "screen")
    if result["confirm"]:
        print()
        print_table(result["model"], result["confirm"], "confirm (the screen's contenders)")
    print(f"\nchosen: block {result['chosen']}")
    if args.json:
        from gsae_cli.core.artifacts import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
