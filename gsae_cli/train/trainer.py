"""`gsae train`: fit the configured SAE on its activation store, as docs/method.md §2 gives it, with
atomic checkpoints so that a killed run resumes and ends where an uninterrupted one ends."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from omegaconf import DictConfig, OmegaConf

from gsae_cli import store
from gsae_cli.config import applies, baseline_config, effective_lr, to_yaml, train_dir, train_hash, train_identity
from gsae_cli.core import artifacts, atomic, distributed, status
from gsae_cli.core.progress import notice, track
from gsae_cli.errors import ArtifactError, ConfigError, StoreError
from gsae_cli.saes import (
    SAE,
    BatchTopKSAE,
    LossOutput,
    ReluSAE,
    RescaleShiftSAE,
    build_sae,
    geometric_median,
    reset_adam_state_,
    sae_options,
)
from gsae_cli.saes.io import load_sae, read_sae_meta, save_sae
from gsae_cli.train.divergence import LOG, describe, divergence_of_log, divergence_of_sae
from gsae_cli.train.schedule import (
    ResampleSchedule,
    aux_dead_steps,
    lr_factor,
    lr_multiplier,
    sparsity_warmup_steps,
)

CHECKPOINT = "checkpoint.pt"
METRICS = LOG  # "metrics.jsonl", one row per train.log_every steps (train/divergence.py reads it too)


@dataclass
class TrainResult:
    path: Path
    summary: dict
    reused: bool


def run_train(cfg: DictConfig, force: bool = False) -> TrainResult:
    if cfg.sae.path:  # an SAE from elsewhere: nothing to train
        path = Path(cfg.sae.path).expanduser()
        return TrainResult(path, read_sae_meta(path), True)
    world = distributed.world_from_env()  # torchrun's ranks train one SAE together
    if cfg.train.data_streams % world.size:  # before any harvest, not after
        raise ConfigError(
            f"train.data_streams={cfg.train.data_streams} cannot be split among {world.size} ranks; "
            f"set train.data_streams to a multiple of {world.size} (the same value trains the same "
            "SAE with any rank count that divides it)."
        )
    distributed.init(world, distributed.rank_device(cfg.device))
    directory = train_dir(cfg)
    base = None
    if cfg.sae.name == "rescale_shift":  # docs/method.md §1: built on the relu SAE of the same config
        base = run_train(baseline_config(cfg)).path
    # rank 0 holds the artifact's lock and writes every file; the other ranks only compute
    with artifacts.locked(directory, f"the {cfg.sae.name} SAE") if world.is_main else nullcontext():
        distributed.barrier(world)  # every rank decides "complete?" after rank 0 holds the lock
        if force:
            if world.is_main:
                artifacts.remove(directory)
            distributed.barrier(world)
        if artifacts.is_complete(directory):
            notice(f"reusing trained SAE {directory}")
            return TrainResult(directory, artifacts.read_json(directory / "summary.json"), True)
        from gsae_cli.harvest.run import run_harvest

        harvest_cfg = OmegaConf.merge(cfg, {"hooks": []})
        assert isinstance(harvest_cfg, DictConfig)  # merging onto a DictConfig gives a DictConfig
        store_path = run_harvest(harvest_cfg)[0].path
        distributed.barrier(world)  # a distributed harvest is complete once every rank is past it
        from gsae_cli.lm.models import release

        release()  # a sweep's kept model is not needed while the SAE trains
        with status.recording(directory) if world.is_main else nullcontext():
            summary = Trainer(cfg, directory, store_path, base, world).fit()
    return TrainResult(directory, summary, False)


def input_scale(sample: torch.Tensor, where: Path | str = "the activation store") -> float:
    """sqrt(E||x||²) over a sample of raw activation rows: training divides every row by it so that
    E||x||² = 1 (docs/method.md §2). Attention sinks need no special case here: harvest never stores the
    positions before `site_start`, where they sit."""
    if not bool(torch.isfinite(sample).all()):
        raise StoreError(
            f"{where} holds NaN or infinite activations (found in the rows sampled for the "
            "input scale); rebuild it with `gsae harvest --force`, and if that recurs, run the "
            "model in float32 (model.dtype=float32)."
        )
    scale = math.sqrt(float(sample.double().pow(2).sum(dim=1).mean()))
    if not scale > 0:
        raise StoreError(
            f"{where} holds only zero activations in the rows sampled for the input scale, so "
            "there is nothing to train on; check that the hook is the site you mean (`gsae "
            "show-config` prints it) and rebuild the store with `gsae harvest --force`."
        )
    return scale


def update(
    sae: SAE,
    loss_fn: Callable[..., LossOutput],
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    l1: float,
    dead: torch.Tensor,
    step: int,
    n_steps: int,
    world: distributed.World = distributed.World(),
    autocast: AbstractContextManager = nullcontext(),
) -> tuple[LossOutput, torch.Tensor]:
    """One training update of `sae` on the batch x (every rank's share): loss, backward, the
    gradients averaged over ranks, the decoder gradient projected, Adam, the decoder rows
    renormalised, the architecture's `after_step_`. Returns the loss output and the loss (the
    ranks' mean); raises FloatingPointError, before any parameter moves, if the loss is not finite."""
    with autocast:
        out = loss_fn(x, l1, dead)
        total = out.total()
    opt.zero_grad(set_to_none=True)
    total.backward()
    # each rank's loss is the mean over its equal share of the batch: the mean of the ranks'
    # gradients is the gradient of the global batch's mean loss; the loss rides in the same
    # all-reduce, so every rank sees a non-finite loss and stops together
    reported = total.detach().float().reshape(1)
    distributed.average_([reported, *(p.grad for p in sae.parameters() if p.grad is not None)], world)
    if not torch.isfinite(reported):
        raise FloatingPointError(f"{total.item()}")
    sae.constrain_decoder_grad_()
    opt.step()
    sae.renormalise_decoder_()
    sae.after_step_(out, step, n_steps)
    return out, total.detach()


class Trainer:
    """One training run. Each step: (resample, at a check) -> forward -> backward -> project the
    decoder gradient -> Adam step at base LR x `lr_multiplier` -> renormalise decoder rows."""

    def __init__(
        self,
        cfg: DictConfig,
        directory: Path,
        store_path: Path,
        base_sae_dir: Path | None,
        world: distributed.World = distributed.World(),
    ):
        self.cfg, self.tc, self.dir = cfg, cfg.train, directory
        self.world = world
        self.store = store.open_store(store_path)
        self.store_path = store_path
        self.device = distributed.rank_device(cfg.device)  # one GPU per rank on each node
        streams = self.tc.data_streams
        if streams > self.store.n_chunks:
            raise ConfigError(
                f"train.data_streams={streams} exceeds the store's {self.store.n_chunks} chunks; "
                "lower it or harvest with a smaller harvest.chunk_rows."
            )
        self.n_steps = max(1, self.tc.n_tokens // self.tc.batch_size)
        self.lr = effective_lr(cfg)
        self.resample_schedule = ResampleSchedule.of(self.tc, self.n_steps)
        self.l1_warmup_steps = sparsity_warmup_steps(cfg.sae, self.tc, self.n_steps)
        # λ where it shapes the SAE; 0 (and logged as 0) where k sets the sparsity instead
        self.l1_coefficient = float(cfg.sae.l1_coefficient) if applies("l1_coefficient", cfg.sae.name) else 0.0
        self.aux_dead_steps = aux_dead_steps(cfg.sae, self.tc, self.n_steps)
        self.generator = torch.Generator(device="cpu").manual_seed(self.tc.seed)
        # Inputs are divided by one scalar so that E||x||² = 1 (a stated deviation); the scalar is
        # folded into the saved weights. rescale_shift works in the units its baseline trained in,
        # so it reads the baseline's scale instead of sampling rows for one.
        sample = None
        if base_sae_dir is not None:
            self.scale = float(read_sae_meta(base_sae_dir)["input_scale_folded"])
        else:
            sample = self._sample_rows(max(self.tc.norm_sample_tokens, self.tc.geometric_median_tokens))
            self.scale = input_scale(sample, f"The activation store at {store_path}")
        self.base_relu: ReluSAE | None = None  # rescale_shift's frozen baseline, as saved (raw units)
        self.sae = self._build(base_sae_dir, sample).to(self.device)
        if isinstance(self.sae, BatchTopKSAE) and world.size > 1:  # its k·B-th value is the global batch's
            self.sae.distribute(lambda t: distributed.gather(t, world), world.size)
        params = [p for p in self.sae.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=self.lr, betas=(self.tc.adam_beta1, self.tc.adam_beta2))
        self.steps_since_fired = torch.zeros(self.sae.d_sae, dtype=torch.long, device=self.device)
        self.resamples: list[dict] = []  # {"step": s, "n": features}, checkpointed: the LR depends on it
        self.step = 0

    # ---- set-up -------------------------------------------------------------------------

    def _build(self, base_sae_dir: Path | None, sample: torch.Tensor | None) -> SAE:
        d_model = self.store.d_model
        if base_sae_dir is not None:
            base = load_sae(base_sae_dir)
            assert isinstance(base, ReluSAE)  # the baseline is trained from baseline_config: sae=relu
            self.base_relu = base
            self.base_sae_dir = Path(base_sae_dir)
            rs_sae = RescaleShiftSAE.from_relu(self.base_relu)  # copies; base_relu stays as saved
            rs_sae.fold_input_scale_(1.0 / self.scale)  # into the normalised units it trained in
            return rs_sae
        assert sample is not None  # sampled whenever there is no baseline
        sc = self.cfg.sae
        sae = build_sae(sc.name, d_model, sc.expansion_factor * d_model, **sae_options(sc))
        median_sample = sample[: self.tc.geometric_median_tokens] / self.scale
        sae.init_weights_(geometric_median(median_sample), generator=self.generator)
        return sae

    def _sample_rows(self, n: int) -> torch.Tensor:
        """About n rows (float32) from whole chunks taken in a seeded random order: cheap on
        any store size, since only the chunks needed are read."""
        order = torch.randperm(self.store.n_chunks, generator=self.generator).tolist()
        out, got = [], 0
        for c in order:
            if got >= n:
                break
            out.append(self.store.read_chunk(c).float())
            got += out[-1].shape[0]
        return torch.cat(out)[:n]

    # ---- checkpoints ----------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        if not self.world.is_main:
            return
        state = {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "opt": self.opt.state_dict(),
            "resamples": self.resamples,
            "steps_since_fired": self.steps_since_fired,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "identity": train_identity(self.cfg),
        }
        with atomic.replacing(self.dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> bool:
        path = self.dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(
                f"The checkpoint {path} cannot be read ({type(e).__name__}); remove it "
                f"(rm {path}) to restart this training, or rerun with --force."
            ) from None
        if state.get("identity") != train_identity(self.cfg) or "resamples" not in state:
            raise ArtifactError(
                f"The checkpoint in {self.dir} belongs to a different config or an older gsae; "
                f"rerun with --force (or rm {path}) to restart this training."
            )
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["opt"])
        self.resamples = list(state["resamples"])
        self.steps_since_fired = state["steps_since_fired"].to(self.device)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        # Drop log lines written after the checkpoint (at step <= it they were logged before saving).
        log = self.dir / METRICS
        if log.exists() and self.world.is_main:
            kept = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
            artifacts.atomic_write_text(log, "".join(ln + "\n" for ln in kept))
        return True

    # ---- the loop -------------------------------------------------------------------------

    def fit(self) -> dict:
        if self.world.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            artifacts.atomic_write_text(self.dir / "config.yaml", to_yaml(self.cfg))
        distributed.barrier(self.world)
        if self._load_checkpoint():
            notice(f"resuming training at step {self.step:,} of {self.n_steps:,}")
        distributed.broadcast_(list(self.sae.parameters()), self.world)
        tc = self.tc
        wanted = self.n_steps * tc.batch_size
        if wanted > self.store.n_tokens:  # allowed, but the user should know data repeats
            notice(
                f"train.n_tokens={wanted:,} is {wanted / self.store.n_tokens:.2f}x the store's "
                f"{self.store.n_tokens:,} rows: training repeats data. Raise harvest.n_tokens to at "
                "least train.n_tokens to train on every row once."
            )
        batches = self._batches()
        loss_fn = torch.compile(self.sae.loss) if tc.compile else self.sae.loss
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if tc.autocast == "bf16" and self.device.type == "cuda"
            else nullcontext()
        )
        logger = _WandbLogger(self.cfg, self.dir) if tc.wandb and self.world.is_main else None
        window: list[dict] = []
        t_start = time.monotonic()
        start_step = self.step
        last = {}
        with (
            open(self.dir / METRICS, "a") if self.world.is_main else nullcontext() as log,
            track(
                f"train {self.cfg.sae.name}",
                self.n_steps * tc.batch_size,
                "tokens",
                completed=self.step * tc.batch_size,
            ) as bar,
        ):
            for x in batches:
                if self.step >= self.n_steps:
                    break
                x = x.to(self.device, torch.float32, non_blocking=True) / self.scale
                # Before this step's update, so that update is the resampled features' first,
                # taken at the dropped LR.
                self._maybe_resample(x)
                lr = self.lr * lr_multiplier(self.step, [e["step"] for e in self.resamples], tc, self.n_steps)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                l1 = self.l1_coefficient * lr_factor(self.step, self.l1_warmup_steps)
                dead = self.steps_since_fired >= self.aux_dead_steps  # (only AuxK architectures read it)
                try:
                    out, total = update(
                        self.sae, loss_fn, self.opt, x, l1, dead, self.step, self.n_steps, self.world, autocast
                    )
                except FloatingPointError as e:
                    raise ArtifactError(
                        f"The loss became {e} at step {self.step}; lower the learning rate "
                        f"(train.lr={self.lr / 3:.3g}, say). The last checkpoint in {self.dir} is intact."
                    ) from None
                fired = distributed.any_(out.active.any(dim=0), self.world)
                self.steps_since_fired += 1
                self.steps_since_fired[fired] = 0
                self.step += 1
                window.append(
                    {k: v.detach() for k, v in out.terms.items()}
                    | {"l0": out.active.sum(dim=1).float().mean().detach(), "loss": total.detach()}
                )
                if self.step % tc.log_every == 0 or self.step == self.n_steps:
                    last = self._log(window, log, logger, t_start, start_step, l1, lr)
                    window = []
                    bar.advance(
                        tc.log_every * tc.batch_size
                        if self.step % tc.log_every == 0
                        else (self.step % tc.log_every) * tc.batch_size,
                        loss=f"{last['loss']:.4f}",
                        l0=f"{last['l0']:.1f}",
                    )
                if self.step % tc.checkpoint_every == 0 and self.step < self.n_steps:
                    self._save_checkpoint()
        for b in batches.streams:
            b.close()
        wait = sum(b.wait_seconds for b in batches.streams)
        elapsed = time.monotonic() - t_start
        summary = self._finish(last, elapsed, start_step, wait)
        if logger:
            logger.finish(summary)
        return summary

    def _batches(self) -> _StreamBatches:
        """This rank's part of every global batch: its data streams' sub-batches, in stream order
        (core/distributed.py). One stream is the plain shuffled order of the whole store."""
        tc, S = self.tc, self.tc.data_streams
        ranges = distributed.stream_ranges(self.store.n_chunks, self.store.chunk_rows, self.store.n_tokens, S)
        buffer = tc.shuffle_buffer_chunks if S == 1 else max(2, tc.shuffle_buffer_chunks // S)
        streams = [
            store.ShuffledBatches(  # (one stream: the whole store, seed train.seed, as always)
                self.store,
                tc.batch_size // S,
                row_range=ranges[s],
                n_batches=self.n_steps,
                seed=tc.seed + s,
                buffer_chunks=buffer,
                start_batch=self.step,
                device=self.device,
                prefetch_chunks=tc.prefetch_chunks,
            )
            for s in range(self.world.rank, S, self.world.size)
        ]
        return _StreamBatches(streams)

    @torch.no_grad()
    def _maybe_resample(self, x: torch.Tensor) -> None:
        """At a check, re-initialise the dead features toward badly reconstructed rows of x
        (Bricken et al. 2023; `SAE.resample_`) and zero their Adam moments."""
        if not (self.tc.resample and self.sae.resamples) or not self.resample_schedule.is_check(self.step):
            return
        x = distributed.gather_streams(x, self.world, self.tc.data_streams)  # the same rows on every rank
        dead = self.steps_since_fired >= self.resample_schedule.dead_steps
        if not bool(dead.any()):
            return
        if self.sae.resample_(dead, x, generator=self.generator):
            reset_adam_state_(self.opt, self.sae, dead)
            self.steps_since_fired[dead] = 0
            self.resamples.append({"step": self.step, "n": int(dead.sum())})

    def _log(self, window: list[dict], log, logger, t_start: float, start_step: int, l1: float, lr: float) -> dict:
        """One metrics.jsonl row for the steps since the previous row: mean loss terms and L0; `lr`
        of the window's last update; `resampled`, features resampled within the window (from the
        checkpointed event list, so a resumed run logs what an uninterrupted one does)."""
        keys = list(window[0].keys())
        means = torch.stack([torch.stack([w[k] for w in window]).float().mean() for k in keys])
        distributed.average_([means], self.world)  # each rank saw an equal share of every batch
        row = {k: float(v) for k, v in zip(keys, means)}
        elapsed = max(time.monotonic() - t_start, 1e-9)
        window_start = (self.step - 1) // self.tc.log_every * self.tc.log_every
        row |= {
            "step": self.step,
            "tokens": self.step * self.tc.batch_size,
            "lr": lr,
            "l1_coefficient": l1,
            "resampled": sum(e["n"] for e in self.resamples if window_start <= e["step"] < self.step),
            "frac_dead": float((self.steps_since_fired >= self.resample_schedule.dead_steps).float().mean()),
            "tokens_per_s": (self.step - start_step) * self.tc.batch_size / elapsed,
        }
        if not self.world.is_main:
            return row
        log.write(json.dumps(row) + "\n")
        log.flush()
        if logger:
            logger.log(row)
        return row

    def _finish(self, last: dict, elapsed: float, start_step: int, wait: float) -> dict:
        if not self.world.is_main:  # rank 0 writes the SAE; the others return what it wrote
            distributed.barrier(self.world)
            return artifacts.read_json(self.dir / "summary.json")
        self.sae.fold_input_scale_(self.scale)  # the saved SAE takes raw activations
        if self.base_relu is not None:
            assert isinstance(self.sae, RescaleShiftSAE)  # base_relu is set only for a rescale_shift SAE
            # Folding the frozen biases by 1/s and back by s can miss them by an ulp; the frozen
            # baseline must be the relu SAE exactly, so put its saved tensors back.
            self.sae.copy_baseline_(self.base_relu)
        # read from the whole log, so a resumed run is judged on all of its steps; a rescale_shift
        # fits only a scale and shift on its frozen relu, so it inherits that relu's verdict
        diverged = divergence_of_log(self.dir / METRICS)
        if diverged is None and self.base_relu is not None:
            base = divergence_of_sae(self.base_sae_dir, self.base_relu.meta)
            diverged = {**base, "baseline": str(self.base_sae_dir)} if base else None
        if diverged:
            from gsae_cli.report.tables import setting_words  # the report's wording ("λ 0.1", "k 32")

            k = self.cfg.sae.k if applies("k", self.sae.name) else None
            setting = setting_words({"k": k, "l1_coefficient": self.cfg.sae.l1_coefficient})
            notice(
                f"WARNING: the {self.sae.name} SAE at {setting} in {self.dir}: "
                f"{describe(diverged)}. The SAE is saved, and `gsae eval` and `gsae report` flag it; "
                f"retrain with a lower learning rate (train.lr={self.lr / 3:.3g}, say)."
            )
        meta = {
            "model": self.cfg.model.name,
            "hf_name": self.cfg.model.hf_name,
            "hook": self.cfg.hook,
            "store": str(self.store_path),
            "store_hash": self.store.attrs.get("config_hash"),
            "input_scale_folded": self.scale,
            "train_hash": train_hash(self.cfg),
            "l1_coefficient": self.cfg.sae.l1_coefficient if self.l1_coefficient else None,
            "k": self.cfg.sae.k if applies("k", self.cfg.sae.name) else None,
            "divergence": diverged,
        }
        save_sae(self.dir, self.sae.cpu(), meta)
        rs = self.resample_schedule
        summary = {
            **meta,
            "architecture": self.sae.name,
            "d_model": self.sae.d_model,
            "d_sae": self.sae.d_sae,
            "steps": self.n_steps,
            "tokens": self.n_steps * self.tc.batch_size,
            "lr": self.lr,
            "resample_schedule": {
                "check_steps": list(rs.check_steps),
                "interval_steps": rs.interval_steps,
                "stop_step": rs.stop_step,
                "dead_steps": rs.dead_steps,
                "rewarm_steps": rs.rewarm_steps,
                "lr_factor": rs.lr_factor,
            }
            if self.tc.resample and self.sae.resamples
            else None,
            "resamples": self.resamples,
            "final": last,
            "seconds_this_run": elapsed,
            "tokens_per_s_this_run": (self.n_steps - start_step) * self.tc.batch_size / max(elapsed, 1e-9),
            "data_wait_fraction": wait / max(elapsed, 1e-9),
        }
        artifacts.write_json(self.dir / "summary.json", summary)
        artifacts.mark_complete(self.dir)
        (self.dir / CHECKPOINT).unlink(missing_ok=True)
        distributed.barrier(self.world)
        return summary


class _StreamBatches:
    """Zips the sub-batches of several streams into one batch per step."""

    def __init__(self, streams: list):
        self.streams = streams

    def __iter__(self):
        if len(self.streams) == 1:
            return iter(self.streams[0])
        return (torch.cat(parts) for parts in zip(*self.streams))


class _WandbLogger:
    """Weights & Biases, offline unless the user has configured it (WANDB_MODE / API key)."""

    def __init__(self, cfg: DictConfig, directory: Path):
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "train.wandb=true needs the wandb package: pip install wandb (or .venv/bin/pip install -e '.[wandb]')."
            ) from None
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(
            project=cfg.train.wandb_project,
            dir=str(directory),
            # cast: WANDB_MODE is passed on as set; wandb itself rejects an unknown mode
            mode=cast(Literal["online", "offline", "disabled", "shared"], mode),
            name=directory.name,
            # cast: a DictConfig's container is a dict with str keys (the stub covers every config type)
            config=cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)),
            resume="allow",
            id=directory.name[-12:],
        )

    def log(self, row: dict) -> None:
        self.run.log(row, step=row["step"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish()
