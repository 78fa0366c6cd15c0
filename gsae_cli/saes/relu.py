"""Baseline ("relu") SAE, docs/method.md §1:

pi(x) = W_enc (x - b_dec) + b_enc,   f(x) = ReLU(pi(x)),   x_hat = f W_dec + b_dec
L(x)  = ||x - x_hat||² + λ ||f||₁
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gsae_cli.saes.base import SAE, LossOutput, squared_error


def relu_pre_bias(x: Tensor, W_enc: Tensor, b_dec: Tensor) -> Tensor:
    """(x - b_dec) W_enc, i.e. pi(x) - b_enc. Shared with rescale_shift so both compute pi with
    the same operations (and so agree bit for bit at rescale_shift's init)."""
    return (x - b_dec) @ W_enc


class AffineEncoderSAE(SAE):
    """The parameters, initialisation and input-scale fold that relu, TopK, BatchTopK, JumpReLU
    and the scaled ReLU share: an affine encoder (W_enc [d_model, d_sae], b_enc) and decoder
    (W_dec [d_sae, d_model], b_dec), pi(x) = (x - b_dec) W_enc + b_enc. A subclass names its own
    per-feature vectors in `per_feature` and then calls `init_weights_()`."""

    _resample_encoder_weights: tuple[str, ...] = ("W_enc",)
    _resample_zeroed: tuple[str, ...] = ("b_enc",)

    def __init__(self, d_model: int, d_sae: int, per_feature: tuple[str, ...] = ()) -> None:
        super().__init__(d_model, d_sae)
        self.W_enc = nn.Parameter(torch.empty(d_model, d_sae))
        self.b_enc = nn.Parameter(torch.empty(d_sae))
        # between the encoder's and the decoder's: the parameter order a checkpoint's optimizer
        # state follows, kept as it was before this class existed
        for name in per_feature:
            self.register_parameter(name, nn.Parameter(torch.empty(d_sae)))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_model))
        self.b_dec = nn.Parameter(torch.empty(d_model))

    def pre_activation(self, x: Tensor) -> Tensor:
        """pi(x) [batch, d_sae]."""
        return relu_pre_bias(x, self.W_enc, self.b_dec) + self.b_enc

    @torch.no_grad()
    def init_weights_(self, b_dec_init: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """W_dec rows random unit vectors, W_enc = W_dec.T, b_enc = 0, b_dec = b_dec_init."""
        self._init_decoder_(b_dec_init, generator)
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on x/s: biases × s give pi'(x) = s pi(x/s), so (for an activation that commutes
        with a positive scale) f' = s f(x/s), and x_hat' = f' W_dec + s b_dec = s x_hat(x/s)."""
        s = self._check_scale(scale)
        self.b_enc.mul_(s)
        self.b_dec.mul_(s)


class ReluSAE(AffineEncoderSAE):
    name = "relu"

    def __init__(self, d_model: int, d_sae: int) -> None:
        super().__init__(d_model, d_sae)
        self.init_weights_()

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activation(x))

    def loss(self, x: Tensor, l1_coefficient: float, dead: Tensor | None = None) -> LossOutput:
        f = self.encode(x)
        x_hat = self.decode(f)
        terms = {
            "recon": squared_error(x, x_hat),
            # f >= 0, so ||f||₁ is its plain sum.
            "sparsity": l1_coefficient * f.sum(dim=-1).mean(),
        }
        return LossOutput(terms=terms, f=f, x_hat=x_hat, active=f > 0)
