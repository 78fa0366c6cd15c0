"""Unit tests of the SAE architectures' maths on tiny hand-set weights.

Hand-set weights used throughout (d_model = 2, d_sae = 3):
    W_enc / W_gate = [[1, 0, 1], [0, 1, -1]]     (columns = features)
    W_dec rows     = [1, 0], [0, 1], [0.6, 0.8]  (unit norm)
    b_dec          = [0.5, 0]
    x              = [1.5, 2.0]   ->  x - b_dec = [1, 2],  (x - b_dec) W = [1, 2, -1]
Expected numbers in the tests were worked out by hand from these.
"""

from __future__ import annotations

import math

import pytest
import torch
from hand_weights import B_DEC, W_DEC, X1, W, set_params, t
from safetensors.torch import load_file, save_file

from gsae_cli.errors import ConfigError
from gsae_cli.saes import (
    SAE_REGISTRY,
    GatedSAE,
    ReluSAE,
    RescaleShiftSAE,
    build_sae,
    geometric_median,
    project_out_parallel_grad,
    renormalise_rows_,
    reset_adam_state_,
)


def hand_relu() -> ReluSAE:
    sae = ReluSAE(2, 3)
    set_params(sae, W_enc=W, b_enc=[0.0, -0.5, 0.5], W_dec=W_DEC, b_dec=B_DEC)
    return sae


def hand_gated(**options) -> GatedSAE:
    sae = GatedSAE(2, 3, **options)
    # r_mag = [0, ln 2, 0]  ->  W_mag columns scaled by [1, 2, 1]
    set_params(sae, W_gate=W, b_gate=[0.0, -0.5, 0.5], b_mag=[0.5, 0.0, 3.0], W_dec=W_DEC, b_dec=B_DEC)
    if sae.has_r_mag:
        set_params(sae, r_mag=[0.0, math.log(2.0), 0.0])
    return sae


def perturbed(sae: torch.nn.Module, seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    """Random nonzero values in every parameter and buffer (so biases matter)."""
    g = torch.Generator().manual_seed(seed)
    sae.to(dtype)
    with torch.no_grad():
        for p in list(sae.parameters()) + list(sae.buffers()):
            if p.is_floating_point():  # (BatchTopK's threshold count stays an integer)
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        renormalise_rows_(sae.W_dec)
    return sae


def small(name: str, d_model: int, d_sae: int, **options):
    """build_sae with a k that fits a tiny d_sae for the fixed-k architectures."""
    if name in ("topk", "batchtopk"):
        options.setdefault("k", 2)
    return build_sae(name, d_model, d_sae, **options)


def grad_of(term: torch.Tensor, param: torch.Tensor) -> torch.Tensor | None:
    return torch.autograd.grad(term, param, retain_graph=True, allow_unused=True)[0]


def is_zero_grad(g: torch.Tensor | None) -> bool:
    return g is None or bool((g == 0).all())


# ---------------------------------------------------------------------------------------------
# relu
# ---------------------------------------------------------------------------------------------


def test_relu_forward_and_loss_by_hand():
    sae = hand_relu()
    x = t([[1.5, 2.0], [0.5, -1.0]])
    # row 1: pi = [1, 2, -1] + b_enc = [1, 1.5, -0.5];  row 2: x - b_dec = [0, -1], pi = [0, -1.5, 1.5]
    f = sae.encode(x)
    assert torch.allclose(f, t([[1.0, 1.5, 0.0], [0.0, 0.0, 1.5]]))
    # x_hat row 1 = [1, 1.5] + b_dec = [1.5, 1.5]; row 2 = 1.5 [0.6, 0.8] + b_dec = [1.4, 1.2]
    assert torch.allclose(sae(x), t([[1.5, 1.5], [1.4, 1.2]]), atol=1e-6)
    out = sae.loss(x, l1_coefficient=0.1)
    assert set(out.terms) == {"recon", "sparsity"}
    # errors: [0, 0.5] -> 0.25; [-0.9, -2.2] -> 5.65; mean 2.95.  L1: (2.5 + 1.5) / 2 = 2 -> 0.2
    assert out.terms["recon"].item() == pytest.approx(2.95, abs=1e-5)
    assert out.terms["sparsity"].item() == pytest.approx(0.2, abs=1e-6)
    assert out.total().item() == pytest.approx(3.15, abs=1e-5)
    assert torch.equal(out.active, t([[1, 1, 0], [0, 0, 1]]).bool())
    assert torch.equal(sae.active_mask(x), out.active)


# ---------------------------------------------------------------------------------------------
# gated
# ---------------------------------------------------------------------------------------------


def test_gated_forward_and_loss_by_hand():
    sae = hand_gated()
    x = t(X1)
    pi_gate, pi_mag = sae.pre_activations(x)
    assert torch.allclose(pi_gate, t([[1.0, 1.5, -0.5]]))
    # W_mag x_c = [1, 4, -1]; + b_mag = [1.5, 4, 2]
    assert torch.allclose(pi_mag, t([[1.5, 4.0, 2.0]]), atol=1e-6)
    # the gate closes feature 2 although its magnitude path is positive
    f = sae.encode(x)
    assert torch.allclose(f, t([[1.5, 4.0, 0.0]]), atol=1e-6)
    assert torch.allclose(sae(x), t([[2.0, 4.0]]), atol=1e-6)
    out = sae.loss(x, l1_coefficient=0.1)
    assert set(out.terms) == {"recon", "sparsity", "aux"}
    # recon: x - x_hat = [-0.5, -2] -> 4.25
    assert out.terms["recon"].item() == pytest.approx(4.25, abs=1e-5)
    # sparsity on ReLU(pi_gate) = [1, 1.5, 0]: the negative pi_gate (-0.5) contributes 0,
    # so 0.1 * 2.5 (|pi_gate| would give 0.3)
    assert out.terms["sparsity"].item() == pytest.approx(0.25, abs=1e-6)
    # aux: ReLU(pi_gate) W_dec + b_dec = [1.5, 1.5]; x - that = [0, 0.5] -> 0.25
    assert out.terms["aux"].item() == pytest.approx(0.25, abs=1e-6)
    assert torch.equal(out.active, t([[1, 1, 0]]).bool())


def test_gated_gradients_by_hand():
    sae = hand_gated()
    out = sae.loss(t(X1), l1_coefficient=0.1)
    recon, sparsity, aux = out.terms["recon"], out.terms["sparsity"], out.terms["aux"]
    # Heaviside: no gradient from recon reaches b_gate
    assert is_zero_grad(grad_of(recon, sae.b_gate))
    # sparsity: λ 1[pi_gate > 0] = [0.1, 0.1, 0]
    assert torch.allclose(grad_of(sparsity, sae.b_gate), t([0.1, 0.1, 0.0]))
    # aux: -2 (x - x_hat_aux) · W_dec[j] on open gates = [0, -1, 0]
    assert torch.allclose(grad_of(aux, sae.b_gate), t([0.0, -1.0, 0.0]), atol=1e-6)
    # recon trains the magnitude path: dL/df = -2 (x - x_hat) W_dec^T = [1, 4, 3.8], gated [1, 1, 0]
    assert torch.allclose(grad_of(recon, sae.b_mag), t([1.0, 4.0, 0.0]), atol=1e-5)
    # dpi_mag/dr_mag = exp(r_mag) (x_c W_gate) = [1, 4, -1]  ->  [1, 16, 0]
    assert torch.allclose(grad_of(recon, sae.r_mag), t([1.0, 16.0, 0.0]), atol=1e-5)


def test_gated_aux_decoder_frozen_or_not():
    x = t(X1)
    frozen = hand_gated()
    aux = frozen.loss(x, 0.1).terms["aux"]
    assert is_zero_grad(grad_of(aux, frozen.W_dec))
    trained = hand_gated(freeze_aux_decoder=False)
    aux = trained.loss(x, 0.1).terms["aux"]
    # dAux/dW_dec = -2 ReLU(pi_gate)^T (x - x_hat_aux) = -2 [1, 1.5, 0]^T [0, 0.5]
    assert torch.allclose(grad_of(aux, trained.W_dec), t([[0.0, -1.0], [0.0, -1.5], [0.0, 0.0]]))

    # All gates closed (b_gate = -3): aux = ||x - b_dec||², so only the decoder path touches b_dec.
    for freeze, expected in ((True, [0.0, 0.0]), (False, [-2.0, -4.0])):
        sae = hand_gated(freeze_aux_decoder=freeze)
        set_params(sae, b_gate=[-3.0, -3.0, -3.0])
        aux = sae.loss(x, 0.1).terms["aux"]
        assert aux.item() == pytest.approx(5.0)
        g = grad_of(aux, sae.b_dec)
        g = torch.zeros(2) if g is None else g
        assert torch.allclose(g, t(expected))


def test_gated_aux_loss_switch():
    sae = hand_gated(aux_loss=False)
    assert set(sae.loss(t(X1), 0.1).terms) == {"recon", "sparsity"}


def test_gated_untied_weights_are_independent():
    sae = GatedSAE(2, 3, tie_weights=False)
    names = dict(sae.named_parameters())
    assert "W_mag" in names and "r_mag" not in names
    assert torch.equal(sae.W_mag, sae.W_gate)  # init: W_mag = W_gate copy
    assert sae.W_mag.data_ptr() != sae.W_gate.data_ptr()
    set_params(
        sae,
        W_gate=W,
        W_mag=[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        b_gate=[1.0, 1.0, 1.0],
        b_mag=[0.0, 0.0, 0.0],
        W_dec=W_DEC,
        b_dec=B_DEC,
    )
    before = sae.W_gate.detach().clone()
    # x_c W_mag = [2, 2, 0]; gates all open (x_c W_gate + 1 = [2, 3, 0])
    assert torch.allclose(sae.encode(t(X1)), t([[2.0, 2.0, 0.0]]))
    with torch.no_grad():
        sae.W_mag.mul_(3.0)
    assert torch.equal(sae.W_gate, before)
    out = sae.loss(t(X1), 0.1)
    assert grad_of(out.terms["recon"], sae.W_mag) is not None
    assert is_zero_grad(grad_of(out.terms["recon"], sae.W_gate))  # only via the Heaviside


def test_gated_without_r_mag_by_hand():
    """The paper's "no r_mag" ablation: W_mag = W_gate, the paths differ only in b_mag."""
    sae = hand_gated(r_mag=False)
    assert "r_mag" not in dict(sae.named_parameters()) and "r_mag" not in sae.state_dict()
    assert sae.options["r_mag"] is False
    pi_gate, pi_mag = sae.pre_activations(t(X1))
    # x_c W_gate = [1, 2, -1]; pi_gate = + b_gate [0, -0.5, 0.5]; pi_mag = + b_mag [0.5, 0, 3]
    assert torch.allclose(pi_gate, t([[1.0, 1.5, -0.5]]))
    assert torch.allclose(pi_mag, t([[1.5, 2.0, 2.0]]))
    assert torch.allclose(sae.encode(t(X1)), t([[1.5, 2.0, 0.0]]))
    out = sae.loss(t(X1), 0.1)
    # x_hat = [1.5, 2] + b_dec = [2, 2]; x - x_hat = [-0.5, 0] -> 0.25
    assert out.terms["recon"].item() == pytest.approx(0.25, abs=1e-6)
    # dL/df = -2 (x - x_hat) W_dec^T = [1, 0, 0.6], gated by [1, 1, 0] -> b_mag's gradient
    assert torch.allclose(grad_of(out.terms["recon"], sae.b_mag), t([1.0, 0.0, 0.0]), atol=1e-6)


def test_gated_without_r_mag_equals_the_tied_sae_at_r_mag_zero():
    plain = perturbed(GatedSAE(5, 7, r_mag=False), seed=6, dtype=torch.float32)
    tied = GatedSAE(5, 7)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            getattr(tied, name).copy_(p)
        tied.r_mag.zero_()
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(plain.encode(x), tied.encode(x))
    assert torch.equal(plain(x), tied(x))
    assert torch.equal(plain.active_mask(x), tied.active_mask(x))
    for name, value in plain.loss(x, 0.1).terms.items():
        assert torch.equal(value, tied.loss(x, 0.1).terms[name]), name
    assert torch.equal(plain.mag_weight(), plain.W_gate)
    # untied SAEs have no r_mag either way, and say so in their options
    assert GatedSAE(2, 3, tie_weights=False, r_mag=True).options["r_mag"] is False


def test_gated_without_r_mag_saves_and_loads(tmp_path):
    from gsae_cli.saes.io import load_sae, save_sae

    sae = perturbed(GatedSAE(4, 6, r_mag=False), seed=8, dtype=torch.float32)
    save_sae(tmp_path / "sae", sae, {"hook": "blocks.0.hook_resid_pre"})
    assert "r_mag" not in load_file(str(tmp_path / "sae" / "sae.safetensors"))
    loaded = load_sae(tmp_path / "sae")
    assert isinstance(loaded, GatedSAE) and not loaded.has_r_mag
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(loaded(x), sae(x))


def test_resample_gated_without_r_mag_zeroes_both_biases():
    sae = perturbed(GatedSAE(4, 6, r_mag=False), seed=10, dtype=torch.float32)
    dead = torch.tensor([False, True, False, False, False, True])
    touched = sae.resample_(dead, torch.randn(20, 4), torch.Generator().manual_seed(0))
    assert {(s.name, s.dim) for s in touched} == {("W_gate", 1), ("b_gate", 0), ("b_mag", 0), ("W_dec", 0)}
    for name in ("b_gate", "b_mag"):
        assert torch.equal(getattr(sae, name)[dead], torch.zeros(2))


def test_gated_active_mask_counts_gate():
    sae = GatedSAE(2, 1)
    set_params(sae, W_gate=[[1.0], [0.0]], b_gate=[0.0], b_mag=[-10.0], W_dec=[[1.0, 0.0]], b_dec=[0.0, 0.0])
    x = t([[1.0, 0.0]])
    # gate open (pi_gate = 1) but pi_mag = -9: f = 0 while the gate counts as firing
    assert sae.encode(x).item() == 0.0
    assert sae.active_mask(x).tolist() == [[True]]


# ---------------------------------------------------------------------------------------------
# rescale_shift
# ---------------------------------------------------------------------------------------------


def test_rescale_shift_by_hand():
    sae = RescaleShiftSAE.from_relu(hand_relu())
    set_params(sae, r_mag=[math.log(2.0), 0.0, 0.0], b_mag=[0.0, 1.0, 5.0])
    x = t(X1)
    # pi - b_enc = [1, 2, -1]; active = [1, 1, 0]; ReLU([2*1 + 0, 2 + 1, -1 + 5]) gated -> [2, 3, 0]
    assert torch.allclose(sae.encode(x), t([[2.0, 3.0, 0.0]]), atol=1e-6)
    out = sae.loss(x, 0.1)
    assert set(out.terms) == {"recon"}
    # x_hat = [2.5, 3]; error [-1, -1] -> 2
    assert out.terms["recon"].item() == pytest.approx(2.0, abs=1e-5)


def test_rescale_shift_starts_at_baseline_and_trains_only_scale_and_shift():
    relu = perturbed(ReluSAE(5, 7), seed=1, dtype=torch.float32)
    sae = RescaleShiftSAE.from_relu(relu)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sae.encode(x), relu.encode(x))
    assert torch.equal(sae(x), relu(x))
    assert torch.equal(sae.loss(x, 0.1).terms["recon"], relu.loss(x, 0.1).terms["recon"])
    assert sorted(n for n, _ in sae.named_parameters()) == ["b_mag", "r_mag"]
    sae.loss(x, 0.1).total().backward()
    assert sae.r_mag.grad is not None and sae.b_mag.grad is not None
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert not getattr(sae, name).requires_grad
    assert not sae.decoder_trainable
    assert sae.resample_(torch.ones(7, dtype=torch.bool), x) == []


@pytest.mark.parametrize("name", sorted(SAE_REGISTRY))
def test_state_dict_round_trips_through_safetensors(name, tmp_path):
    if name == "rescale_shift":
        sae = RescaleShiftSAE.from_relu(perturbed(ReluSAE(3, 4), dtype=torch.float32))
        perturbed(sae, seed=5, dtype=torch.float32)
    else:
        sae = perturbed(small(name, 3, 4), dtype=torch.float32)
    path = tmp_path / "sae.safetensors"
    save_file(sae.state_dict(), str(path))
    fresh = build_sae(name, 3, 4, **sae.options)
    fresh.load_state_dict(load_file(str(path)))
    x = torch.randn(6, 3)
    assert torch.equal(fresh(x), sae(x))


# ---------------------------------------------------------------------------------------------
# shared: input-scale folding, decoder constraint, init, geometric median, resampling
# ---------------------------------------------------------------------------------------------


def _make(name: str) -> torch.nn.Module:
    if name == "rescale_shift":
        sae = RescaleShiftSAE.from_relu(perturbed(ReluSAE(4, 6), seed=3))
        return perturbed(sae, seed=4)
    if name == "gated_untied":
        return perturbed(GatedSAE(4, 6, tie_weights=False), seed=3)
    if name == "gated_no_r_mag":
        return perturbed(GatedSAE(4, 6, r_mag=False), seed=3)
    return perturbed(small(name, 4, 6), seed=3)


@pytest.mark.parametrize(
    "name",
    [
        "relu",
        "gated",
        "gated_untied",
        "gated_no_r_mag",
        "rescale_shift",
        "scaled_relu",
        "jumprelu",
        "topk",
        "batchtopk",
    ],
)
@pytest.mark.parametrize("scale", [4.0, 3.7])
def test_fold_input_scale(name, scale):
    sae = _make(name)
    x = 5.0 * torch.randn(64, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        f_norm, out_norm, act_norm = sae.encode(x / scale), sae(x / scale), sae.active_mask(x / scale)
        sae.fold_input_scale_(scale)
        f_raw, out_raw, act_raw = sae.encode(x), sae(x), sae.active_mask(x)
    assert act_norm.any() and (~act_norm).any()
    assert torch.equal(act_raw, act_norm)  # same support, so identical L0
    if scale == 4.0:  # a power of two: every operation scales exactly
        assert torch.equal(out_raw, scale * out_norm)
        assert torch.equal(f_raw, scale * f_norm)
    else:
        assert torch.allclose(out_raw, scale * out_norm, rtol=1e-12, atol=1e-12)
        assert torch.allclose(f_raw, scale * f_norm, rtol=1e-12, atol=1e-12)


def test_fold_input_scale_rejects_nonpositive():
    with pytest.raises(ValueError):
        ReluSAE(2, 2).fold_input_scale_(0.0)


def test_project_out_parallel_grad_by_hand():
    W_dec = torch.nn.Parameter(t([[1.0, 0.0], [0.6, 0.8]]))
    W_dec.grad = t([[3.0, 4.0], [1.0, 0.0]])
    project_out_parallel_grad(W_dec)
    # row 1: drop [3, 0]; row 2: [1, 0] - 0.6 [0.6, 0.8] = [0.64, -0.48]
    assert torch.allclose(W_dec.grad, t([[0.0, 4.0], [0.64, -0.48]]), atol=1e-6)


def test_renormalise_rows_by_hand():
    W = t([[3.0, 4.0], [0.0, -0.5]])
    renormalise_rows_(W)
    assert torch.allclose(W, t([[0.6, 0.8], [0.0, -1.0]]))


@pytest.mark.parametrize("name", ["relu", "gated", "rescale_shift", "scaled_relu", "jumprelu", "topk", "batchtopk"])
def test_decoder_constraint_calls(name):
    """What the Trainer calls around each Adam step (tests/train/test_train.py drives the real loop):
    a trainable decoder gets its gradient projected and its rows renormalised; rescale_shift's
    frozen decoder is left bit-exact."""
    sae = _make(name).float()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    sae.loss(x, 0.1).total().backward()
    W0 = sae.W_dec.detach().clone()
    sae.constrain_decoder_grad_()
    if name == "rescale_shift":
        assert sae.W_dec.grad is None
        sae.renormalise_decoder_()
        assert torch.equal(sae.W_dec, W0)
        return
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(6), atol=1e-6)
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    sae.renormalise_decoder_()
    assert torch.allclose(sae.W_dec, W0, atol=1e-6)


@pytest.mark.parametrize("name", ["relu", "gated", "gated_untied", "gated_no_r_mag", "scaled_relu", "topk", "jumprelu"])
def test_init_weights(name):
    b = t([0.1, -0.2, 0.3])
    saes = []
    for _ in range(2):
        if name.startswith("gated_"):
            sae = GatedSAE(3, 5, tie_weights=name != "gated_untied", r_mag=name != "gated_no_r_mag")
        else:
            sae = small(name, 3, 5)
        sae.init_weights_(b, torch.Generator().manual_seed(7))
        saes.append(sae)
    sae, twin = saes
    assert torch.equal(sae.W_dec, twin.W_dec)  # seeded
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(5), atol=1e-6)
    # JumpReLU follows Gemma Scope: b_dec = 0 and θ = threshold_init (0.001)
    assert torch.equal(sae.b_dec, torch.zeros(3) if name == "jumprelu" else b)
    if name == "jumprelu":
        assert torch.allclose(sae.threshold, torch.full((5,), 0.001))
    enc = sae.W_gate if name.startswith("gated") else sae.W_enc
    assert torch.equal(enc, sae.W_dec.T)
    for bias in ("b_enc", "b_gate", "b_mag", "r_mag", "r_scale"):
        if hasattr(sae, bias):
            assert torch.equal(getattr(sae, bias), torch.zeros(5))
    if name == "gated_untied":
        assert torch.equal(sae.W_mag, sae.W_gate)


def test_geometric_median_symmetric_points():
    c = t([1.0, -2.0, 3.0])
    offsets = t([[1, 0, 0], [0, 2, 0], [0, 0, 0.5], [1, 1, 1], [3, -1, 2]])
    x = torch.cat([c + offsets, c - offsets])
    assert torch.allclose(geometric_median(x), c, atol=1e-5)


def test_geometric_median_robust_to_outlier():
    # Collinear points: the geometric median is the 1-D median, 2; the mean is 201.2.
    x = t([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [1000.0, 0.0]])
    assert torch.allclose(geometric_median(x), t([2.0, 0.0]), atol=1e-4)
    assert x.mean(dim=0)[0].item() == pytest.approx(201.2)


def test_resample_relu_toward_badly_reconstructed_input():
    sae = ReluSAE(3, 4)
    e = torch.eye(3)
    set_params(sae, W_dec=torch.cat([e, e[:1]]).tolist(), b_enc=[-1.0] * 4, b_dec=[1.0, 1.0, 1.0])
    set_params(sae, W_enc=(sae.W_dec.T * t([1.0, 2.0, 1.0, 1.0])).tolist())  # alive col norms 1, 2, 1
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    # Rows 0, 1 sit at b_dec: pi = b_enc < 0, f = 0, x_hat = b_dec = x, zero error, never drawn.
    # Row 2: x - b_dec = [0, 0, 0.5], pi <= -0.5 everywhere, so x_hat = b_dec and the residual
    # [0, 0, 0.5] has direction e3.
    x_bad = t([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.5]])
    dead = torch.tensor([False, False, False, True])
    touched = sae.resample_(dead, x_bad, torch.Generator().manual_seed(0))
    assert torch.allclose(sae.W_dec[3], t([0.0, 0.0, 1.0]))
    # encoder column: e3 * 0.2 * mean alive column norm (4/3)
    assert torch.allclose(sae.W_enc[:, 3], t([0.0, 0.0, 0.2 * 4.0 / 3.0]))
    assert sae.b_enc[3].item() == 0.0
    for name, p in sae.named_parameters():  # alive features untouched
        if name == "b_dec":
            assert torch.equal(p, before[name])
        elif name == "W_enc":
            assert torch.equal(p[:, :3], before[name][:, :3])
        else:
            assert torch.equal(p[:3], before[name][:3])
    assert {(s.name, s.dim) for s in touched} == {("W_enc", 1), ("b_enc", 0), ("W_dec", 0)}


def test_resample_gated_and_reset_adam_state():
    torch.manual_seed(0)
    sae = perturbed(GatedSAE(4, 6), seed=2, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, betas=(0.0, 0.999))
    x = torch.randn(20, 4)
    sae.loss(x, 0.1).total().backward()
    opt.step()
    dead = torch.tensor([True, False, False, True, False, False])
    alive_norm = sae.W_gate[:, ~dead].detach().norm(dim=0).mean()
    sae.resample_(dead, x, torch.Generator().manual_seed(1))
    assert torch.allclose(sae.W_dec[dead].norm(dim=-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(sae.W_gate[:, dead].norm(dim=0), 0.2 * alive_norm.expand(2), atol=1e-6)
    # encoder column is the decoder row's direction
    assert torch.allclose(sae.W_gate[:, dead].T / sae.W_gate[:, dead].norm(dim=0)[:, None], sae.W_dec[dead], atol=1e-6)
    for name in ("r_mag", "b_gate", "b_mag"):
        assert torch.equal(getattr(sae, name)[dead], torch.zeros(2))
    reset_adam_state_(opt, sae, dead)
    state = opt.state
    assert torch.equal(state[sae.W_gate]["exp_avg_sq"][:, dead], torch.zeros(4, 2))
    assert (state[sae.W_gate]["exp_avg_sq"][:, ~dead] != 0).any()
    assert torch.equal(state[sae.W_dec]["exp_avg"][dead], torch.zeros(2, 4))
    assert torch.equal(state[sae.b_gate]["exp_avg_sq"][dead], torch.zeros(2))
    assert torch.equal(state[sae.r_mag]["exp_avg_sq"][dead], torch.zeros(2))
    assert (state[sae.b_dec]["exp_avg_sq"] != 0).any()


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def test_registry_builds_each_architecture():
    assert set(SAE_REGISTRY) == {"relu", "gated", "rescale_shift", "scaled_relu", "jumprelu", "topk", "batchtopk"}
    for name, cls in SAE_REGISTRY.items():
        sae = small(name, 3, 5)
        assert type(sae) is cls and sae.name == name
        assert sae.decoder_directions.shape == (5, 3)
        assert sae.encode(torch.randn(2, 3)).shape == (2, 5)
    assert build_sae("gated", 3, 5, tie_weights=False).options["tie_weights"] is False
    no_r_mag = build_sae("gated", 3, 5, r_mag=False)
    assert no_r_mag.options["r_mag"] is False and "r_mag" not in dict(no_r_mag.named_parameters())


def test_parameter_order_is_what_checkpoints_were_written_with():
    # a checkpoint's optimizer state is matched to parameters by position, so a reordering would
    # hand one parameter another's Adam moments on resume
    per_feature = {"scaled_relu": ["r_scale"], "jumprelu": ["log_threshold"]}
    for name in ("relu", "topk", "batchtopk", "scaled_relu", "jumprelu"):
        order = [n for n, _ in build_sae(name, 3, 40).named_parameters()]
        assert order == ["W_enc", "b_enc", *per_feature.get(name, []), "W_dec", "b_dec"], name


def test_registry_errors():
    with pytest.raises(ConfigError) as err:
        build_sae("topkk", 3, 5)
    assert isinstance(err.value, KeyError)
    for name in ("gated", "relu", "rescale_shift", "jumprelu", "topk", "batchtopk", "scaled_relu"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="tie_weights"):
        build_sae("relu", 3, 5, tie_weights=False)
