"""How a store's squared norm is spread over its rows: whether a few rows (a few token types)
carry most of what an SAE's squared-error loss sees. Prints JSON.

    .venv/bin/python sweeps/site_norms.py outputs/harvest/STORE [--rows 200000] [--factor 10]

For the first --rows rows: the median, mean and RMS row norm; the rows whose norm exceeds
--factor x the median, their share of the rows and of the summed squared norm; and the tokens
those rows sit on (decoded with the store's model's tokenizer), most frequent first.
Exit status: 0, or 2 with one message when the store cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from gsae_cli.errors import GsaeError


def norm_spread(norms, tokens, factor: float) -> dict:
    """The summary above for row norms [n] and their token ids [n] (torch tensors)."""
    median = float(norms.median())
    big = norms > factor * median
    sq = norms.double().pow(2)
    return {
        "rows": int(norms.numel()),
        "median_norm": median,
        "mean_norm": float(norms.mean()),
        "rms_norm": float(sq.mean().sqrt()),
        "factor": factor,
        "rows_above": int(big.sum()),
        "share_of_rows": float(big.double().mean()),
        "share_of_squared_norm": float(sq[big].sum() / sq.sum()),
        "tokens_above": Counter(int(t) for t in tokens[big].tolist()).most_common(10),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--factor", type=float, default=10.0)
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    from gsae_cli.lm.models import load_tokenizer
    from gsae_cli.store import open_store

    try:
        store = open_store(args.store)
    except GsaeError as err:
        print(f"site_norms.py: {err}", file=sys.stderr)
        return 2
    n = min(args.rows, store.n_tokens)
    rows = store.read_rows(0, n).float()
    summary = norm_spread(rows.norm(dim=1), store.read_tokens(0, n), args.factor)
    tokenizer = load_tokenizer(OmegaConf.load(f"{args.store}/config.yaml").model)
    summary["tokens_above"] = [[t, repr(tokenizer.decode([t])), c] for t, c in summary["tokens_above"]]
    summary["store"] = str(args.store)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
