"""TopK SAE, docs/method.md §1 (Gao et al. 2024, "Scaling and evaluating sparse autoencoders",
arXiv 2406.04093), and the AuxK loss it shares with BatchTopK:

    pi(x) = (x - b_dec) W_enc + b_enc             (b_dec is the paper's b_pre; b_enc as in its code)
    f(x)  = ReLU(TopK_k(pi(x)))                   the k largest pre-activations of each row kept
    x_hat = f W_dec + b_dec
    L     = ||x - x_hat||² + α ||e - ê||²,        e = stop_grad(x - x_hat),
                                                  ê = ReLU(TopK_k_aux(pi restricted to dead latents)) W_dec

No sparsity penalty: k sets the sparsity. A latent is dead when it has not fired for the trainer's
dead window (docs/method.md §1); with no dead latents the AuxK term is 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gsae_cli.saes.base import LossOutput, squared_error
from gsae_cli.saes.relu import AffineEncoderSAE


def topk_relu(pre: Tensor, k: int) -> Tensor:
    """ReLU of the k largest entries of each row of `pre` [batch, d_sae], zeros elsewhere (dense)."""
    k = min(int(k), pre.shape[-1])
    values, index = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))


def decode_sparse(index: Tensor, values: Tensor, W_dec: Tensor, offsets: Tensor | None = None) -> Tensor:
    """Σ_j values_j W_dec[index_j] per row, without the bias: index and values [batch, k], or flat
    with `offsets` (each row's start). Neither pass builds a dense [batch, d_sae] tensor, which at
    the shapes of bench/train.py makes a TopK step faster (docs/benchmarks.md)."""
    return F.embedding_bag(index, W_dec, offsets, mode="sum", per_sample_weights=values)


def aux_k_reconstruction(pre: Tensor, dead: Tensor, k_aux: int, W_dec: Tensor) -> Tensor:
    """ê = ReLU(TopK_k_aux(pi over the dead latents)) W_dec, no bias: [batch, d_model].

    `dead` is bool [d_sae]; live latents are excluded by -inf, so they are never chosen, and at
    most min(k_aux, number of dead) latents per row are used."""
    k = min(int(k_aux), int(dead.sum()))
    values, index = pre.masked_fill(~dead, float("-inf")).topk(k, dim=-1, sorted=False)
    return decode_sparse(index, torch.relu(values), W_dec)


def aux_k_loss(x: Tensor, x_hat: Tensor, pre: Tensor, dead: Tensor | None, k_aux: int, W_dec: Tensor) -> Tensor:
    """||e - ê||² averaged over the batch, e = x - x_hat with gradients stopped (Gao et al.'s code);
    0 when no latent is dead."""
    if dead is None or not bool(dead.any()):
        return pre.new_zeros(())
    e = (x - x_hat).detach()
    return squared_error(e, aux_k_reconstruction(pre, dead.to(pre.device), k_aux, W_dec))


AUX_K = 512  # the papers' k_aux (Bussmann et al. §2, summarising Gao et al.)


class TopKSAE(AffineEncoderSAE):
    """Initialised as relu, which is Gao et al.'s §2.4 and App. A with b_dec their b_pre (the
    geometric median); the fold too, since TopK of s·pi keeps the same latents."""

    name = "topk"
    resamples = False  # dead latents are revived by AuxK, not resampled

    def __init__(
        self, d_model: int, d_sae: int, *, k: int = 32, aux_k: int | None = None, aux_k_coefficient: float = 1 / 32
    ) -> None:
        super().__init__(d_model, d_sae)
        if not 0 < int(k) <= d_sae:
            raise ValueError(f"k must be in 1..d_sae={d_sae}, got {k}")
        self.k = int(k)
        self.aux_k = int(aux_k) if aux_k is not None else AUX_K
        self.aux_k_coefficient = float(aux_k_coefficient)
        self.init_weights_()

    @property
    def options(self) -> dict[str, Any]:
        return {"k": self.k, "aux_k": self.aux_k, "aux_k_coefficient": self.aux_k_coefficient}

    def encode(self, x: Tensor) -> Tensor:
        return topk_relu(self.pre_activation(x), self.k)

    def _aux_terms(self, x: Tensor, x_hat: Tensor, pre: Tensor, dead: Tensor | None) -> dict[str, Tensor]:
        return {"aux": self.aux_k_coefficient * aux_k_loss(x, x_hat, pre, dead, self.aux_k, self.W_dec)}

    def loss(self, x: Tensor, l1_coefficient: float = 0.0, dead: Tensor | None = None) -> LossOutput:
        """Reconstruction plus α·AuxK over the `dead` latents (bool [d_sae]); l1_coefficient is
        accepted for the common interface and ignored (k sets the sparsity). The returned f is
        detached: the reconstruction is decoded from the k kept values directly."""
        pre = self.pre_activation(x)
        values, index = pre.topk(min(self.k, self.d_sae), dim=-1, sorted=False)
        values = torch.relu(values)
        x_hat = decode_sparse(index, values, self.W_dec) + self.b_dec
        f = torch.zeros_like(pre, requires_grad=False).scatter(-1, index, values.detach())
        terms = {"recon": squared_error(x, x_hat), **self._aux_terms(x, x_hat, pre, dead)}
        return LossOutput(terms=terms, f=f, x_hat=x_hat, active=f > 0)
