"""`gsae export --format saelens`: the exported tensors rebuild an SAE with identical outputs
(every architecture: rescale_shift as a gated SAE, scaled_relu as a standard one, batchtopk as a
JumpReLU with one threshold), SAELens's own equations applied to them give the
same features, cfg.json carries the fields SAELens's loaders need, and bad requests are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_HOOK
from safetensors.torch import load_file

from gsae_cli.config import compose_config
from gsae_cli.errors import ConfigError
from gsae_cli.export import load_saelens_export, run_export
from gsae_cli.saes import SAE, BatchTopKSAE, GatedSAE, JumpReLUSAE, ReluSAE, RescaleShiftSAE, ScaledReluSAE, TopKSAE
from gsae_cli.saes.io import save_sae

D, M = 16, 48

# Fields SAELens 5's config dataclass requires (SAELens 6 converts this flat layout itself).
REQUIRED = {
    "architecture",
    "d_in",
    "d_sae",
    "activation_fn_str",
    "apply_b_dec_to_input",
    "finetuning_scaling_factor",
    "context_size",
    "model_name",
    "hook_name",
    "hook_layer",
    "hook_head_index",
    "prepend_bos",
    "dataset_path",
    "dataset_trust_remote_code",
    "normalize_activations",
    "dtype",
    "device",
    "sae_lens_training_version",
}


def _randomise(sae: SAE, seed: int) -> SAE:
    """Non-trivial values in every parameter and buffer (biases and r_mag included), so that a
    swapped or dropped tensor changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, t in list(sae.named_parameters()) + list(sae.named_buffers()):
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    return sae.eval()


def relu_sae() -> ReluSAE:
    return _randomise(ReluSAE(D, M), 0)


def gated_sae() -> GatedSAE:
    return _randomise(GatedSAE(D, M), 1)


def gated_no_r_mag_sae() -> GatedSAE:
    return _randomise(GatedSAE(D, M, r_mag=False), 5)


def rescale_shift_sae() -> RescaleShiftSAE:
    sae = RescaleShiftSAE.from_relu(relu_sae())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.r_mag.copy_(torch.randn(M, generator=g) * 0.5)
        sae.b_mag.copy_(torch.randn(M, generator=g) * 0.3)
    return sae.eval()


def scaled_relu_sae() -> ScaledReluSAE:
    return _randomise(ScaledReluSAE(D, M), 6)


def jumprelu_sae() -> JumpReLUSAE:
    return _randomise(JumpReLUSAE(D, M), 7)


def topk_sae() -> TopKSAE:
    return _randomise(TopKSAE(D, M, k=5), 8)


def batchtopk_sae() -> BatchTopKSAE:
    sae = _randomise(BatchTopKSAE(D, M, k=5), 9)
    with torch.no_grad():
        sae.threshold.fill_(0.4)
    return sae


def saelens_encode(cfg: dict, w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SAELens's inference equations, written from its documented maths."""
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    if cfg["architecture"] == "standard":
        return torch.relu(sae_in @ w["W_enc"] + w["b_enc"])
    if cfg["architecture"] == "jumprelu":
        pre = sae_in @ w["W_enc"] + w["b_enc"]
        return torch.relu(pre) * (pre > w["threshold"]).float()
    if cfg["architecture"] == "topk":
        pre = sae_in @ w["W_enc"] + w["b_enc"]
        top = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    gate = (sae_in @ w["W_enc"] + w["b_gate"] > 0).float()
    return gate * torch.relu(sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])


def _export(tmp_path: Path, sae: SAE, dest: Path | None = None) -> tuple[Path, Path]:
    sae_dir = tmp_path / f"sae-{sae.name}"
    save_sae(
        sae_dir,
        sae,
        {"model": "tiny", "hf_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "hook": TINY_HOOK, "train_hash": "abc123"},
    )
    cfg = compose_config(["model=tiny", f"hook={TINY_HOOK}", f"sae.path={sae_dir}", f"out_dir={tmp_path / 'out'}"])
    return sae_dir, run_export(cfg, "saelens", dest)


@pytest.mark.parametrize(
    "make,arch",
    [
        (relu_sae, "standard"),
        (gated_sae, "gated"),
        (gated_no_r_mag_sae, "gated"),
        (rescale_shift_sae, "gated"),
        (scaled_relu_sae, "standard"),
        (jumprelu_sae, "jumprelu"),
        (topk_sae, "topk"),
        (batchtopk_sae, "jumprelu"),
    ],
)
def test_round_trip_reproduces_outputs(tmp_path: Path, make, arch):
    sae = make()
    sae_dir, out = _export(tmp_path, sae)
    assert out == sae_dir / "export-saelens"
    cfg = json.loads((out / "cfg.json").read_text())
    weights = load_file(str(out / "sae_weights.safetensors"))
    assert cfg["architecture"] == arch
    assert set(cfg) >= REQUIRED
    assert cfg["d_in"] == D and cfg["d_sae"] == M and cfg["normalize_activations"] == "none"
    assert cfg["hook_name"] == TINY_HOOK and cfg["hook_layer"] == 2
    assert cfg["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg["apply_b_dec_to_input"] is not isinstance(sae, JumpReLUSAE)  # JumpReLU's encoder takes x itself
    expected_keys = {
        "standard": {"W_enc", "b_enc", "W_dec", "b_dec"},
        "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
        "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
        "gated": {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"},
    }[arch]
    assert set(weights) == expected_keys
    assert weights["W_enc"].shape == (D, M) and weights["W_dec"].shape == (M, D)
    if isinstance(sae, GatedSAE) and not sae.has_r_mag:  # W_mag = W_gate is SAELens's r_mag = 0
        assert torch.equal(weights["r_mag"], torch.zeros(M))

    x = torch.randn(256, D, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        f, x_hat, active = sae.encode(x), sae(x), sae.active_mask(x)
        rebuilt = load_saelens_export(out)
        assert torch.allclose(rebuilt.encode(x), f, atol=1e-6)
        assert torch.allclose(rebuilt(x), x_hat, atol=1e-6)
        assert torch.equal(rebuilt.active_mask(x), active)
        if arch == "topk":
            assert cfg["k"] == 5 and rebuilt.k == 5
        # SAELens scales W_enc by exp(r_mag) before the matmul, gsae scales after it: equal up to
        # float32 rounding, hence the looser tolerance here
        f_saelens = saelens_encode(cfg, weights, x)
        assert torch.allclose(f_saelens, f, atol=1e-5)
        assert torch.allclose(f_saelens @ weights["W_dec"] + weights["b_dec"], x_hat, atol=1e-5)
    assert 0 < int((f > 0).sum()) < f.numel()  # the test exercises both sides of the support
    provenance = json.loads((out / "gsae.json").read_text())
    assert provenance["gsae_architecture"] == sae.name and provenance["train_hash"] == "abc123"


def test_reexport_replaces_folder_atomically(tmp_path: Path):
    dest = tmp_path / "elsewhere" / "exported"
    _export(tmp_path, relu_sae(), dest)
    (dest / "stale.txt").write_text("from an older export")
    _, out = _export(tmp_path, relu_sae(), dest)
    assert out == dest and not (dest / "stale.txt").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["exported"]  # no temp folders left


def test_untied_gated_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="tie_weights=false"):
        _export(tmp_path, _randomise(GatedSAE(D, M, tie_weights=False), 4))


def test_unknown_format_lists_valid_ones(tmp_path: Path):
    cfg = compose_config(["model=tiny", f"sae.path={tmp_path}", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="valid formats: saelens"):
        run_export(cfg, "dictionary_learning", None)
