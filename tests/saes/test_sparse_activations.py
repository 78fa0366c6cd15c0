"""JumpReLU, TopK, BatchTopK and the scaled ReLU against hand-computed values (docs/method.md §1).

The weights of hand_weights.py (d_model = 2, d_sae = 3), with an encoder bias:
    W_enc = [[1, 0, 1], [0, 1, -1]],  W_dec rows [1, 0], [0, 1], [0.6, 0.8],  b_dec = [0.5, 0]
    b_enc = [0, -0.5, 0.5],  x = [1.5, 2.0]
"""

from __future__ import annotations

import math

import pytest
import torch
from hand_weights import B_DEC, W_DEC, X1, W, set_params, t

from gsae_cli.saes import BatchTopKSAE, JumpReLUSAE, ScaledReluSAE, TopKSAE
from gsae_cli.saes.batchtopk import batch_kth_value
from gsae_cli.saes.jumprelu import jump_relu, rectangle, step
from gsae_cli.saes.topk import topk_relu

B_ENC = [0.0, -0.5, 0.5]


def grad(term: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    g = torch.autograd.grad(term, param, retain_graph=True, allow_unused=True)[0]
    return torch.zeros_like(param) if g is None else g


# ---------------------------------------------------------------------------------------------
# JumpReLU
# ---------------------------------------------------------------------------------------------


def hand_jumprelu(theta, bandwidth=0.001) -> JumpReLUSAE:
    sae = JumpReLUSAE(2, 3, bandwidth=bandwidth)
    set_params(sae, W_enc=W, b_enc=B_ENC, W_dec=W_DEC, b_dec=B_DEC, log_threshold=[math.log(v) for v in theta])
    return sae


def test_jumprelu_forward_and_loss_by_hand():
    # no b_dec in the encoder: x W_enc = [1.5, 2, -0.5], + b_enc = [1.5, 1.5, 0]; θ = 0.5 each
    sae = hand_jumprelu([0.5, 0.5, 0.5])
    x = t(X1)
    assert torch.allclose(sae.encode(x), t([[1.5, 1.5, 0.0]]))
    out = sae.loss(x, 0.1)
    # x_hat = 1.5 [1, 0] + 1.5 [0, 1] + [0.5, 0] = [2, 1.5]; ||x - x_hat||² = 0.25 + 0.25
    assert torch.allclose(out.x_hat, t([[2.0, 1.5]]))
    assert math.isclose(out.terms["recon"].item(), 0.5, rel_tol=1e-6)
    assert math.isclose(out.terms["sparsity"].item(), 0.1 * 2, rel_tol=1e-6)  # λ ||f||₀
    assert out.active.tolist() == [[True, True, False]]
    assert set(out.terms) == {"recon", "sparsity"}


def test_jumprelu_pseudo_derivatives_by_hand():
    """ε = 1 so the kernel's window is wide. z = ReLU(pi) = [1.5, 1.5, 0], θ = [1.2, 2.0, 0.2]:
    z - θ = [0.3, -0.5, -0.2], so K = [1, 0 (|u| = 1/2 is outside), 1]; only feature 0 fires.
    f = [1.5, 0, 0], x_hat = [2, 0], x - x_hat = [-0.5, 2], recon = 4.25.
    ∂recon/∂f_i = -2 (x - x_hat)·d_i = [1, -4, -2.6]; ∂f_i/∂θ_i := -(θ_i/ε) K = [-1.2, 0, -0.2]
    -> ∂recon/∂θ = [-1.2, 0, 0.52], and ∂/∂log θ = θ ⊙ that = [-1.44, 0, 0.104].
    L0: ∂(λ Σ H)/∂θ := -(λ/ε) K = [-0.1, 0, -0.1] -> ∂/∂log θ = [-0.12, 0, -0.02], and no
    gradient to the encoder."""
    sae = hand_jumprelu([1.2, 2.0, 0.2], bandwidth=1.0)
    out = sae.loss(t(X1), 0.1)
    assert torch.allclose(out.f, t([[1.5, 0.0, 0.0]]))
    assert math.isclose(out.terms["recon"].item(), 4.25, rel_tol=1e-6)
    assert torch.allclose(grad(out.terms["recon"], sae.log_threshold), t([-1.44, 0.0, 0.104]), atol=1e-6)
    assert torch.allclose(grad(out.terms["sparsity"], sae.log_threshold), t([-0.12, 0.0, -0.02]), atol=1e-6)
    assert torch.equal(grad(out.terms["sparsity"], sae.W_enc), torch.zeros(2, 3))
    assert torch.equal(grad(out.terms["sparsity"], sae.b_enc), torch.zeros(3))
    # z gets JumpReLU's true derivative H(z - θ): only feature 0 passes ∂recon/∂f_0 = 1 to b_enc
    assert torch.allclose(grad(out.terms["recon"], sae.b_enc), t([1.0, 0.0, 0.0]), atol=1e-6)


def test_jumprelu_functions_sum_theta_gradient_over_the_batch():
    z = t([[0.9, 3.0], [1.1, 0.0]]).requires_grad_()
    theta = t([1.0, 1.0]).requires_grad_()
    y = jump_relu(z, theta, 0.5)  # K((z - θ)/0.5): rows [1, 0], [1, 0]
    assert torch.equal(y, t([[0.0, 3.0], [1.1, 0.0]]))
    gz, gtheta = torch.autograd.grad(y.sum(), (z, theta))
    assert torch.equal(gz, t([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(gtheta, t([-2.0 - 2.0, 0.0]))  # -(θ/ε) per row in the window, summed
    h = step(z, theta, 0.5)
    assert torch.equal(h, t([[0.0, 1.0], [1.0, 0.0]]))
    gz, gtheta = torch.autograd.grad(h.sum(), (z, theta))
    assert torch.equal(gz, torch.zeros(2, 2)) and torch.allclose(gtheta, t([-4.0, 0.0]))
    assert rectangle(t([-0.5, -0.49, 0.0, 0.49, 0.5])).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_jumprelu_threshold_stays_positive_and_starts_at_its_init():
    sae = JumpReLUSAE(4, 6, threshold_init=0.001)
    assert torch.allclose(sae.threshold, torch.full((6,), 0.001))
    with torch.no_grad():
        sae.log_threshold.fill_(-50.0)
    assert bool((sae.threshold > 0).all())
    with pytest.raises(ValueError):
        JumpReLUSAE(4, 6, bandwidth=0.0)


# ---------------------------------------------------------------------------------------------
# TopK and AuxK
# ---------------------------------------------------------------------------------------------


def hand_topk(cls=TopKSAE, **options):
    sae = cls(2, 3, **options)
    set_params(sae, W_enc=W, b_enc=B_ENC, W_dec=W_DEC, b_dec=B_DEC)
    return sae


def test_topk_forward_by_hand():
    # pi = (x - b_dec) W_enc + b_enc = [1, 2, -1] + [0, -0.5, 0.5] = [1, 1.5, -0.5]
    sae = hand_topk(k=2)
    out = sae.loss(t(X1))
    assert torch.allclose(out.f, t([[1.0, 1.5, 0.0]]))
    assert torch.allclose(out.x_hat, t([[1.5, 1.5]]))  # [1, 1.5] + b_dec
    assert math.isclose(out.terms["recon"].item(), 0.25, rel_tol=1e-6)
    assert out.terms["aux"].item() == 0.0  # no dead latents given
    assert set(out.terms) == {"recon", "aux"}  # no sparsity penalty
    # k = 1 keeps the largest only; k = 3 keeps -0.5 among the top 3, and ReLU zeroes it
    assert torch.allclose(hand_topk(k=1).encode(t(X1)), t([[0.0, 1.5, 0.0]]))
    out3 = hand_topk(k=3).loss(t(X1))
    assert torch.allclose(out3.f, t([[1.0, 1.5, 0.0]])) and out3.active.tolist() == [[True, True, False]]
    assert torch.equal(topk_relu(t([[3.0, -1.0, 2.0, 5.0]]), 2), t([[3.0, 0.0, 0.0, 5.0]]))


def test_auxk_loss_and_gradients_by_hand():
    """k = 2 as above: e = x - x_hat = [0, 0.5] (gradients stopped). Feature 0 declared dead,
    k_aux = 1: ê = ReLU(pi_0) d_0 = [1, 0]; ||e - ê||² = 1 + 0.25 = 1.25, times α = 1/32.
    ∂/∂W_dec[0] = α (-2 z_0 (e - ê)) = α [2, -1]; live rows get none; nothing reaches x_hat."""
    sae = hand_topk(k=2, aux_k=1, aux_k_coefficient=1 / 32)
    dead = torch.tensor([True, False, False])
    out = sae.loss(t(X1), 0.0, dead)
    assert math.isclose(out.terms["aux"].item(), 1.25 / 32, rel_tol=1e-6)
    g = grad(out.terms["aux"], sae.W_dec)
    assert torch.allclose(g, t([[2.0, -1.0], [0.0, 0.0], [0.0, 0.0]]) / 32, atol=1e-7)
    # the main reconstruction is unchanged, and a dead latent with pi <= 0 reconstructs nothing
    assert math.isclose(out.terms["recon"].item(), 0.25, rel_tol=1e-6)
    only_negative = sae.loss(t(X1), 0.0, torch.tensor([False, False, True]))
    assert math.isclose(only_negative.terms["aux"].item(), 0.25 / 32, rel_tol=1e-6)  # ê = 0: ||e||²


def test_auxk_never_picks_live_latents():
    sae = TopKSAE(4, 8, k=2, aux_k=8)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(8, dtype=torch.bool)
    dead[3] = True
    out = sae.loss(x, 0.0, dead)
    g = grad(out.terms["aux"], sae.W_dec)
    assert bool((g[torch.arange(8) != 3] == 0).all())


# ---------------------------------------------------------------------------------------------
# BatchTopK
# ---------------------------------------------------------------------------------------------


def test_batchtopk_keeps_the_batch_top_k_times_b_by_hand():
    """Rows x1 = [1.5, 2] (a = ReLU(pi) = [1, 1.5, 0]) and x2 = b_dec (a = ReLU(b_enc) = [0, 0, 0.5]);
    k = 1, B = 2: the 2 largest of the batch are 1.5 and 1, both in row 1. Row 2 keeps nothing:
    L0 per row [2, 0], mean k = 1. The smallest kept activation is 1."""
    sae = hand_topk(BatchTopKSAE, k=1)
    out = sae.loss(t([[1.5, 2.0], [0.5, 0.0]]))
    assert torch.allclose(out.f, t([[1.0, 1.5, 0.0], [0.0, 0.0, 0.0]]))
    assert out.active.sum(dim=1).tolist() == [2, 0]
    assert out.stats["batch_min_kept"].item() == 1.0
    # one row alone keeps its own top k·1 = 1: the encoding in training depends on the batch
    alone = sae.loss(t([[0.5, 0.0]]))
    assert torch.allclose(alone.f, t([[0.0, 0.0, 0.5]]))


def test_batchtopk_inference_threshold_by_hand():
    """θ: each batch's smallest kept activation while before the last threshold_window of the
    run, then their mean over the window. n_steps = 10, window 0.2: steps 8 and 9 average."""
    sae = hand_topk(BatchTopKSAE, k=1, threshold_window=0.2)
    values = [5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.9, 0.8, 0.6, 0.4]
    for s, v in enumerate(values):
        out = sae.loss(t(X1))
        out.stats["batch_min_kept"] = torch.tensor(v)
        sae.after_step_(out, s, 10)
        if s == 7:
            assert sae.threshold.item() == pytest.approx(0.8)  # the latest batch's, before the window
    assert sae.threshold.item() == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert int(sae.threshold_count) == 2
    # inference is JumpReLU with the one θ, row by row: a = [1, 1.5, 0] and [0, 0, 0.5] -> all above 0.5 kept
    with torch.no_grad():
        sae.threshold.fill_(1.0)
    f = sae.encode(t([[1.5, 2.0], [0.5, 0.0]]))
    assert torch.allclose(f, t([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0]]))  # strictly above θ = 1
    assert torch.equal(sae.encode(t([[1.5, 2.0]])), f[:1])  # independent of the batch


def test_batchtopk_over_two_ranks_is_the_one_process_batch():
    """Two ranks each holding half the batch, each gathering both halves' candidates, keep
    exactly what one process keeps over the whole batch (what the trainer's `distribute` sets up)."""
    g = torch.Generator().manual_seed(3)
    sae = BatchTopKSAE(4, 16, k=3)
    x = torch.randn(10, 4, generator=g)
    whole = sae.loss(x).f
    a = [torch.relu(sae.pre_activation(half)) for half in (x[:5], x[5:])]
    locals_ = [v.flatten().topk(3 * 10).values for v in a]
    for rank in (0, 1):
        sae.distribute(lambda local, r=rank: torch.cat([local, locals_[1 - r]]), 2)
        part = sae.loss(x[5 * rank : 5 * rank + 5]).f
        assert torch.equal(part, whole[5 * rank : 5 * rank + 5])
    assert batch_kth_value(t([[3.0, 1.0], [2.0, 0.0]]), 3).item() == 1.0


# ---------------------------------------------------------------------------------------------
# Scaled ReLU
# ---------------------------------------------------------------------------------------------


def hand_scaled(**options) -> ScaledReluSAE:
    sae = ScaledReluSAE(2, 3, **options)
    set_params(sae, W_enc=W, b_enc=B_ENC, W_dec=W_DEC, b_dec=B_DEC, r_scale=[0.0, math.log(2.0), 0.0])
    return sae


def test_scaled_relu_forward_and_loss_by_hand():
    """f = ReLU([1, 1.5, -0.5]) = [1, 1.5, 0]; t = [1, 2, 1]: t ⊙ f = [1, 3, 0], x_hat = [1.5, 3],
    recon = 0 + 1 = 1; frozen-decoder copy f W_dec + b_dec = [1.5, 1.5]: aux = 0.25; λ ||f||₁ = 2.5 λ.
    ∂recon/∂r_i = (-2 (x - x_hat)·d_i) t_i f_i = [0, 2, 1.6] ⊙ [1, 3, 0] = [0, 6, 0]."""
    sae = hand_scaled()
    out = sae.loss(t(X1), 0.1)
    assert torch.allclose(out.f, t([[1.0, 3.0, 0.0]])) and torch.allclose(sae.encode(t(X1)), out.f)
    assert torch.allclose(out.x_hat, t([[1.5, 3.0]])) and torch.allclose(sae(t(X1)), out.x_hat)
    assert math.isclose(out.terms["recon"].item(), 1.0, rel_tol=1e-6)
    assert math.isclose(out.terms["aux"].item(), 0.25, rel_tol=1e-6)
    assert math.isclose(out.terms["sparsity"].item(), 0.25, rel_tol=1e-6)
    assert torch.allclose(grad(out.terms["recon"], sae.r_scale), t([0.0, 6.0, 0.0]), atol=1e-6)
    # the first term trains only the encoder (b_dec through the encoder's input centring): no
    # gradient to W_dec or the scale
    for p in (sae.W_dec, sae.r_scale):
        assert torch.equal(grad(out.terms["aux"], p), torch.zeros_like(p))
    assert not torch.equal(grad(out.terms["aux"], sae.W_enc), torch.zeros(2, 3))
    # unfrozen, it trains the decoder too: -2 f_i (x - (f W_dec + b_dec)) = -2 f_i [0, 0.5]
    sae2 = hand_scaled(freeze_aux_decoder=False)
    out2 = sae2.loss(t(X1), 0.1)
    assert torch.allclose(grad(out2.terms["aux"], sae2.W_dec), t([[0.0, -1.0], [0.0, -1.5], [0.0, 0.0]]), atol=1e-6)
