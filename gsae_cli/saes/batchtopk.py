"""BatchTopK SAE, docs/method.md §1 (Bussmann, Leask and Nanda 2024, arXiv 2412.06410):

    pi(x)  = (x - b_dec) W_enc + b_enc,   a(x) = ReLU(pi(x))
    train: f = a where a is among the k·B largest entries of the whole batch's a [B, d_sae], else 0
    infer: f = a ⊙ 1[a > θ],             θ one scalar (JumpReLU with a global threshold)
    L     = ||x - x_hat||² + α ||e - ê||²  (TopK's AuxK, saes/topk.py)

θ is "the average of the minimum positive activation values across a number of batches" (§3):
gsae averages each training batch's smallest kept activation over the last `threshold_window` of
the run (before that window θ follows the latest batch's value), so one input's features never
depend on the batch it came with. Under several ranks the k·B-th value is found over the global
batch (`gather`), so the run is the same SAE as in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gsae_cli.saes.base import LossOutput, squared_error
from gsae_cli.saes.topk import TopKSAE, decode_sparse


def batch_kth_value(a: Tensor, k_total: int, gather: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The k_total-th largest entry of `a` over the whole (global) batch, as a 0-d tensor.

    Each process keeps its own min(k_total, numel) largest entries; `gather` concatenates them
    across processes (identity in one process), and the k_total-th largest of that union is the
    global one. Fewer entries than k_total in all: the smallest entry (everything is kept)."""
    flat = a.detach().flatten()
    local = flat.topk(min(int(k_total), flat.numel()), sorted=False).values
    candidates = gather(local) if gather is not None else local
    k = min(int(k_total), candidates.numel())
    return candidates.topk(k, sorted=False).values.min()


class BatchTopKSAE(TopKSAE):
    name = "batchtopk"
    threshold: Tensor  # buffers (registered in __init__)
    threshold_sum: Tensor
    threshold_count: Tensor

    def __init__(
        self,
        d_model: int,
        d_sae: int,
        *,
        k: int = 32,
        aux_k: int | None = None,
        aux_k_coefficient: float = 1 / 32,
        threshold_window: float = 0.1,
    ) -> None:
        if not 0 < threshold_window <= 1:
            raise ValueError(f"threshold_window must be in (0, 1], got {threshold_window}")
        self.threshold_window = float(threshold_window)
        super().__init__(d_model, d_sae, k=k, aux_k=aux_k, aux_k_coefficient=aux_k_coefficient)
        # θ and the running sum and count behind it: buffers, so checkpoints and saved SAEs carry them
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_count", torch.zeros((), dtype=torch.long))
        # set by a distributed trainer (`distribute`): concatenates a tensor over its ranks
        self.gather: Callable[[Tensor], Tensor] | None = None
        self.world_size = 1

    def distribute(self, gather: Callable[[Tensor], Tensor], world_size: int) -> None:
        """Find each batch's k·B-th value over the ranks' global batch of world_size parts."""
        self.gather, self.world_size = gather, int(world_size)

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "threshold_window": self.threshold_window}

    def encode(self, x: Tensor) -> Tensor:
        a = torch.relu(self.pre_activation(x))
        return a * (a > self.threshold).to(a.dtype)

    def batch_topk(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """(f, the batch's smallest kept activation): a's k·B largest entries over the global
        batch kept (only positive ones), the rest zeroed."""
        n_rows = a.shape[0] * self.world_size
        kth = batch_kth_value(a, self.k * n_rows, self.gather)
        keep = (a >= kth) & (a > 0)
        f = a * keep.to(a.dtype)
        smallest = a.detach().masked_fill(~keep, float("inf")).min()
        if self.gather is not None:
            smallest = self.gather(smallest.reshape(1)).min()
        return f, smallest

    def loss(self, x: Tensor, l1_coefficient: float = 0.0, dead: Tensor | None = None) -> LossOutput:
        """BatchTopK's training pass (the batch decides which activations stay); `stats` carries
        the batch's smallest kept activation for `after_step_`."""
        pre = self.pre_activation(x)
        f, smallest = self.batch_topk(torch.relu(pre))
        rows, cols = f.nonzero(as_tuple=True)  # row-major: each row's kept latents in one run
        counts = torch.bincount(rows, minlength=f.shape[0])
        offsets = torch.cumsum(counts, 0) - counts
        x_hat = decode_sparse(cols, f[rows, cols], self.W_dec, offsets) + self.b_dec
        terms = {"recon": squared_error(x, x_hat), **self._aux_terms(x, x_hat, pre, dead)}
        return LossOutput(terms=terms, f=f, x_hat=x_hat, active=f > 0, stats={"batch_min_kept": smallest})

    @torch.no_grad()
    def after_step_(self, out: LossOutput, step: int, n_steps: int) -> None:
        """Update θ from the step's batch: its smallest kept activation while before the last
        `threshold_window` of the run, then the running mean over that window's batches."""
        value = out.stats["batch_min_kept"].to(self.threshold_sum.device)
        if not bool(torch.isfinite(value)):  # nothing kept (an all-zero batch): no information
            return
        if step < round((1.0 - self.threshold_window) * n_steps):
            self.threshold.copy_(value)
            return
        self.threshold_sum.add_(value.double())
        self.threshold_count.add_(1)
        self.threshold.copy_(self.threshold_sum / self.threshold_count)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """As TopK, and θ × s (and its running sum), so the same activations pass it in raw units."""
        super().fold_input_scale_(scale)
        s = self._check_scale(scale)
        self.threshold.mul_(s)
        self.threshold_sum.mul_(s)
