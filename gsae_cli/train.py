"""`gsae train`: fit the configured SAE on its activation store, as spec §4 prescribes, with
atomic checkpoints so that a killed run resumes and ends where an uninterrupted one ends."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gsae_cli import artifacts, status, store
from gsae_cli.config import train_dir, train_hash, train_identity, to_yaml
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.models import resolve_device
from gsae_cli.progress import notice, track
from gsae_cli.sae_io import load_sae, read_sae_meta, save_sae
from gsae_cli.saes import SAE, RescaleShiftSAE, build_sae, geometric_median, reset_adam_state_

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    path: Path
    summary: dict
    reused: bool


def run_train(cfg: DictConfig, force: bool = False) -> TrainResult:
    if cfg.sae.path:  # an SAE from elsewhere: nothing to train
        path = Path(cfg.sae.path).expanduser()
        return TrainResult(path, read_sae_meta(path), True)
    directory = train_dir(cfg)
    base = None
    if cfg.sae.name == "rescale_shift":  # spec §3: built on the relu SAE of the same config
        base = run_train(_with_sae_name(cfg, "relu")).path
    with artifacts.locked(directory, f"the {cfg.sae.name} SAE"):
        if force:
            artifacts.remove(directory)
        if artifacts.is_complete(directory):
            notice(f"reusing trained SAE {directory}")
            return TrainResult(directory, artifacts.read_json(directory / "summary.json"), True)
        from gsae_cli.harvest import run_harvest

        store_path = run_harvest(OmegaConf.merge(cfg, {"hooks": []}))[0].path
        with status.recording(directory):
            summary = Trainer(cfg, directory, store_path, base).fit()
    return TrainResult(directory, summary, False)


def _with_sae_name(cfg: DictConfig, name: str) -> DictConfig:
    return OmegaConf.merge(cfg, {"sae": {"name": name}})


def input_scale(sample: torch.Tensor, outlier_factor: float) -> tuple[float, float]:
    """(scale, outlier_threshold) from a sample of raw activation rows.

    Rows whose norm exceeds `outlier_factor` × the median norm are outliers (in SmolLM2 about 1 in
    5,000 rows, first positions acting as attention sinks, with norms 100x the median); they
    would dominate both E||x||² and the reconstruction loss. scale = sqrt(E||x||²) over the
    other rows. outlier_factor <= 0 disables this (threshold = inf)."""
    norms = sample.float().norm(dim=1)
    if outlier_factor > 0:
        threshold = float(outlier_factor * norms.median())
        kept = norms[norms <= threshold]
    else:
        threshold, kept = math.inf, norms
    scale = math.sqrt(float(kept.double().pow(2).mean()))
    if not math.isfinite(scale) or scale <= 0:
        raise ArtifactError("The activation store holds only zero or non-finite activations; "
                            "check the hook and rebuild it with `gsae harvest --force`.")
    return scale, threshold


def drop_outliers(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """The rows of x whose norm is at most `threshold` (same units as x)."""
    if math.isinf(threshold):
        return x
    return x[x.norm(dim=1) <= threshold]


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup_steps` steps, then constant."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class Trainer:
    def __init__(self, cfg: DictConfig, directory: Path, store_path: Path, base_sae_dir: Path | None):
        self.cfg, self.tc, self.dir = cfg, cfg.train, directory
        self.store = store.open_store(store_path)
        self.store_path = store_path
        self.device = resolve_device(cfg.device)
        self.n_steps = max(1, self.tc.n_tokens // self.tc.batch_size)
        self.generator = torch.Generator(device="cpu").manual_seed(self.tc.seed)
        self.sample = self._sample_rows(max(self.tc.norm_sample_tokens, self.tc.geometric_median_tokens))
        # Inputs are divided by one scalar so that E||x||² = 1 (spec §4, a stated deviation);
        # the scalar is folded into the saved weights. Rare attention-sink rows (norms ~100x
        # the median) are left out of the estimate and of training: see input_scale().
        self.scale, self.outlier_threshold = input_scale(self.sample, self.tc.outlier_norm_factor)
        self.sae = self._build(base_sae_dir).to(self.device)
        del self.sample  # only needed for the set-up
        params = [p for p in self.sae.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=self.tc.lr, betas=(self.tc.adam_beta1, self.tc.adam_beta2))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.tc.lr_warmup_steps))
        self.steps_since_fired = torch.zeros(self.sae.d_sae, dtype=torch.long, device=self.device)
        self.step = 0

    # ---- set-up -------------------------------------------------------------------------

    def _build(self, base_sae_dir: Path | None) -> SAE:
        d_model = self.store.d_model
        if base_sae_dir is not None:
            relu = load_sae(base_sae_dir)
            relu.fold_input_scale_(1.0 / self.scale)  # back to the normalised units it trained in
            return RescaleShiftSAE.from_relu(relu)
        sc = self.cfg.sae
        options = {"tie_weights": sc.tie_weights, "aux_loss": sc.aux_loss,
                   "freeze_aux_decoder": sc.freeze_aux_decoder} if sc.name == "gated" else {}
        sae = build_sae(sc.name, d_model, sc.expansion_factor * d_model, **options)
        sample = drop_outliers(self.sample, self.outlier_threshold)[: self.tc.geometric_median_tokens]
        sae.init_weights_(geometric_median(sample / self.scale), generator=self.generator)
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
        state = {"step": self.step, "sae": self.sae.state_dict(), "opt": self.opt.state_dict(),
                 "sched": self.sched.state_dict(), "steps_since_fired": self.steps_since_fired,
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "identity": train_identity(self.cfg)}
        tmp = self.dir / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / CHECKPOINT)

    def _load_checkpoint(self) -> bool:
        path = self.dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"The checkpoint {path} cannot be read ({type(e).__name__}); remove it "
                                f"(rm {path}) to restart this training, or rerun with --force.") from None
        if state.get("identity") != train_identity(self.cfg):
            raise ArtifactError(f"The checkpoint in {self.dir} belongs to a different config; rerun with --force.")
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.steps_since_fired = state["steps_since_fired"].to(self.device)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        # Drop log lines written after the checkpoint (at step <= it they were logged before saving).
        log = self.dir / METRICS
        if log.exists():
            kept = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
            artifacts.atomic_write_text(log, "".join(ln + "\n" for ln in kept))
        return True

    # ---- the loop -------------------------------------------------------------------------

    def fit(self) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        artifacts.atomic_write_text(self.dir / "config.yaml", to_yaml(self.cfg))
        if self._load_checkpoint():
            notice(f"resuming training at step {self.step:,} of {self.n_steps:,}")
        tc = self.tc
        batches = store.ShuffledBatches(
            self.store, tc.batch_size, n_tokens=self.n_steps * tc.batch_size, seed=tc.seed,
            buffer_chunks=tc.shuffle_buffer_chunks, start_batch=self.step, device=self.device)
        loss_fn = torch.compile(self.sae.loss) if tc.compile else self.sae.loss
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if tc.autocast == "bf16" and self.device.type == "cuda" else nullcontext())
        logger = _WandbLogger(self.cfg, self.dir) if tc.wandb else None
        window: list[dict] = []
        t_start = time.monotonic()
        start_step = self.step
        last = {}
        with open(self.dir / METRICS, "a") as log, \
                track(f"train {self.cfg.sae.name}", self.n_steps * tc.batch_size, "tokens",
                      completed=self.step * tc.batch_size) as bar:
            for x in batches:
                if self.step >= self.n_steps:
                    break
                x = drop_outliers(x.to(self.device, torch.float32, non_blocking=True),
                                  self.outlier_threshold) / self.scale
                l1 = self.cfg.sae.l1_coefficient * lr_factor(self.step, tc.l1_warmup_steps)
                with autocast:
                    out = loss_fn(x, l1)
                    total = out.total()
                if not torch.isfinite(total):
                    raise ArtifactError(
                        f"The loss became {total.item()} at step {self.step}; lower train.lr or check the "
                        f"store for outliers. The last checkpoint in {self.dir} is intact.")
                self.opt.zero_grad(set_to_none=True)
                total.backward()
                self.sae.constrain_decoder_grad_()
                self.opt.step()
                self.sae.renormalise_decoder_()
                self.sched.step()
                fired = out.active.any(dim=0)
                self.steps_since_fired += 1
                self.steps_since_fired[fired] = 0
                self._maybe_resample(x)
                self.step += 1
                window.append({k: v.detach() for k, v in out.terms.items()} |
                              {"l0": out.active.sum(dim=1).float().mean().detach(), "loss": total.detach()})
                if self.step % tc.log_every == 0 or self.step == self.n_steps:
                    last = self._log(window, log, logger, t_start, start_step, l1)
                    window = []
                    bar.advance(tc.log_every * tc.batch_size if self.step % tc.log_every == 0
                                else (self.step % tc.log_every) * tc.batch_size,
                                loss=f"{last['loss']:.4f}", l0=f"{last['l0']:.1f}")
                if self.step % tc.checkpoint_every == 0 and self.step < self.n_steps:
                    self._save_checkpoint()
        batches.close()
        wait = batches.wait_seconds
        elapsed = time.monotonic() - t_start
        summary = self._finish(last, elapsed, start_step, wait)
        if logger:
            logger.finish(summary)
        return summary

    @torch.no_grad()
    def _maybe_resample(self, x: torch.Tensor) -> None:
        tc = self.tc
        if not tc.resample or self.step == 0 or self.step % tc.resample_every:
            return
        if self.step >= tc.resample_stop_fraction * self.n_steps:
            return
        dead = self.steps_since_fired >= tc.resample_window
        if not bool(dead.any()):
            return
        if self.sae.resample_(dead, x, generator=self.generator):
            reset_adam_state_(self.opt, self.sae, dead)
            self.steps_since_fired[dead] = 0

    def _log(self, window: list[dict], log, logger, t_start: float, start_step: int, l1: float) -> dict:
        keys = window[0].keys()
        row = {k: float(torch.stack([w[k] for w in window]).float().mean()) for k in keys}
        elapsed = max(time.monotonic() - t_start, 1e-9)
        row |= {"step": self.step, "tokens": self.step * self.tc.batch_size,
                "lr": self.sched.get_last_lr()[0], "l1_coefficient": l1,
                "frac_dead": float((self.steps_since_fired >= self.tc.resample_window).float().mean()),
                "tokens_per_s": (self.step - start_step) * self.tc.batch_size / elapsed}
        log.write(json.dumps(row) + "\n")
        log.flush()
        if logger:
            logger.log(row)
        return row

    def _finish(self, last: dict, elapsed: float, start_step: int, wait: float) -> dict:
        self.sae.fold_input_scale_(self.scale)  # the saved SAE takes raw activations
        meta = {"model": self.cfg.model.name, "hf_name": self.cfg.model.hf_name, "hook": self.cfg.hook,
                "store": str(self.store_path), "store_hash": self.store.attrs.get("config_hash"),
                "input_scale_folded": self.scale, "train_hash": train_hash(self.cfg),
                "outlier_norm_threshold": self.outlier_threshold,
                "l1_coefficient": self.cfg.sae.l1_coefficient}
        save_sae(self.dir, self.sae.cpu(), meta)
        summary = {**meta, "architecture": self.sae.name, "d_model": self.sae.d_model, "d_sae": self.sae.d_sae,
                   "steps": self.n_steps, "tokens": self.n_steps * self.tc.batch_size,
                   "final": last, "seconds_this_run": elapsed,
                   "tokens_per_s_this_run": (self.n_steps - start_step) * self.tc.batch_size / max(elapsed, 1e-9),
                   "data_wait_fraction": wait / max(elapsed, 1e-9)}
        artifacts.write_json(self.dir / "summary.json", summary)
        artifacts.mark_complete(self.dir)
        (self.dir / CHECKPOINT).unlink(missing_ok=True)
        return summary


class _WandbLogger:
    """Weights & Biases, offline unless the user has configured it (WANDB_MODE / API key)."""

    def __init__(self, cfg: DictConfig, directory: Path):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.wandb=true needs the wandb package: pip install wandb "
                              "(or .venv/bin/pip install -e '.[wandb]').") from None
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=cfg.train.wandb_project, dir=str(directory), mode=mode,
                              name=directory.name, config=OmegaConf.to_container(cfg, resolve=True),
                              resume="allow", id=directory.name[-12:])

    def log(self, row: dict) -> None:
        self.run.log(row, step=row["step"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish()
