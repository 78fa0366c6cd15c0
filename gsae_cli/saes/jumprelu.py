"""JumpReLU SAE, docs/method.md §1 (Rajamanoharan et al. 2024b, "Jumping Ahead", arXiv 2407.14435):

    pi(x) = ReLU(x W_enc + b_enc)                 (no b_dec subtracted: the paper's encoder)
    f(x)  = JumpReLU_θ(pi) = pi ⊙ H(pi - θ),       θ = exp(log_threshold) > 0 per feature
    x_hat = f W_dec + b_dec
    L     = ||x - x_hat||² + λ ||f||₀,             ||f||₀ = Σ_i H(pi_i - θ_i)

H has no useful derivative, so θ learns through the paper's straight-through estimators with a
rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth ε (its eq. 11 and 12):

    ∂/∂θ JumpReLU_θ(z) := -(θ/ε) K((z - θ)/ε)        ∂/∂θ H(z - θ) := -(1/ε) K((z - θ)/ε)

while z gets JumpReLU's true derivative H(z - θ) and no gradient through the step of the L0 term.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gsae_cli.saes.base import LossOutput, squared_error
from gsae_cli.saes.relu import AffineEncoderSAE


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1 where -1/2 < u < 1/2, else 0 (the paper's kernel), in u's dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = (z > theta).to(grad.dtype) * grad
        grad_theta = -(theta / eps) * rectangle((z - theta) / eps) * grad
        return grad_z, _sum_to(grad_theta, theta), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * rectangle((z - theta) / eps) * grad
        return torch.zeros_like(z), _sum_to(grad_theta, theta), None


def _sum_to(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a broadcast gradient [batch, d_sae] back to θ's shape [d_sae]."""
    return grad.sum(dim=tuple(range(grad.ndim - like.ndim))) if grad.ndim > like.ndim else grad


def jump_relu(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """z ⊙ H(z - θ), with the paper's pseudo-derivative for θ (module docstring)."""
    return _JumpReLU.apply(z, theta, bandwidth)


def step(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """H(z - θ) as floats, with the paper's pseudo-derivative for θ and none for z."""
    return _Step.apply(z, theta, bandwidth)


class JumpReLUSAE(AffineEncoderSAE):
    name = "jumprelu"
    resamples = False  # the paper neither resamples nor uses an auxiliary loss
    log_threshold: Tensor  # log θ [d_sae]

    def __init__(self, d_model: int, d_sae: int, *, bandwidth: float = 0.001, threshold_init: float = 0.001) -> None:
        super().__init__(d_model, d_sae, per_feature=("log_threshold",))
        if not (bandwidth > 0 and threshold_init > 0):
            raise ValueError(f"bandwidth and threshold_init must be positive, got {bandwidth}, {threshold_init}")
        self.bandwidth = float(bandwidth)
        self.threshold_init = float(threshold_init)
        self.init_weights_()

    @property
    def options(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "threshold_init": self.threshold_init}

    @property
    def threshold(self) -> Tensor:
        """θ [d_sae], positive by construction."""
        return torch.exp(self.log_threshold)

    def pre_activation(self, x: Tensor) -> Tensor:
        """ReLU(x W_enc + b_enc), as the paper's pseudo-code feeds JumpReLU and the L0 step (with
        θ > 0 the ReLU changes no output, only which inputs fall inside the kernel's window)."""
        return torch.relu(x @ self.W_enc + self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        return jump_relu(self.pre_activation(x), self.threshold, self.bandwidth)

    def encode_with_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.pre_activation(x)
        theta = self.threshold
        return jump_relu(pre, theta, self.bandwidth), pre > theta

    def active_mask(self, x: Tensor) -> Tensor:
        return self.pre_activation(x) > self.threshold

    def loss(self, x: Tensor, l1_coefficient: float, dead: Tensor | None = None) -> LossOutput:
        """`l1_coefficient` is the paper's λ, here the coefficient of the L0 penalty."""
        pre = self.pre_activation(x)
        theta = self.threshold
        f = jump_relu(pre, theta, self.bandwidth)
        x_hat = self.decode(f)
        terms = {
            "recon": squared_error(x, x_hat),
            "sparsity": l1_coefficient * step(pre, theta, self.bandwidth).sum(dim=-1).mean(),
        }
        return LossOutput(terms=terms, f=f, x_hat=x_hat, active=pre > theta)

    @torch.no_grad()
    def init_weights_(self, b_dec_init: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Gemma Scope §3.2 (the same team's recipe): W_dec rows random unit vectors, W_enc = W_dec.T,
        θ = threshold_init, b_enc = b_dec = 0 (so b_dec_init is ignored)."""
        super().init_weights_(None, generator)
        self.log_threshold.fill_(math.log(self.threshold_init))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on x/s: pi'(x) = x W_enc + s b_enc = s pi(x/s), and with θ' = s θ the same
        features fire, f' = s f(x/s); b_dec × s gives x_hat' = s x_hat(x/s)."""
        super().fold_input_scale_(scale)
        self.log_threshold.add_(math.log(scale))
