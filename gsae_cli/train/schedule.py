"""The learning-rate schedule (warm-up, decay, the drop and re-warm after each resampling) and
when resampling checks fall: pure functions of the step and the run's length."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup_steps` steps, then constant."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


@dataclass(frozen=True)
class ResampleSchedule:
    """When dead features are resampled, in steps of a run of `n_steps` (train.resample_* keys are
    fractions of the run, so every run of a sweep is treated alike).

    check_steps:    the steps at which dead features are looked for: round(k * interval * n_steps)
                    for every k >= 1 with k * interval < stop_fraction, counted in fractions so
                    that every run length gets the same checks (4 by default: 10, 20, 30, 40 %);
                    rounding only the check steps, never the count, is what keeps a 244-step and a
                    488-step run alike;
    interval_steps: round(interval * n_steps), the spacing that bounds the re-warm;
    stop_step:      stop_fraction * n_steps (for the record);
    dead_steps:     a feature is dead when it has not fired in this many consecutive updates;
    rewarm_steps:   the cosine re-warm of the LR after a resample (paper App. D: 1,000 steps),
                    capped at half an interval so that it ends before the next check.
    """

    check_steps: tuple[int, ...]
    interval_steps: int
    stop_step: float
    dead_steps: int
    rewarm_steps: int
    lr_factor: float

    @classmethod
    def of(cls, tc: DictConfig, n_steps: int) -> ResampleSchedule:
        interval = max(1, round(tc.resample_interval * n_steps))
        n_checks = math.ceil(tc.resample_stop_fraction / tc.resample_interval - 1e-9) - 1
        checks = sorted({round(k * tc.resample_interval * n_steps) for k in range(1, n_checks + 1)})
        return cls(
            check_steps=tuple(c for c in checks if 0 < c < n_steps),
            interval_steps=interval,
            stop_step=tc.resample_stop_fraction * n_steps,
            dead_steps=max(1, round(tc.resample_dead_window * n_steps)),
            rewarm_steps=max(1, min(tc.resample_rewarm_steps, interval // 2)),
            lr_factor=float(tc.resample_lr_factor),
        )

    def is_check(self, step: int) -> bool:
        return step in self.check_steps


def decay_factor(step: int, n_steps: int, fraction: float) -> float:
    """Linear decay to 0 over the last `fraction` of the run's `n_steps` steps: 1 before it, then
    (n_steps - step) / decay_steps, so the last update is 1/decay_steps of the full rate."""
    decay_steps = round(fraction * n_steps)
    if decay_steps <= 0:
        return 1.0
    return min(1.0, (n_steps - step) / decay_steps)


def lr_multiplier(step: int, resample_steps: Sequence[int], tc: DictConfig, n_steps: int) -> float:
    """The factor on the base LR for the update at `step` (0-based): the linear warm-up, times the
    linear decay over the last train.lr_decay_fraction of the run, times the re-warm after the
    latest resample r <= step (resamples happen before that step's update):
    f0 + (1 - f0) (1 - cos(pi (step - r) / rewarm)) / 2 for r <= step < r + rewarm, f0 =
    train.resample_lr_factor; 1 otherwise. A pure function of its arguments, so a resumed run
    recomputes exactly the LRs of an uninterrupted one from the checkpointed resample steps."""
    factor = lr_factor(step, tc.lr_warmup_steps) * decay_factor(step, n_steps, tc.lr_decay_fraction)
    past = [r for r in resample_steps if r <= step]
    if tc.resample and past:
        sched = ResampleSchedule.of(tc, n_steps)
        since = step - max(past)
        if since < sched.rewarm_steps:
            f0 = sched.lr_factor
            factor *= f0 + (1.0 - f0) * (1.0 - math.cos(math.pi * since / sched.rewarm_steps)) / 2.0
    return factor


def sparsity_warmup_steps(sc: DictConfig, tc: DictConfig, n_steps: int) -> int:
    """Steps over which λ rises linearly to its value: jumprelu's own warm-up (its paper's 10,000
    steps, capped at a tenth of the run so a short run is not spent warming up), else
    train.l1_warmup_steps."""
    if sc.name == "jumprelu":
        return min(int(sc.sparsity_warmup_steps), math.ceil(0.1 * n_steps))
    return int(tc.l1_warmup_steps)


def aux_dead_steps(sc: DictConfig, tc: DictConfig, n_steps: int) -> int:
    """AuxK's dead window in steps: sae.aux_k_dead_tokens (Gao et al.'s 10M tokens), capped at
    train.resample_dead_window of the run (gsae's dead window for every architecture), so that a
    short run has dead latents to revive at all."""
    paper = math.ceil(int(sc.aux_k_dead_tokens) / int(tc.batch_size))
    return max(1, min(paper, round(tc.resample_dead_window * n_steps)))
