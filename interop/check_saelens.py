"""Check `gsae export --format saelens` with SAELens itself (issue 24): train one small SAE of
every architecture on the default model's activations, export each, and have SAELens, in its own
virtualenv, load the folder and encode and decode real activations; its features and
reconstruction must match gsae's to a max relative difference below 1e-5, its active sets
exactly.

    .venv/bin/python interop/check_saelens.py SAELENS_PYTHON [--out DIR]

(interop/saelens.sh makes SAELens's virtualenv and runs this.) Prints a table; exits 1 if any
architecture disagrees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from gsae_cli import store  # noqa: E402
from gsae_cli.config import compose_config  # noqa: E402
from gsae_cli.export import run_export  # noqa: E402
from gsae_cli.harvest.run import run_harvest  # noqa: E402
from gsae_cli.saes.io import load_sae  # noqa: E402
from gsae_cli.train.trainer import run_train  # noqa: E402

ARCHS = ["relu", "gated", "rescale_shift", "scaled_relu", "jumprelu", "topk", "batchtopk"]
TOLERANCE = 1e-5
SMALL = [  # a few seconds of training each: the check is of the format, not of the SAEs
    "harvest.n_tokens=20320",
    "harvest.chunk_rows=1024",
    "train.n_tokens=40960",
    "train.batch_size=1024",
    "train.lr_warmup_steps=4",
    "train.geometric_median_tokens=1024",
    "train.norm_sample_tokens=4096",
    "sae.k=32",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("python", help="the Python of a virtualenv with sae-lens installed")
    ap.add_argument("--out", help="keep the SAEs, exports and inputs here (default: a temporary folder)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out or tmp)
        cases = root / "cases"
        for arch in ARCHS:
            cfg = compose_config([f"out_dir={root / 'outputs'}", *SMALL, f"sae={arch}"])
            sae_dir = run_train(cfg).path
            x = store.open_store(run_harvest(cfg)[0].path).read_chunk(0).float()[:512]
            sae = load_sae(sae_dir)
            with torch.no_grad():
                f, active = sae.encode_with_mask(x)
                x_hat = sae(x)
            case = cases / arch
            run_export(cfg, "saelens", case / "export")
            save_file(
                {"x": x, "features": f.contiguous(), "recon": x_hat, "active": f != 0},
                str(case / "expected.safetensors"),
            )
        loader = Path(__file__).with_name("saelens_load.py")
        proc = subprocess.run([a.python, str(loader), str(cases)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"SAELens could not load the exports:\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    print(f"SAELens {rows[0]['sae_lens']} on gsae's exports; 512 activations of the default model each")
    print(f"{'gsae':<15} {'SAELens class':<16} {'features':>10} {'recon':>10} {'active differ':>14} {'L0':>7}")
    failed = []
    for r in rows:
        ok = r["features_max_rel"] < TOLERANCE and r["recon_max_rel"] < TOLERANCE and r["active_differ"] == 0
        failed += [] if ok else [r["case"]]
        print(
            f"{r['case']:<15} {r['class']:<16} {r['features_max_rel']:10.1e} {r['recon_max_rel']:10.1e} "
            f"{r['active_differ']:14d} {r['l0']:7.1f} {'ok' if ok else 'DISAGREES'}"
        )
    if failed or len(rows) != len(ARCHS):
        sys.exit(f"SAELens disagrees with gsae on: {', '.join(failed) or 'missing rows'}")


if __name__ == "__main__":
    main()
