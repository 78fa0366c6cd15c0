"""Scaled ReLU SAE, docs/method.md §1: a ReLU SAE with a learned per-feature scale t in place of
Gated's Heaviside gate, proposed by a reader in public discussion of the Gated SAE paper (no
published result; issue 24 asks what the gate adds beyond it):

    f(x)  = ReLU((x - b_dec) W_enc + b_enc),      t = exp(r_scale) > 0 per feature
    x_hat = (t ⊙ f) W_dec + b_dec                  (the SAE's reconstruction, also at inference)
    L     = ||x - (f sg(W_dec) + sg(b_dec))||² + ||x - x_hat||² + λ ||f||₁

sg stops gradients (the first term trains only the encoder, like Gated's frozen auxiliary
decoder, b_dec reached only through the encoder's input; `freeze_aux_decoder=false` lets it
train the decoder too). L1 acts on f, and t undoes its shrinkage in x_hat. t starts at 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gsae_cli.saes.base import LossOutput, squared_error
from gsae_cli.saes.relu import AffineEncoderSAE


class ScaledReluSAE(AffineEncoderSAE):
    name = "scaled_relu"
    _resample_zeroed = ("b_enc", "r_scale")
    r_scale: Tensor  # log t [d_sae]

    def __init__(self, d_model: int, d_sae: int, *, freeze_aux_decoder: bool = True) -> None:
        super().__init__(d_model, d_sae, per_feature=("r_scale",))
        self.freeze_aux_decoder = bool(freeze_aux_decoder)
        self.init_weights_()

    @property
    def options(self) -> dict[str, Any]:
        return {"freeze_aux_decoder": self.freeze_aux_decoder}

    def unscaled(self, x: Tensor) -> Tensor:
        """f(x) = ReLU(pi(x)) [batch, d_sae], what the L1 penalty sees."""
        return torch.relu(self.pre_activation(x))

    def encode(self, x: Tensor) -> Tensor:
        """t ⊙ f(x): the features the decoder reconstructs from (zero exactly where f is)."""
        return self.unscaled(x) * torch.exp(self.r_scale)

    def loss(self, x: Tensor, l1_coefficient: float, dead: Tensor | None = None) -> LossOutput:
        f = self.unscaled(x)
        scaled = f * torch.exp(self.r_scale)
        x_hat = self.decode(scaled)
        if self.freeze_aux_decoder:
            W_dec, b_dec = self.W_dec.detach(), self.b_dec.detach()
        else:
            W_dec, b_dec = self.W_dec, self.b_dec
        terms = {
            "recon": squared_error(x, x_hat),
            "sparsity": l1_coefficient * f.sum(dim=-1).mean(),
            "aux": squared_error(x, f @ W_dec + b_dec),
        }
        return LossOutput(terms=terms, f=scaled, x_hat=x_hat, active=f > 0)

    @torch.no_grad()
    def init_weights_(self, b_dec_init: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """As relu, with t = 1. The fold is relu's too: t is unchanged, so x_hat' = s x_hat(x/s)."""
        super().init_weights_(b_dec_init, generator)
        self.r_scale.zero_()
