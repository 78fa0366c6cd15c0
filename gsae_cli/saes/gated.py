"""Gated SAE, docs/method.md §1 (Rajamanoharan et al. 2024):

    pi_gate = (x - b_dec) W_gate + b_gate          f_gate = 1[pi_gate > 0]   (Heaviside)
    pi_mag  = (x - b_dec) W_mag  + b_mag           f_mag  = ReLU(pi_mag)
    W_mag[:, i] = exp(r_mag[i]) W_gate[:, i]       (weight sharing; column i = feature i here)
    f = f_gate ⊙ f_mag,   x_hat = f W_dec + b_dec

    L = ||x - x_hat||² + λ ||ReLU(pi_gate)||₁ + ||x - (ReLU(pi_gate) W_dec.detach() + b_dec.detach())||²

Ablation options. The paper's own (its GELU-1L appendix): tie_weights=False gives W_mag its own
parameter (and no r_mag); r_mag=False ties W_mag = W_gate outright, so the paths differ only in
b_mag (no r_mag parameter); freeze_aux_decoder=False lets the third term train W_dec and b_dec.
gsae's own addition, not in the paper: aux_loss=False drops the third term.
Note b_dec also centres the encoder input; that use is not detached (the paper detaches only the
auxiliary *decoder*), so the aux term can still reach b_dec through pi_gate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gsae_cli.saes.base import SAE, LossOutput, squared_error


class GatedSAE(SAE):
    name = "gated"

    def __init__(
        self,
        d_model: int,
        d_sae: int,
        *,
        tie_weights: bool = True,
        r_mag: bool = True,
        aux_loss: bool = True,
        freeze_aux_decoder: bool = True,
    ) -> None:
        super().__init__(d_model, d_sae)
        self.tie_weights = bool(tie_weights)
        # r_mag only exists with tied weights (untied, W_mag is free and subsumes it).
        self.has_r_mag = self.tie_weights and bool(r_mag)
        self.aux_loss = bool(aux_loss)
        self.freeze_aux_decoder = bool(freeze_aux_decoder)

        self.W_gate = nn.Parameter(torch.empty(d_model, d_sae))
        if self.has_r_mag:
            self.r_mag = nn.Parameter(torch.empty(d_sae))
        elif not self.tie_weights:
            self.W_mag = nn.Parameter(torch.empty(d_model, d_sae))
        self.b_gate = nn.Parameter(torch.empty(d_sae))
        self.b_mag = nn.Parameter(torch.empty(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_model))
        self.b_dec = nn.Parameter(torch.empty(d_model))
        # Which parameters resampling touches depends on the weight sharing.
        if self.tie_weights:
            self._resample_encoder_weights = ("W_gate",)
            self._resample_zeroed = ("r_mag", "b_gate", "b_mag") if self.has_r_mag else ("b_gate", "b_mag")
        else:
            self._resample_encoder_weights = ("W_gate", "W_mag")
            self._resample_zeroed = ("b_gate", "b_mag")
        self.init_weights_()

    @property
    def options(self) -> dict[str, Any]:
        return {
            "tie_weights": self.tie_weights,
            "r_mag": self.has_r_mag,
            "aux_loss": self.aux_loss,
            "freeze_aux_decoder": self.freeze_aux_decoder,
        }

    def mag_weight(self) -> Tensor:
        """W_mag [d_model, d_sae]: exp(r_mag) ⊙ W_gate (per column) when tied, W_gate itself with
        r_mag=False, else the separate `W_mag` parameter (tie_weights=False)."""
        if self.has_r_mag:
            return self.W_gate * torch.exp(self.r_mag)
        return self.W_gate if self.tie_weights else self.W_mag

    def pre_activations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, pi_mag), each [batch, d_sae]."""
        x_c = x - self.b_dec
        if self.tie_weights:
            # (x_c W_gate) ⊙ exp(r_mag) == x_c (W_gate ⊙ exp(r_mag)): one [batch, d_sae] matmul
            # serves both paths, a third of the step's FLOPs saved.
            pre = x_c @ self.W_gate
            mag = pre * torch.exp(self.r_mag) if self.has_r_mag else pre
            return pre + self.b_gate, mag + self.b_mag
        return x_c @ self.W_gate + self.b_gate, x_c @ self.W_mag + self.b_mag

    @staticmethod
    def _combine(pi_gate: Tensor, pi_mag: Tensor) -> Tensor:
        # A comparison has no grad_fn, so the Heaviside passes no gradient (b_gate gets none
        # from the reconstruction term), exactly as its true derivative (0 a.e.).
        f_gate = (pi_gate > 0).to(pi_mag.dtype)
        return f_gate * torch.relu(pi_mag)

    def encode(self, x: Tensor) -> Tensor:
        return self._combine(*self.pre_activations(x))

    def active_mask(self, x: Tensor) -> Tensor:
        """The gate f_gate (spec: L0 counts f_gate). It can exceed f != 0 where pi_mag <= 0."""
        pi_gate, _ = self.pre_activations(x)
        return pi_gate > 0

    def encode_with_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi_gate, pi_mag = self.pre_activations(x)
        return self._combine(pi_gate, pi_mag), pi_gate > 0

    def loss(self, x: Tensor, l1_coefficient: float, dead: Tensor | None = None) -> LossOutput:
        pi_gate, pi_mag = self.pre_activations(x)
        f = self._combine(pi_gate, pi_mag)
        x_hat = self.decode(f)
        relu_gate = torch.relu(pi_gate)
        terms = {
            "recon": squared_error(x, x_hat),
            "sparsity": l1_coefficient * relu_gate.sum(dim=-1).mean(),
        }
        if self.aux_loss:
            if self.freeze_aux_decoder:
                W_dec, b_dec = self.W_dec.detach(), self.b_dec.detach()
            else:
                W_dec, b_dec = self.W_dec, self.b_dec
            terms["aux"] = squared_error(x, relu_gate @ W_dec + b_dec)
        return LossOutput(terms=terms, f=f, x_hat=x_hat, active=pi_gate > 0)

    @torch.no_grad()
    def init_weights_(self, b_dec_init: Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """W_dec rows random unit vectors; W_gate = W_dec.T (untied: W_mag = W_gate too);
        r_mag = 0 (when present); b_gate = b_mag = 0; b_dec = b_dec_init."""
        self._init_decoder_(b_dec_init, generator)
        self.W_gate.copy_(self.W_dec.T)
        if self.has_r_mag:
            self.r_mag.zero_()
        elif not self.tie_weights:
            self.W_mag.copy_(self.W_gate)
        self.b_gate.zero_()
        self.b_mag.zero_()

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on x/s. With b_gate, b_mag, b_dec all × s, both pre-activations scale by s:
        pi'(x) = W (x - s b_dec) + s b = s pi(x/s). So the gate's sign (support) is unchanged,
        f' = s f(x/s), and x_hat' = f' W_dec + s b_dec = s x_hat(x/s). W_gate, r_mag (or W_mag)
        and W_dec are unchanged."""
        s = self._check_scale(scale)
        self.b_gate.mul_(s)
        self.b_mag.mul_(s)
        self.b_dec.mul_(s)
