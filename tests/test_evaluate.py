"""`gsae eval`: metric anchors (an exact SAE scores 1, an all-zero one 0), the restart-at-the-hook's
block fast path against full hooked forwards, the artifact and its reuse, and the checks."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
import torch

from gsae_cli import evaluate
from gsae_cli.artifacts import is_complete
from gsae_cli.config import compose_config
from gsae_cli.data import batched_windows
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.evaluate import METRIC_KEYS, eval_windows, evaluate_batches, run_eval
from gsae_cli.models import load_model
from gsae_cli.sae_io import save_sae
from gsae_cli.saes import ReluSAE, build_sae

from conftest import TINY_HOOK, tiny

D = 64  # the tiny model's d_model


def identity_sae(d: int) -> ReluSAE:
    """ReLU(x) - ReLU(-x) = x: W_enc = [I, -I], W_dec = [I; -I], biases 0 reconstructs exactly."""
    sae = ReluSAE(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def zero_sae(d: int) -> ReluSAE:
    sae = ReluSAE(d, 2 * d)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae.eval()


def random_sae(d: int, seed: int = 0) -> ReluSAE:
    sae = build_sae("relu", d, 4 * d)
    g = torch.Generator().manual_seed(seed)
    sae.init_weights_(generator=g)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(4 * d, generator=g) * 0.1)
    return sae.eval()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    # two windows in two batches: small (the tiny model's cost is its 49k-token unembedding) but
    # still exercising the accumulation across batches
    cfg = compose_config(["model=tiny", f"hook={TINY_HOOK}", "eval.n_tokens=254", "device=cpu",
                          f"out_dir={tmp_path_factory.mktemp('o')}"])
    model = load_model(cfg.model, torch.device("cpu"))
    batches = list(batched_windows(eval_windows(cfg, model), 1))
    return model, batches


def _metrics(model, sae, hook, batches, method="auto") -> dict:
    out = evaluate_batches(model, sae, hook, batches, method=method)
    out.pop("feature_density")
    return out


def test_identity_sae_scores_perfect(tiny_setup):
    model, batches = tiny_setup
    m = _metrics(model, identity_sae(D), TINY_HOOK, batches)
    assert m["method"] == "from_layer"
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m["nmse"] == 0.0 and m["explained_variance"] == 1.0
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-12)
    assert m["delta_loss"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert m["ce_zero_ablation"] > m["ce_clean"]
    assert m["n_tokens"] == 2 * 127  # ctx_len - 1 predictions per window
    # CE follows TransformerLens's convention: its own next-token loss, averaged over positions
    with torch.no_grad():
        tl = sum(float(model.bridge(b, return_type="loss")) for b in batches) / len(batches)
    assert m["ce_clean"] == pytest.approx(tl, rel=1e-5)


def test_zero_sae_scores_zero(tiny_setup):
    model, batches = tiny_setup
    m = _metrics(model, zero_sae(D), TINY_HOOK, batches)
    assert m["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert m["ce_spliced"] == pytest.approx(m["ce_zero_ablation"], abs=1e-6)
    assert m["l0"] == 0.0 and m["frac_dead"] == 1.0 and m["frac_dense"] == 0.0


@pytest.mark.parametrize("hook", [TINY_HOOK, "blocks.1.hook_mlp_out"])  # the entry, and a site inside
def test_restart_at_block_matches_full_hooked_forward(tiny_setup, hook):
    model, batches = tiny_setup
    sae = random_sae(D)
    fast = _metrics(model, sae, hook, batches, method="from_layer")
    full = _metrics(model, sae, hook, batches, method="full")
    assert fast["method"] == "from_layer" and full["method"] == "full"
    for key in METRIC_KEYS:
        assert fast[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
    assert full["ce_spliced"] != pytest.approx(full["ce_clean"], abs=1e-6)  # the splice mattered


def test_restart_path_skips_earlier_blocks(tiny_setup):
    model, batches = tiny_setup
    splicer = evaluate._Splicer(model, TINY_HOOK, "from_layer")
    calls = {"block0": 0}
    handle = model.bridge.blocks[0].register_forward_pre_hook(lambda *a: calls.__setitem__("block0", calls["block0"] + 1))
    try:
        with torch.no_grad():
            _, site, entry = splicer.clean(batches[0])
            calls["block0"] = 0
            splicer.patched(batches[0], entry, site)
    finally:
        handle.remove()
    assert calls["block0"] == 0
    assert len(model.bridge.original_model.model.layers) == 4  # restored


def test_failed_restart_falls_back_to_full_forwards(tiny_setup, monkeypatch):
    model, batches = tiny_setup

    @contextlib.contextmanager
    def broken(bridge, layer):
        raise RuntimeError("no restart here")
        yield

    monkeypatch.setattr(evaluate, "_only_blocks_from", broken)
    sae = random_sae(D, seed=1)
    m = _metrics(model, sae, TINY_HOOK, batches[:1])
    assert m["method"] == "full"
    monkeypatch.undo()
    ref = _metrics(model, sae, TINY_HOOK, batches[:1], method="full")
    assert m["loss_recovered"] == pytest.approx(ref["loss_recovered"], rel=1e-6)


def test_nan_reconstruction_is_a_clear_error(tiny_setup):
    model, batches = tiny_setup
    sae = identity_sae(D)
    with torch.no_grad():
        sae.b_dec[0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        evaluate_batches(model, sae, TINY_HOOK, batches[:1])


def small(out: Path, *extra: str) -> list[str]:
    return tiny(out, "eval.n_tokens=254", "eval.batch_size=2", *extra)


def test_run_eval_artifact_reuse_and_force(out: Path):
    cfg = compose_config(small(out, "sae=relu"))
    first = run_eval(cfg)
    assert not first.reused and is_complete(first.path)
    on_disk = json.loads((first.path / "metrics.json").read_text())
    assert set(on_disk) == set(METRIC_KEYS) | {"config", "sae"}
    assert on_disk["config"]["hook"] == TINY_HOOK and on_disk["sae"]["architecture"] == "relu"
    assert on_disk["sae"]["train_hash"] and on_disk["n_tokens"] == 254
    for name in ("config.yaml", "density.json", "density.png", "summary.json"):
        assert (first.path / name).exists(), name
    density = json.loads((first.path / "density.json").read_text())
    assert sum(density["counts"]) + density["n_dead"] == on_disk["sae"]["d_sae"]
    assert (first.path / "density.png").read_bytes()[:4] == b"\x89PNG"

    t0 = time.monotonic()
    again = run_eval(cfg)
    assert again.reused and again.path == first.path and time.monotonic() - t0 < 2.0
    assert again.metrics["loss_recovered"] == on_disk["loss_recovered"]
    forced = run_eval(cfg, force=True)
    assert not forced.reused and forced.metrics["ce_clean"] == pytest.approx(on_disk["ce_clean"])


def test_external_sae_path_is_identified_by_its_weights(tmp_path: Path, out: Path):
    sae_dir = tmp_path / "sae"
    save_sae(sae_dir, identity_sae(D), {"model": "tiny", "hook": TINY_HOOK})
    cfg = compose_config(small(out, f"sae.path={sae_dir}"))
    result = run_eval(cfg)
    assert result.metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert result.metrics["sae"]["path"] == str(sae_dir)
    save_sae(sae_dir, zero_sae(D), {"model": "tiny", "hook": TINY_HOOK})  # new weights, same path
    other = run_eval(cfg)
    assert not other.reused and other.path != result.path


def test_width_mismatch_is_a_config_error(tmp_path: Path, out: Path):
    sae_dir = tmp_path / "narrow"
    save_sae(sae_dir, identity_sae(32), {})
    with pytest.raises(ConfigError, match="d_model=32"):
        run_eval(compose_config(small(out, f"sae.path={sae_dir}")))


def test_model_or_hook_mismatch_names_both(tmp_path: Path, out: Path):
    sae_dir = tmp_path / "other-hook"
    save_sae(sae_dir, identity_sae(D), {"model": "tiny", "hook": "blocks.1.hook_resid_pre"})
    with pytest.raises(ConfigError, match=r"hook=blocks\.1\.hook_resid_pre.*hook=blocks\.2\.hook_resid_pre"):
        run_eval(compose_config(small(out, f"sae.path={sae_dir}")))


@pytest.mark.slow
def test_real_model_identity_sae_and_restart(tmp_path: Path):
    """The one real-model test: on SmolLM2 (Llama) the fast path is taken and verified, an exact
    SAE scores 1, and zero-ablating a mid-depth residual stream clearly hurts."""
    hook = "blocks.12.hook_resid_pre"
    sae_dir = tmp_path / "sae"
    save_sae(sae_dir, identity_sae(576), {"model": "smollm2-135m", "hook": hook})
    cfg = compose_config([f"hook={hook}", f"sae.path={sae_dir}", "eval.n_tokens=254", "eval.ctx_len=128",
                          "eval.batch_size=2", "device=cpu", f"out_dir={tmp_path / 'out'}"])
    result = run_eval(cfg)
    m = result.metrics
    assert m["n_tokens"] == 254
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_zero_ablation"] > m["ce_clean"] + 1.0
    assert json.loads((result.path / "summary.json").read_text())["spliced_passes"] == "from_layer"


def test_rows_above_the_outlier_threshold_keep_their_clean_activation(tiny_setup):
    """A zero SAE with every row above the threshold changes nothing: spliced == ablated == clean."""
    model, batches = tiny_setup
    out = evaluate_batches(model, zero_sae(D), TINY_HOOK, batches[:1], outlier_threshold=1e-9)
    assert out["frac_passthrough"] == 1.0
    assert out["ce_spliced"] == pytest.approx(out["ce_clean"], abs=1e-6)
    assert out["ce_zero_ablation"] == pytest.approx(out["ce_clean"], abs=1e-6)
    # with no threshold, the same SAE ablates the site
    plain = evaluate_batches(model, zero_sae(D), TINY_HOOK, batches[:1])
    assert plain["frac_passthrough"] == 0.0 and plain["ce_zero_ablation"] > plain["ce_clean"]
