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

from gsae_cli import store
from gsae_cli.config import corpus_identity, harvest_dir, harvest_hash, harvest_identity, out_dir, store_root, to_yaml
from gsae_cli.core import artifacts, distributed, status, storage
from gsae_cli.core.progress import notice, track
from gsae_cli.errors import ConfigError
from gsae_cli.lm.data import batched_windows, kept_positions, token_windows
from gsae_cli.lm.models import DTYPES, LoadedModel, load_model, validate_hooks


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
        raise ConfigError(
            f"Hook(s) {', '.join(missing)} never fired in a forward pass of {model.bridge.cfg.model_name}; "
            "choose a hook on the residual stream, attention or MLP path."
        )
    return got


@dataclass
class HarvestResult:
    hook: str
    path: Path
    reused: bool
    complete: bool = True  # False: this rank's part is done, other ranks' parts are not yet


def harvest_world(cfg: DictConfig) -> tuple[int, int]:
    """(rank, world_size) of this harvest process: harvest.rank / harvest.world_size, else
    torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    hc = cfg.harvest
    env = distributed.world_from_env()
    world = hc.world_size if hc.world_size is not None else env.size
    rank = hc.rank if hc.rank is not None else env.rank
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"harvest.rank={rank} and harvest.world_size={world} do not fit: ranks run 0..world_size-1.")
    return rank, world


def library_versions() -> dict:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("gsae", "torch", "transformer-lens", "transformers", "zarr", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run_harvest(cfg: DictConfig, force: bool = False) -> list[HarvestResult]:
    hooks = list(dict.fromkeys(cfg.hooks or [cfg.hook]))
    dirs = {h: harvest_dir(cfg, h) for h in hooks}
    rank, world = harvest_world(cfg)
    storage.check_reachable(store_root(cfg), "the activation stores (store_url)")
    # one process per store, or one per (store, rank) when several ranks share the store; flocks
    # need a file system, so a store on object storage is locked under out_dir/harvest instead
    local = {h: out_dir(cfg) / "harvest" / dirs[h].name if storage.is_remote(dirs[h]) else dirs[h] for h in hooks}
    lock = {h: local[h] if world == 1 else local[h].with_name(f"{local[h].name}.rank{rank}of{world}") for h in hooks}
    with contextlib.ExitStack() as stack:
        for h in sorted(hooks, key=lambda h: str(dirs[h])):  # one global order: no deadlocks
            stack.enter_context(artifacts.locked(lock[h], f"the activation store for {h}"))
        if force:
            if world > 1:
                raise ConfigError(
                    "--force with harvest.world_size > 1 would let each rank delete the others' "
                    "work; delete the store once (gsae harvest --force with one process, or rm), "
                    "then start the ranks."
                )
            for h in hooks:
                artifacts.remove(dirs[h])
        pending = [h for h in hooks if not store.is_complete(dirs[h])]
        for h in hooks:
            if h not in pending:
                notice(f"reusing complete activation store {dirs[h]}")
        complete = dict.fromkeys(hooks, True)
        if pending:
            with contextlib.ExitStack() as recs:
                for h in pending:
                    recs.enter_context(
                        status.recording(dirs[h], f"harvest rank {rank} of {world}: " if world > 1 else "")
                    )
                complete |= _harvest(cfg, pending, {h: dirs[h] for h in pending}, rank, world)
    return [HarvestResult(h, dirs[h], h not in pending, complete[h]) for h in hooks]


def _harvest(cfg: DictConfig, hooks: list[str], dirs: dict[str, Path], rank: int, world: int) -> dict[str, bool]:
    """Run the model over the global grid of batches, computing only the batches that hold rows
    this process's writers still need (all rows with one process; this rank's shards with
    several), so every rank and every resume sees each batch exactly as one uninterrupted
    process would. Returns, per hook, whether the store is complete."""
    hc = cfg.harvest
    device = distributed.rank_device(cfg.device)  # each local rank its own GPU
    model = load_model(cfg.model, device)
    validate_hooks(model, hooks)
    keep = kept_positions(hc.ctx_len, cfg.site_start)
    rows_per_window = hc.ctx_len - keep.start
    windows = token_windows(cfg.data, model.tokenizer, "train", hc.ctx_len, model.bos_token_id, model.eos_token_id)
    batches = iter(batched_windows(windows, hc.batch_size))
    first = next(batches, None)
    if first is None:
        raise _ran_out(0, hc)
    widths = {h: (store.store_info(dirs[h]) or {}).get("d_model") for h in hooks}
    if any(w is None for w in widths.values()):  # a new store: one window tells each hook's width
        probe = capture(model, first[:1], hooks)
        widths = {h: widths[h] or probe[h][0, 0].numel() for h in hooks}  # a row: one position, flattened
    writers: dict[str, store.StoreWriter] = {}
    try:
        for h in hooks:
            width = widths[h]
            assert width is not None  # a store's recorded width, else the probe's
            writers[h] = _open_writer(cfg, h, dirs[h], width, rank, world)
        lead = writers[hooks[0]]
        if lead.owned_rows(0, lead.next_row):  # some of this process's rows are already on disk
            notice(
                f"resuming harvest{f' rank {rank} of {world}' if world > 1 else ''} at row {lead.next_row:,} "
                f"of {hc.n_tokens:,}"
            )
        todo = lead.owned_rows(lead.next_row, hc.n_tokens)
        t0 = time.monotonic()
        cursor = 0  # global index of the first row of the batch at hand
        with track("harvest" if world == 1 else f"harvest rank {rank}/{world}", todo, "tokens") as bar:
            for batch in itertools.chain([first], batches):
                if all(w.next_row >= hc.n_tokens for w in writers.values()):
                    break
                n = batch.shape[0] * rows_per_window
                hi = min(cursor + n, hc.n_tokens)
                wanted = [h for h in hooks if writers[h].needs(cursor, hi)]
                if wanted:
                    bar.advance(lead.owned_rows(max(cursor, lead.next_row), hi))
                    acts = capture(model, batch, hooks)
                    tokens = batch[:, keep].reshape(-1)[: hi - cursor]
                    for h in wanted:
                        rows = acts[h][:, keep].reshape(n, -1)[: hi - cursor]
                        writers[h].append_at(cursor, rows.to("cpu", DTYPES[hc.dtype]), tokens)
                cursor += n
            if any(w.next_row < hc.n_tokens for w in writers.values()):
                raise _ran_out(cursor, hc)
        for w in writers.values():
            w.flush()  # the throughput below includes every byte reaching disk
        seconds = time.monotonic() - t0
        complete = {}
        for h in hooks:
            attrs = _final_attrs(cfg, h, model, writers[h].d_model)
            attrs["throughput"] = {
                "tokens_this_run": todo,
                "seconds": seconds,
                "tokens_per_s": todo / max(seconds, 1e-9),
                "device": str(device),
                "world_size": world,
            }

            def before_complete(final: dict, h: str = h) -> None:  # written before the COMPLETE marker
                artifacts.atomic_write_text(dirs[h] / "config.yaml", to_yaml(cfg))
                artifacts.write_json(dirs[h] / "summary.json", final)

            complete[h] = writers[h].finish(attrs, before_complete)
            if not complete[h]:
                notice(
                    f"harvest rank {rank} of {world}: this rank's part of {dirs[h]} is done; the store is "
                    "complete once every rank has finished (the last one marks it)"
                )
        return complete
    finally:
        for w in writers.values():
            w.close()


def _ran_out(rows: int, hc) -> ConfigError:
    return ConfigError(
        f"The corpus ran out after {rows:,} training tokens (ctx_len={hc.ctx_len}), short of "
        f"harvest.n_tokens={hc.n_tokens:,}. Lower harvest.n_tokens or use a larger corpus "
        "(data.name=... or data.path=...)."
    )


def _open_writer(cfg: DictConfig, hook: str, path: Path, d_model: int, rank: int, world: int) -> store.StoreWriter:
    hc = cfg.harvest
    attrs = {"gsae_identity": harvest_identity(cfg, hook), "config_hash": harvest_hash(cfg, hook)}
    return store.StoreWriter.open(
        path,
        d_model=d_model,
        n_tokens=hc.n_tokens,
        dtype=hc.dtype,
        chunk_rows=hc.chunk_rows,
        shard_chunks=hc.shard_chunks,
        attrs=attrs,
        rank=rank,
        world_size=world,
    )


def _final_attrs(cfg: DictConfig, hook: str, model: LoadedModel, d_model: int) -> dict:
    hc = cfg.harvest
    return {
        "model": cfg.model.name,
        "hf_name": cfg.model.hf_name,
        "hook": hook,
        "d_model": d_model,
        "corpus": {
            "name": cfg.data.name,
            "path": cfg.data.path,
            "split": "train",
            "version": corpus_identity(cfg).get("default_corpus_version"),  # None: not the default
            "held_out": f"every {cfg.data.eval_every}-th document (index % {cfg.data.eval_every} == 0)",
            "windows": -(-hc.n_tokens // (hc.ctx_len - kept_positions(hc.ctx_len, cfg.site_start).start)),
        },
        "ctx_len": hc.ctx_len,
        # positions 0 .. site_start-1 of each window are not stored (BOS, then attention sinks)
        "site_start": cfg.site_start,
        "bos_token_id": model.bos_token_id,
        "eos_token_id": model.eos_token_id,
        "dtype": hc.dtype,
        "n_tokens": hc.n_tokens,
        "config_hash": harvest_hash(cfg, hook),
        "versions": library_versions(),
    }  # + "norms", added by the store writer from its per-shard statistics
