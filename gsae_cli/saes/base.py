"""The SAE interface every architecture implements, plus the shared pure functions.

`train`, `eval` and `export` only ever call what is defined here, so they never branch on the
architecture. Shapes: activations `x` are `[batch, d_model]`, features `f` are `[batch, d_sae]`,
`W_dec` is `[d_sae, d_model]` (row i = feature i's direction), encoders are `[d_model, d_sae]`.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class LossOutput:
    """What one training forward pass produces.

    terms:  named scalar loss terms; the optimiser minimises their sum (`total()`).
    f:      feature activations `[batch, d_sae]` used by the pass.
    x_hat:  reconstruction `[batch, d_model]`.
    active: bool `[batch, d_sae]`, which features fire (what L0 counts); for most architectures
            `f != 0`, for Gated SAEs the gate `pi_gate > 0`.
    stats:  named scalars that are not optimised, for the architecture's `after_step_`.
    """

    terms: dict[str, Tensor]
    f: Tensor
    x_hat: Tensor
    active: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)

    def total(self) -> Tensor:
        return sum(self.terms.values())  # type: ignore[return-value]


@dataclass(frozen=True)
class ParamSlice:
    """Feature-indexed slice of a parameter: `getattr(sae, name).index_select(dim, index)`."""

    name: str
    dim: int
    index: Tensor


# ---------------------------------------------------------------------------------------------
# Shared pure functions
# ---------------------------------------------------------------------------------------------


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean over the batch of ||x - x_hat||² (summed over d_model): the paper's recon term."""
    return (x - x_hat).pow(2).sum(dim=-1).mean()


@torch.no_grad()
def project_out_parallel_grad(W_dec: Tensor) -> None:
    """Remove from each row of `W_dec.grad` its component parallel to that row, in place.

    With unit-norm rows, the parallel component would only change row norms, which
    `renormalise_rows_` undoes anyway; removing it keeps Adam's moments from being spent on it.
    No-op when there is no gradient (e.g. a frozen decoder).
    """
    grad = W_dec.grad
    if grad is None:
        return
    sq_norm = W_dec.pow(2).sum(dim=-1, keepdim=True).clamp_min(1e-12)
    parallel = (grad * W_dec).sum(dim=-1, keepdim=True) / sq_norm
    grad.sub_(parallel * W_dec)


@torch.no_grad()
def renormalise_rows_(W_dec: Tensor) -> None:
    """Rescale each row of `W_dec` to unit L2 norm, in place (no autograd)."""
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def geometric_median(x: Tensor, n_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """Point minimising the sum of Euclidean distances to the rows of `x` [n, d] (Weiszfeld).

    Iterates y <- Σ w_i x_i / Σ w_i with w_i = 1 / ||x_i - y||, starting at the mean, until the
    step is below `tol` (relative to the data scale). Distances are floored at a tiny epsilon
    so that landing exactly on a data point does not divide by zero. Computed in float64,
    returned in x's dtype. Unlike the mean, a few outliers barely move it (why b_dec uses it).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median expects a non-empty [n, d] tensor, got {tuple(x.shape)}")
    pts = x.to(torch.float64)
    y = pts.mean(dim=0)
    scale = float(pts.std(dim=0).norm()) if pts.shape[0] > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    eps = 1e-12 * scale
    for _ in range(n_iter):
        w = 1.0 / (pts - y).norm(dim=-1).clamp_min(eps)
        y_new = (w[:, None] * pts).sum(dim=0) / w.sum()
        step = float((y_new - y).norm())
        y = y_new
        if step <= tol * scale:
            break
    return y.to(x.dtype)


def random_unit_rows(n_rows: int, n_cols: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Rows drawn isotropically (normal, then normalised), on `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    v = torch.randn(n_rows, n_cols, generator=generator, device=device, dtype=torch.float32)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v.to(device=like.device, dtype=like.dtype)


def reset_adam_state_(optimizer: torch.optim.Optimizer, sae: SAE, dead_mask: Tensor) -> None:
    """Zero the optimiser's per-element state (Adam's exp_avg, exp_avg_sq, ...) for the rows /
    columns of resampled features, so stale moments do not immediately push them back.

    Works for any optimiser whose state tensors have the parameter's shape; `step` counters
    (scalars) are left alone.
    """
    params = dict(sae.named_parameters())
    for sl in sae.feature_slices(dead_mask):
        p = params.get(sl.name)
        if p is None or p not in optimizer.state:
            continue
        for value in optimizer.state[p].values():
            if isinstance(value, Tensor) and value.shape == p.shape:
                value.index_fill_(sl.dim, sl.index.to(value.device), 0.0)


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


class SAE(nn.Module, abc.ABC):
    """A sparse autoencoder: `encode` x -> f, `decode` f -> x_hat, `loss` -> named terms.

    Subclasses hold `W_dec` [d_sae, d_model] (rows unit norm) and `b_dec` [d_model] and set
    `name` (the registry key). Extra constructor options must be keyword arguments and be
    reported by `options` so that `build_sae(name, d_model, d_sae, **sae.options)` rebuilds an
    SAE whose state dict loads.
    """

    name: ClassVar[str]
    W_dec: Tensor
    b_dec: Tensor
    meta: dict  # only on SAEs read from disk: set by sae_io.load_sae

    # For the generic resample_: encoder weights whose dead columns get the new direction, and
    # per-feature vectors zeroed for dead features. Subclasses that resample set these.
    _resample_encoder_weights: tuple[str, ...] = ()
    _resample_zeroed: tuple[str, ...] = ()
    # False: the trainer never resamples this architecture (its paper revives or keeps dead
    # latents its own way), so the train.resample_* keys do not shape it.
    resamples: ClassVar[bool] = True

    def __init__(self, d_model: int, d_sae: int) -> None:
        super().__init__()
        if d_model <= 0 or d_sae <= 0:
            raise ValueError(f"d_model and d_sae must be positive, got {d_model}, {d_sae}")
        self.d_model = d_model
        self.d_sae = d_sae

    # ---- the calls train / eval / export use ----------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        """Constructor keyword options (beyond d_model, d_sae) needed to rebuild this SAE."""
        return {}

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Feature activations f [batch, d_sae]."""

    def decode(self, f: Tensor) -> Tensor:
        """x_hat = f W_dec + b_dec."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def active_mask(self, x: Tensor) -> Tensor:
        """bool [batch, d_sae]: which features fire on x (what L0 counts)."""
        return self.encode(x) != 0

    def encode_with_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(encode(x), active_mask(x)), from one encoder pass where the architecture allows."""
        f = self.encode(x)
        return f, f != 0

    @abc.abstractmethod
    def loss(self, x: Tensor, l1_coefficient: float, dead: Tensor | None = None) -> LossOutput:
        """Named scalar terms (their sum is optimised), plus f, x_hat and the active mask.
        `dead` (bool [d_sae], latents that have not fired for the trainer's dead window) is used
        by architectures with an auxiliary loss on dead latents and ignored by the rest."""

    def after_step_(self, out: LossOutput, step: int, n_steps: int) -> None:
        """Called by the trainer after the optimiser step `step` (0-based) of `n_steps` with that
        step's `loss` output: for state learnt outside the gradient (BatchTopK's threshold)."""

    @property
    def decoder_directions(self) -> Tensor:
        """Feature directions, one per row: W_dec [d_sae, d_model]."""
        return self.W_dec

    @property
    def decoder_trainable(self) -> bool:
        return bool(self.W_dec.requires_grad)

    def constrain_decoder_grad_(self) -> None:
        """Call between backward and the optimiser step (no-op for a frozen decoder)."""
        if self.decoder_trainable:
            project_out_parallel_grad(self.W_dec)

    def renormalise_decoder_(self) -> None:
        """Call after the optimiser step (no-op for a frozen decoder, which stays bit-exact)."""
        if self.decoder_trainable:
            renormalise_rows_(self.W_dec)

    @abc.abstractmethod
    def init_weights_(self, b_dec_init: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """The initialisation of docs/method.md §2; `b_dec_init` is the geometric median of a sample."""

    @abc.abstractmethod
    def fold_input_scale_(self, scale: float) -> None:
        """Rewrite parameters in place so that an SAE trained on x / scale works on raw x:
        after folding, forward(x) == scale * old_forward(x / scale), encode(x) ==
        scale * old_encode(x / scale) (so the same features fire, in raw units)."""

    # ---- dead-feature resampling -------------------------------------------------------------

    def feature_slices(self, dead_mask: Tensor) -> list[ParamSlice]:
        """Trainable parameter slices belonging to the features in `dead_mask` [d_sae] bool."""
        idx = dead_mask.nonzero().squeeze(-1).to(self.W_dec.device)
        slices = [ParamSlice(n, 1, idx) for n in self._resample_encoder_weights]
        slices += [ParamSlice(n, 0, idx) for n in self._resample_zeroed]
        slices.append(ParamSlice("W_dec", 0, idx))
        return slices

    @torch.no_grad()
    def resample_(
        self,
        dead_mask: Tensor,
        x_bad: Tensor,
        generator: torch.Generator | None = None,
        encoder_scale: float = 0.2,
    ) -> list[ParamSlice]:
        """Re-initialise dead features toward inputs the SAE reconstructs badly.

        For each dead feature, draw an input from `x_bad` [n, d_model] (same units as training
        inputs) with probability proportional to its squared reconstruction error
        ||x - x_hat||², and let d = (x - x_hat) / ||x - x_hat||:
          - decoder row  = d;
          - encoder column(s) = d · encoder_scale · (mean norm of alive encoder columns);
          - per-feature encoder vectors (biases, r_mag) = 0.
        Returns the touched slices; pass the same `dead_mask` to `reset_adam_state_`.
        """
        dead_mask = dead_mask.to(device=self.W_dec.device, dtype=torch.bool)
        if dead_mask.shape != (self.d_sae,):
            raise ValueError(f"dead_mask must be [{self.d_sae}], got {tuple(dead_mask.shape)}")
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return []
        x_bad = x_bad.to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        residual = x_bad - self(x_bad)
        weight = residual.pow(2).sum(dim=-1).to(torch.float64)
        if float(weight.sum()) <= 0.0:
            weight = torch.ones_like(weight)  # nothing is badly reconstructed: pick uniformly
        n_candidates = int((weight > 0).sum())
        gen_device = generator.device if generator is not None else weight.device
        picks = torch.multinomial(
            weight.to(gen_device), n_dead, replacement=n_dead > n_candidates, generator=generator
        ).to(weight.device)
        directions = residual[picks]
        norms = directions.norm(dim=-1, keepdim=True)
        # A zero residual has no direction: fall back to a random one.
        fallback = random_unit_rows(n_dead, self.d_model, generator, directions)
        directions = torch.where(norms > 0, directions / norms.clamp_min(1e-12), fallback)

        idx = dead_mask.nonzero().squeeze(-1)
        self.W_dec[idx] = directions
        ref_name = self._resample_encoder_weights[0]
        ref = getattr(self, ref_name)
        alive = ~dead_mask
        ref_norm = ref[:, alive].norm(dim=0).mean() if bool(alive.any()) else ref.new_tensor(1.0)
        for wname in self._resample_encoder_weights:
            getattr(self, wname)[:, idx] = directions.T * (encoder_scale * ref_norm)
        for vname in self._resample_zeroed:
            getattr(self, vname)[idx] = 0.0
        return self.feature_slices(dead_mask)

    # ---- helpers for subclasses ----------------------------------------------------------

    @staticmethod
    def _check_scale(scale: float) -> float:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"input scale must be a positive finite number, got {scale}")
        return scale

    @torch.no_grad()
    def _init_decoder_(self, b_dec_init: Tensor | None, generator: torch.Generator | None) -> None:
        """W_dec rows random unit vectors; b_dec = b_dec_init (or 0)."""
        self.W_dec.copy_(random_unit_rows(self.d_sae, self.d_model, generator, self.W_dec))
        if b_dec_init is None:
            self.b_dec.zero_()
        else:
            if b_dec_init.shape != (self.d_model,):
                raise ValueError(f"b_dec_init must be [{self.d_model}], got {tuple(b_dec_init.shape)}")
            self.b_dec.copy_(b_dec_init)
