"""Static HTML pages for `gsae inspect` (feature browser), `gsae inspect compare` and
`gsae inspect study`: plain files that open from disk on an offline machine.

A page is one HTML file plus assets/browser.js and assets/style.css (shipped in gsae_cli/inspect/web/).
Its data are JavaScript files that call `GSAE.load({...})`, loaded on demand with <script>
tags: browsers refuse fetch() on file:// URLs but not scripts, so nothing needs a server. Each
feature's dashboard lives in a shard of `inspect.shard_features` features, so opening a feature
loads one small file, however many features the SAE has.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import torch
from torch import Tensor

from gsae_cli.core import artifacts
from gsae_cli.inspect.features import Lookup, log_density_histogram

WEB_DIR = Path(__file__).resolve().parent / "web"


def data_script(obj) -> str:
    """`obj` as a script the static pages load (JSON inside a GSAE.load call: pages opened from
    disk may not fetch files)."""
    return "GSAE.load(" + json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + ");\n"


def sig(t: Tensor, digits: int = 3) -> Tensor:
    """`t` rounded to `digits` significant digits, float64, so that .tolist() gives floats whose
    JSON is short (x * 10^k rounded, then divided by the exact power of ten); NaN becomes 0."""
    t = torch.nan_to_num(t.double(), nan=0.0)
    e = torch.floor(torch.log10(t.abs().clamp_min(1e-300))) - (digits - 1)
    up = torch.round(t * torch.pow(10.0, -e)) / torch.pow(10.0, -e)  # exact divisor for e < 0
    down = torch.round(t / torch.pow(10.0, e)) * torch.pow(10.0, e)
    return torch.where(t == 0, t, torch.where(e < 0, up, down))


def write_assets(directory: Path) -> None:
    (directory / "assets").mkdir(parents=True, exist_ok=True)
    for name in ("browser.js", "style.css"):
        artifacts.atomic_write_bytes(directory / "assets" / name, (WEB_DIR / name).read_bytes())


def write_page(path: Path, page: str, title: str, data_files: list[str]) -> None:
    """An HTML shell: the page kind, its title and the data files (paths relative to the page)
    it loads first; assets/ sits beside the page."""
    shell = (WEB_DIR / "page.html").read_text()
    scripts = "\n".join(f'<script src="{html.escape(f)}"></script>' for f in data_files)
    text = shell.replace("{{TITLE}}", html.escape(title)).replace("{{PAGE}}", page).replace("{{DATA}}", scripts)
    artifacts.atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------
# The feature browser
# ---------------------------------------------------------------------------------------------


def window_position(rows: Tensor, n_site: int, first: int) -> tuple[Tensor, Tensor]:
    """(window, position) of site rows (row r: window r // n_site, position first + r % n_site);
    padding rows (-1) map to window 0, position `first`."""
    r = rows.clamp(min=0)
    return torch.div(r, n_site, rounding_mode="floor"), r % n_site + first


def example_lists(
    rows: Tensor, vals: Tensor, feature_ids: Tensor, look: Lookup, first: int, ctx_len: int, before: int, after: int
) -> list[list[list]]:
    """For features `feature_ids` [F] and their example rows/values [F, E] (-1: none): per
    feature a list of [window, position, activation, [[offset, act], ...]] with the feature's
    non-zero activations over the shown context [position - before, position + after] (offsets
    from its first shown position, which may be a context position < first)."""
    n_site = ctx_len - first
    span = torch.arange(-before, after + 1)
    w, p = window_position(rows, n_site, first)
    pos = p[..., None] + span  # [F, E, S]
    in_site = (pos >= first) & (pos < ctx_len) & (rows[..., None] >= 0)
    ctx_rows = torch.where(in_site, w[..., None] * n_site + pos - first, torch.full_like(pos, -1))
    ctx_vals = look(ctx_rows, feature_ids[:, None, None].expand_as(pos))  # [F, E, S]
    offset = pos - (p - before).clamp(min=0)[..., None]  # position within the shown context
    # Python lists once, then plain loops: element access on tensors is far slower
    nz = torch.nonzero(ctx_vals).tolist()  # (f, e, s) in order
    nz_vals = sig(ctx_vals[ctx_vals != 0]).tolist()
    nz_offs = offset[ctx_vals != 0].tolist()
    sparse: dict[tuple[int, int], list] = {}
    for (fi, e, _), v, o in zip(nz, nz_vals, nz_offs):
        sparse.setdefault((fi, e), []).append([o, v])
    rows_l, w_l, p_l, v_l = rows.tolist(), w.tolist(), p.tolist(), sig(vals).tolist()
    return [
        [
            [w_l[fi][e], p_l[fi][e], v_l[fi][e], sparse.get((fi, e), [])]
            for e in range(len(rows_l[fi]))
            if rows_l[fi][e] >= 0
        ]
        for fi in range(len(rows_l))
    ]


def feature_dicts(data, ids: list[int], look: Lookup, info: dict, strings: dict[int, str]) -> list[dict]:
    """The dashboards of features `ids`, as the browser reads them."""
    t = data.tensors
    st = info["settings"]
    idx = torch.tensor(ids, dtype=torch.int64)
    ctx_len = int(data.tokens.shape[1])
    args = (look, data.first, ctx_len, st["context_before"], st["context_after"])
    top = example_lists(t["top_rows"][idx], t["top_vals"][idx], idx, *args)
    g, p = t["q_rows"].shape[1:]
    q_rows = t["q_rows"][idx]
    q = example_lists(q_rows.reshape(len(ids), g * p), t["q_vals"][idx].reshape(len(ids), g * p), idx, *args)
    sel = {k: t[k][idx].tolist() for k in ("hist", "up_ids", "down_ids", "nb_ids")}
    sel.update({k: sig(t[k][idx]).tolist() for k in ("max_act", "q_ranges", "up_vals", "down_vals", "nb_cos")})
    sel["freq"] = sig(t["freq"][idx], 4).tolist()
    live = (q_rows >= 0).tolist()
    out = []
    for n, j in enumerate(ids):
        groups, it = [], iter(q[n])
        for gi in range(g):
            exs = [next(it) for k in range(p) if live[n][gi][k]]
            if exs:
                lo, hi = sel["q_ranges"][n][gi]
                groups.append({"lo": lo, "hi": hi, "ex": exs})
        out.append(
            {
                "i": j,
                "f": sel["freq"][n],
                "m": sel["max_act"][n],
                "h": sel["hist"][n],
                "top": top[n],
                "q": groups,
                "up": [[strings[a], v] for a, v in zip(sel["up_ids"][n], sel["up_vals"][n])],
                "down": [[strings[a], v] for a, v in zip(sel["down_ids"][n], sel["down_vals"][n])],
                "nb": [[a, c] for a, c in zip(sel["nb_ids"][n], sel["nb_cos"][n])],
            }
        )
    return out


def _labels(data, strings: dict[int, str]) -> list[str]:
    """A short label per feature for the index: its top-activating token (what search matches,
    with the promoted tokens)."""
    t = data.tensors
    rows = t["top_rows"][:, 0]
    w, p = window_position(rows, data.tokens.shape[1] - data.first, data.first)
    tok = data.tokens[w, p]
    return [strings[int(tk)] if int(r) >= 0 else "" for r, tk in zip(rows.tolist(), tok.tolist())]


def write_browser(directory: Path, data, info: dict, tokenizer) -> None:
    """index.html, assets/ and data/ (index.js, text.js, shard-NNNN.js) for one SAE; text.json
    with the token ids and strings."""

    t = data.tensors
    text_ids = data.tokens.unique().tolist()
    ids = set(text_ids) | set(t["up_ids"].unique().tolist()) | set(t["down_ids"].unique().tolist())
    strings = token_strings(tokenizer, sorted(ids))
    look = Lookup(data.acts)
    d_sae = int(t["freq"].numel())
    shard = int(info["settings"]["shard_features"])
    data_dir = directory / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    labels = _labels(data, strings)
    up0 = [strings[int(a)] for a in t["up_ids"][:, 0].tolist()]
    index = {
        "kind": "index",
        "info": info,
        "density": density_summary(t["freq"]),
        "shard": shard,
        "freq": sig(t["freq"], 4).tolist(),
        "max": sig(t["max_act"]).tolist(),
        "label": labels,
        "up": up0,
    }
    artifacts.atomic_write_text(data_dir / "index.js", data_script(index))
    text = {
        "kind": "text",
        "first": data.first,
        "tokens": data.tokens.tolist(),
        "vocab": {str(i): strings[i] for i in text_ids},
    }
    artifacts.atomic_write_text(data_dir / "text.js", data_script(text))
    artifacts.write_json(
        directory / "text.json",
        {"first": data.first, "tokens": data.tokens.tolist(), "vocab": {str(i): strings[i] for i in sorted(ids)}},
    )
    for s in range(0, d_sae, shard):
        feats = feature_dicts(data, list(range(s, min(s + shard, d_sae))), look, info, strings)
        artifacts.atomic_write_text(
            data_dir / shard_name(s // shard), data_script({"kind": "shard", "features": feats})
        )
    write_assets(directory)
    write_page(
        directory / "index.html",
        "browser",
        f"gsae · {info['label']} · {info['hook']}",
        ["data/index.js", "data/text.js"],
    )


def shard_name(n: int) -> str:
    return f"shard-{n:05d}.js"


def copy_data(src: Path, dest: Path) -> None:
    """A browser's data folder, copied so that a comparison or study opens on its own."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src / "data", dest)


def read_data_file(path: Path) -> dict:
    """The object a data file passes to GSAE.load."""
    text = Path(path).read_text(encoding="utf-8")
    head, tail = "GSAE.load(", ");\n"
    if not (text.startswith(head) and text.endswith(tail)):
        raise ValueError(f"{path} is not a gsae data file")
    return json.loads(text[len(head) : -len(tail)])


def feature_dicts_from_artifact(directory: Path, ids: list[int]) -> list[dict]:
    """The dashboards of features `ids`, read back from a browser's shards."""
    from gsae_cli.errors import ArtifactError

    index = read_data_file(Path(directory) / "data" / "index.js")
    shard = int(index["shard"])
    out, cache = [], {}
    for j in ids:
        s = j // shard
        try:
            if s not in cache:
                cache[s] = {f["i"]: f for f in read_data_file(Path(directory) / "data" / shard_name(s))["features"]}
            out.append(cache[s][j])
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(
                f"The feature browser {directory} is damaged ({e}); rebuild it with "
                "`gsae inspect --force` for that SAE."
            ) from None
    return out


def token_strings(tokenizer, ids: list[int]) -> dict[int, str]:
    """Each token as the text it adds (leading spaces kept), for display."""
    return {i: tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids}


def density_summary(freq: Tensor) -> dict:
    """The log10 feature-density histogram as the browser draws it."""
    counts, edges, dead = log_density_histogram(freq)
    return {"counts": counts, "edges": edges, "dead": dead}
