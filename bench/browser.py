"""Cost of `gsae inspect` against `gsae eval` for one SAE on the same held-out text.

    .venv/bin/python bench/browser.py [--sae DIR] [--threads N] [OVERRIDES...]

Timed on the default eval text of the config (eval.n_tokens; model loading is not timed):
- eval set: the clean and zero-ablated passes both stages start from (shared, cached once per site);
- eval: the SAE's metrics on it (spliced pass, KL, per-window sums, bootstrap intervals);
- inspect: the SAE's feature data (sparse activations, top and quantile examples, histograms,
  logit effects, decoder neighbours) and the browser's pages (every shard written).
Target: inspect <= eval, both from an empty outputs folder (eval set + stage) and with the eval
set cached (stage alone). Without --sae, the newest gated SAE under out_dir/train at the
config's model and hook is used (inspect's cost depends on how sparse the SAE is).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gsae_cli.config import compose_config, out_dir  # noqa: E402
from gsae_cli.evaluate.evalset import build_for_config  # noqa: E402
from gsae_cli.evaluate.measure import evaluate  # noqa: E402
from gsae_cli.evaluate.splice import unembed_affine  # noqa: E402
from gsae_cli.inspect.dashboard import feature_data, final_norm, page_settings  # noqa: E402
from gsae_cli.inspect.webpages import write_browser  # noqa: E402
from gsae_cli.lm.models import load_model, resolve_device, validate_hooks  # noqa: E402
from gsae_cli.saes.io import load_sae, read_sae_meta  # noqa: E402


def newest_sae(cfg) -> Path:
    found = []
    for d in (out_dir(cfg) / "train").glob("*__gated__*"):
        try:
            meta = read_sae_meta(d)
        except Exception:  # noqa: BLE001 - unfinished runs have no sae.json
            continue
        if meta.get("model") == cfg.model.name and meta.get("hook") == cfg.hook:
            found.append((d.stat().st_mtime, d))
    if not found:
        sys.exit(f"no trained gated SAE for {cfg.model.name} at {cfg.hook} under {out_dir(cfg)}/train; pass --sae DIR")
    return max(found)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", default=None, help="an SAE directory (default: the newest gated SAE of the config)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. eval.n_tokens=32512")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(args.overrides)
    sae_dir = Path(args.sae) if args.sae else newest_sae(cfg)
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    validate_hooks(model, [cfg.hook])
    sae = load_sae(sae_dir, device)
    meta = read_sae_meta(sae_dir)

    t0 = time.perf_counter()
    es = build_for_config(cfg, model)
    t_set = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluate(
        model,
        sae,
        es,
        batch_size=cfg.eval.batch_size,
        bootstrap_samples=cfg.eval.bootstrap_samples,
        bootstrap_seed=cfg.eval.bootstrap_seed,
    )
    t_eval = time.perf_counter() - t0

    W_U = unembed_affine(model.bridge)[0]
    info = {
        "model": cfg.model.name,
        "hook": cfg.hook,
        "label": f"{meta.get('architecture')} SAE",
        "site_tokens": 0,
        "settings": page_settings(cfg),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = feature_data(sae, es, W_U, final_norm(model.bridge), cfg.inspect, device)
        t_feat = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_browser(Path(tmp), data, info, model.tokenizer)
        t_pages = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        shards = sorted((Path(tmp) / "data").glob("shard-*.js"))
        shard_kb = max(p.stat().st_size for p in shards) / 1024
        first_kb = sum((Path(tmp) / "data" / n).stat().st_size for n in ("index.js", "text.js")) / 1024
    t_inspect = t_feat + t_pages
    n_site = data.n_site_rows
    print(
        f"SAE: {sae_dir} ({meta.get('architecture')}, d_sae={sae.d_sae}); {es.n_windows} windows, "
        f"{n_site:,} site tokens; {torch.get_num_threads()} threads, device {device}"
    )
    print(f"eval set (shared)       {t_set:7.2f} s")
    print(f"eval (cached set)       {t_eval:7.2f} s")
    print(f"inspect (cached set)    {t_inspect:7.2f} s  (features {t_feat:.2f} s, pages {t_pages:.2f} s)")
    print(f"from empty: eval {t_set + t_eval:.2f} s, inspect {t_set + t_inspect:.2f} s")
    print(
        f"inspect / eval: {t_inspect / t_eval:.2f} with the eval set cached, "
        f"{(t_set + t_inspect) / (t_set + t_eval):.2f} from empty (target <= 1)"
    )
    print(
        f"browser size {size / 2**20:.1f} MiB; first load (index + text) {first_kb:.0f} KiB; "
        f"largest shard {shard_kb:.0f} KiB ({cfg.inspect.shard_features} features)"
    )


if __name__ == "__main__":
    main()
