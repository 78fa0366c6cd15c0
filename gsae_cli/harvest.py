"""`gsae harvest`: run the model up to the hook(s) on packed text and write activations to
zarr stores, one store per hook from one forward pass; resumable from the last flushed shard."""

from __future__ import annotations

import contextlib
import itertools
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from gsae_cli import artifacts, status, store
from gsae_cli.config import corpus_identity, harvest_dir, harvest_hash, harvest_identity, to_yaml
from gsae_cli.data import batched_windows, kept_positions, token_windows
from gsae_cli.errors import ConfigError
from gsae_cli.models import DTYPES, LoadedModel, load_model, resolve_device, validate_hooks
from gsae_cli.progress import notice, track


class _StopForward(Exception):
    """Raised by the last capture hook: nothing after the hook's layer needs to run."""


def capture(model: LoadedModel, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    """Activations at `hooks` for a [batch, seq] token tensor, running the model only as deep as
    the deepest hook: the forward pass is abandoned as soon as every hook has fired."""
    got: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def fn(act, hook):
            got[name] = act.detach()
            if len(got) == len(hooks):
                raise _StopForward
        return fn

    with torch.no_grad():
        try:
            model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=[(h, make_hook(h)) for h in hooks])
        except _StopForward:
            pass
    missing = [h for h in hooks if h not in got]
    if missing:
        raise ConfigError(f"Hook(s) {', '.join(missing)} never fired in a forward pass of {model.bridge.cfg.model_name}; "
                          "choose a hook on the residual stream, attention or MLP path.")
    return got


class RunningNorms:
    """E||x||², E||x||, max ||x|| over rows, in float64 (training scales inputs by E||x||²)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum_sq = 0.0
        self.sum = 0.0
        self.max = 0.0

    def update(self, rows: torch.Tensor) -> None:
        if rows.numel() == 0:
            return
        sq = rows.double().pow(2).sum(dim=1)
        self.count += rows.shape[0]
        self.sum_sq += sq.sum().item()
        self.sum += sq.sqrt().sum().item()
        self.max = max(self.max, sq.max().sqrt().item())

    def result(self) -> dict:
        n = max(self.count, 1)
        return {"mean_sq_norm": self.sum_sq / n, "mean_norm": self.sum / n, "max_norm": self.max,
                "count": self.count}


@dataclass
class HarvestResult:
    hook: str
    path: Path
    reused: bool


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("gsae", "torch", "transformer-lens", "transformers", "zarr", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run_harvest(cfg: DictConfig, force: bool = False) -> list[HarvestResult]:
    hooks = list(dict.fromkeys(cfg.hooks or [cfg.hook]))
    dirs = {h: harvest_dir(cfg, h) for h in hooks}
    with contextlib.ExitStack() as stack:
        for h in sorted(hooks, key=lambda h: str(dirs[h])):  # one global order: no deadlocks
            stack.enter_context(artifacts.locked(dirs[h], f"the activation store for {h}"))
        if force:
            for h in hooks:
                artifacts.remove(dirs[h])
        pending = [h for h in hooks if not store.is_complete(dirs[h])]
        for h in hooks:
            if h not in pending:
                notice(f"reusing complete activation store {dirs[h]}")
        if pending:
            with contextlib.ExitStack() as recs:
                for h in pending:
                    recs.enter_context(status.recording(dirs[h]))
                _harvest(cfg, pending, {h: dirs[h] for h in pending})
    return [HarvestResult(h, dirs[h], h not in pending) for h in hooks]


def _harvest(cfg: DictConfig, hooks: list[str], dirs: dict[str, Path]) -> None:
    hc = cfg.harvest
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device)
    validate_hooks(model, hooks)
    keep = kept_positions(hc.ctx_len, cfg.site_start)
    rows_per_window = hc.ctx_len - keep.start
    done = {h: store.rows_written(dirs[h]) for h in hooks}
    start_row = min(done.values())
    skip_windows = start_row // rows_per_window
    cursor = skip_windows * rows_per_window  # global index of the next row the model produces
    if start_row:
        notice(f"resuming harvest at token {start_row:,} of {hc.n_tokens:,}")

    windows = token_windows(cfg.data, model.tokenizer, "train", hc.ctx_len,
                            model.bos_token_id, model.eos_token_id)
    windows = itertools.islice(windows, skip_windows, None)  # tokenising is cheap; no forward
    writers: dict[str, store.StoreWriter] = {}
    norms = {h: RunningNorms() for h in hooks}
    t0 = time.monotonic()
    try:
        with track("harvest", hc.n_tokens, "tokens", completed=start_row) as bar:
            for batch in batched_windows(windows, hc.batch_size):
                if cursor >= hc.n_tokens:
                    break
                acts = capture(model, batch, hooks)
                tokens = batch[:, keep].reshape(-1)
                n = tokens.shape[0]
                for h in hooks:
                    rows = acts[h][:, keep].reshape(n, -1)
                    if h not in writers:
                        writers[h] = _open_writer(cfg, h, dirs[h], rows.shape[1], norms[h])
                    lo = max(done[h], cursor) - cursor  # rows this store already holds
                    hi = min(n, hc.n_tokens - cursor)
                    if lo < hi:
                        chunk = rows[lo:hi].to("cpu", DTYPES[hc.dtype])
                        norms[h].update(chunk)
                        writers[h].append(chunk, tokens[lo:hi])
                advance = min(n, hc.n_tokens - cursor) - max(0, start_row - cursor)
                cursor += n
                bar.advance(max(advance, 0))
            if cursor < hc.n_tokens:
                raise ConfigError(
                    f"The corpus ran out after {cursor:,} training tokens (ctx_len={hc.ctx_len}), short of "
                    f"harvest.n_tokens={hc.n_tokens:,}. Lower harvest.n_tokens or use a larger corpus "
                    "(data.name=... or data.path=...).")
        for h in hooks:  # killed inside finish(): every row was on disk, no batch was needed
            if h not in writers:
                writers[h] = _open_writer(cfg, h, dirs[h], store.store_info(dirs[h])["d_model"], norms[h])
        for w in writers.values():
            w.flush()  # the throughput below includes every byte reaching disk
        seconds = time.monotonic() - t0
        for h in hooks:
            attrs = _final_attrs(cfg, h, model, norms[h], writers[h].d_model)
            attrs["throughput"] = {"tokens_this_run": hc.n_tokens - start_row, "seconds": seconds,
                                   "tokens_per_s": (hc.n_tokens - start_row) / max(seconds, 1e-9),
                                   "device": str(device)}
            artifacts.atomic_write_text(dirs[h] / "config.yaml", to_yaml(cfg))
            artifacts.write_json(dirs[h] / "summary.json", attrs)
            writers[h].finish(attrs)  # marks the store complete, last
    finally:
        for w in writers.values():
            w.close()


def _open_writer(cfg: DictConfig, hook: str, path: Path, d_model: int, norms: RunningNorms) -> store.StoreWriter:
    hc = cfg.harvest
    attrs = {"gsae_identity": harvest_identity(cfg, hook), "config_hash": harvest_hash(cfg, hook)}
    writer = store.StoreWriter.open(path, d_model=d_model, n_tokens=hc.n_tokens, dtype=hc.dtype,
                                    chunk_rows=hc.chunk_rows, shard_chunks=hc.shard_chunks, attrs=attrs)
    if writer.rows_written:  # a resume: the norms must cover the rows written before the kill
        partial = store.open_store(path, allow_incomplete=True)
        step = 65_536
        for a in range(0, writer.rows_written, step):
            norms.update(partial.read_rows(a, min(a + step, writer.rows_written)))
    return writer


def _final_attrs(cfg: DictConfig, hook: str, model: LoadedModel, norms: RunningNorms, d_model: int) -> dict:
    hc = cfg.harvest
    return {
        "model": cfg.model.name,
        "hf_name": cfg.model.hf_name,
        "hook": hook,
        "d_model": d_model,
        "corpus": {"name": cfg.data.name, "path": cfg.data.path, "split": "train",
                   "version": corpus_identity(cfg).get("default_corpus_version"),  # None: not the default
                   "held_out": f"every {cfg.data.eval_every}-th document (index % {cfg.data.eval_every} == 0)",
                   "windows": -(-hc.n_tokens // (hc.ctx_len - kept_positions(hc.ctx_len, cfg.site_start).start))},
        "ctx_len": hc.ctx_len,
        # positions 0 .. site_start-1 of each window are not stored (BOS, then attention sinks)
        "site_start": cfg.site_start,
        "bos_token_id": model.bos_token_id,
        "eos_token_id": model.eos_token_id,
        "dtype": hc.dtype,
        "n_tokens": hc.n_tokens,
        "config_hash": harvest_hash(cfg, hook),
        "versions": library_versions(),
        "norms": norms.result(),
    }
