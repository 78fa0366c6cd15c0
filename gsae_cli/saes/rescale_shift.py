""" "Baseline + rescale & shift", docs/method.md §1 (the paper's §5.2, Fig. 9).

A trained relu SAE is frozen (W_enc, b_enc, W_dec, b_dec kept as buffers, so they are in the
state dict but not in `parameters()`); only a per-feature scale exp(r_mag) and shift b_mag of the
magnitudes of the features it already turns on are learnt, on reconstruction alone:

    pi(x)     = W_enc (x - b_dec) + b_enc
    active(x) = 1[pi(x) > 0]
    f_rs(x)   = active(x) ⊙ ReLU(exp(r_mag) ⊙ (pi(x) - b_enc) + b_mag)
    L_rs(x)   = ||x - (f_rs W_dec + b_dec)||²

r_mag = 0, b_mag = b_enc at init reproduces the relu SAE exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gsae_cli.saes.base import SAE, LossOutput, ParamSlice, random_unit_rows, squared_error
from gsae_cli.saes.relu import ReluSAE, relu_pre_bias


class RescaleShiftSAE(SAE):
    name = "rescale_shift"
    FROZEN = ("W_enc", "b_enc", "W_dec", "b_dec")  # the relu baseline's tensors
    W_enc: Tensor  # buffers (W_dec, b_dec are declared on SAE)
    b_enc: Tensor

    def __init__(self, d_model: int, d_sae: int) -> None:
        super().__init__(d_model, d_sae)
        # Frozen baseline: buffers, so optimisers never see them but state dicts carry them.
        self.register_buffer("W_enc", torch.empty(d_model, d_sae))
        self.register_buffer("b_enc", torch.zeros(d_sae))
        self.register_buffer("W_dec", torch.empty(d_sae, d_model))
        self.register_buffer("b_dec", torch.zeros(d_model))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))
        # A usable placeholder baseline until from_relu / load_state_dict fills in the real one.
        with torch.no_grad():
            self.W_dec.copy_(random_unit_rows(d_sae, d_model, None, self.W_dec))
            self.W_enc.copy_(self.W_dec.T)
        self.init_weights_()

    @classmethod
    def from_relu(cls, relu_sae: ReluSAE) -> RescaleShiftSAE:
        """Freeze a trained relu SAE's weights (copied) and start at r_mag = 0, b_mag = b_enc."""
        sae = cls(relu_sae.d_model, relu_sae.d_sae)
        sae.to(device=relu_sae.W_dec.device, dtype=relu_sae.W_dec.dtype)
        sae.copy_baseline_(relu_sae)
        sae.init_weights_()
        return sae

    @torch.no_grad()
    def copy_baseline_(self, relu_sae: ReluSAE) -> None:
        """Overwrite the frozen W_enc, b_enc, W_dec, b_dec with copies of `relu_sae`'s (bit for
        bit); r_mag and b_mag are left as they are."""
        for name in self.FROZEN:
            getattr(self, name).copy_(getattr(relu_sae, name))

    def _pre_bias(self, x: Tensor) -> Tensor:
        # pi - b_enc, computed without adding and subtracting b_enc so that at init
        # exp(0) * pre + b_enc is bit-identical to the relu SAE's pi.
        return relu_pre_bias(x, self.W_enc, self.b_dec)

    def _f(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        active = (pre + self.b_enc) > 0
        mag = torch.relu(torch.exp(self.r_mag) * pre + self.b_mag)
        return active.to(mag.dtype) * mag, active

    def encode(self, x: Tensor) -> Tensor:
        return self._f(self._pre_bias(x))[0]

    def active_mask(self, x: Tensor) -> Tensor:
        return (self._pre_bias(x) + self.b_enc) > 0

    def encode_with_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._f(self._pre_bias(x))

    def loss(self, x: Tensor, l1_coefficient: float = 0.0, dead: Tensor | None = None) -> LossOutput:
        """Only "recon": the support is the frozen baseline's, so there is nothing to sparsify
        (l1_coefficient is accepted for the common interface and ignored)."""
        f, active = self._f(self._pre_bias(x))
        x_hat = self.decode(f)
        return LossOutput(terms={"recon": squared_error(x, x_hat)}, f=f, x_hat=x_hat, active=active)

    @torch.no_grad()
    def init_weights_(self, b_dec_init: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Resets only the trainable part: r_mag = 0, b_mag = b_enc (start at the baseline).
        The frozen baseline (including b_dec) is left alone, so b_dec_init and generator are
        ignored."""
        self.r_mag.zero_()
        self.b_mag.copy_(self.b_enc)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on x/s. With b_enc, b_dec × s, pi'(x) = s pi(x/s) (same support) and
        pi' - b_enc' = s (pi - b_enc)(x/s); with b_mag × s, f' = s f(x/s); x_hat' = s x_hat(x/s).
        W_enc, W_dec and r_mag are unchanged. (Folding b_enc, b_dec by 1/s and back by s can miss
        them by an ulp; the Trainer then restores the relu SAE's saved tensors with copy_baseline_.)"""
        s = self._check_scale(scale)
        self.b_enc.mul_(s)
        self.b_dec.mul_(s)
        self.b_mag.mul_(s)

    def feature_slices(self, dead_mask: Tensor) -> list[ParamSlice]:
        return []

    def resample_(self, dead_mask: Tensor, x_bad: Tensor, *args, **kwargs) -> list[ParamSlice]:
        """No-op: this diagnostic keeps the baseline's features as they are, dead ones included
        (resampling would change which features fire, which is what it must not do)."""
        return []
