"""`gsae eval`: metric anchors (an exact SAE scores 1, an all-zero one 0, a 0.8x one γ = 0.8),
which positions are spliced, the windows' spread over the held-out split, per-window sums and
bootstrap intervals, the restart-at-the-hook's-block fast path against full hooked forwards,
the KL shortcut against the textbook KL, the cached eval set against the uncached path, the
artifact and its reuse, and the checks. SAEs are built by hand, not trained."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_HOOK
from safetensors import safe_open
from safetensors.torch import load_file

from gsae_cli.config import compose_config, evalset_dir, evalset_hash
from gsae_cli.core import artifacts
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.evaluate import evalset, splice
from gsae_cli.evaluate.evalset import build_evalset, select_windows, spread_indices
from gsae_cli.evaluate.measure import METRIC_KEYS, evaluate, evaluate_windows, summarise
from gsae_cli.evaluate.metrics import (
    WINDOW_FORMAT,
    WINDOW_SCALARS,
    WINDOW_VECTORS,
    loss_recovered,
    metrics_from_window_sums,
    nmse,
    relative_reconstruction_bias,
)
from gsae_cli.evaluate.run import PER_WINDOW, print_table, run_eval
from gsae_cli.lm.data import token_windows
from gsae_cli.lm.models import load_model
from gsae_cli.saes import ReluSAE, build_sae
from gsae_cli.saes.io import save_sae

D = 64  # the tiny model's d_model
CTX = 128


def scaled_identity_sae(d: int, scale: float = 1.0) -> ReluSAE:
    """ReLU(x) - ReLU(-x) = x: W_enc = [I, -I], W_dec = scale [I; -I], biases 0 gives scale * x."""
    sae = ReluSAE(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(scale * torch.cat([eye, -eye], dim=0))
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


def overrides(out: Path, *extra: str) -> list[str]:
    """Two eval windows in batches of one (exercising accumulation across batches); the tiny
    model's cost is its 49k-token unembedding, so this stays small."""
    return [
        "model=tiny",
        f"hook={TINY_HOOK}",
        f"out_dir={out}",
        "eval.n_tokens=254",
        "eval.batch_size=1",
        "eval.bootstrap_samples=200",
        "device=cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    cfg = compose_config(overrides(tmp_path_factory.mktemp("o")))
    model = load_model(cfg.model, torch.device("cpu"))
    windows, _, _ = select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)
    return model, windows


def _eval(model, sae, windows, hook=TINY_HOOK, **kw):
    kw.setdefault("first", 2)
    kw.setdefault("batch_size", 1)
    return evaluate_windows(model, sae, hook, windows, **kw)


# ---- anchors -------------------------------------------------------------------------------------


def test_identity_sae_scores_perfect(tiny_setup):
    model, windows = tiny_setup
    ev = _eval(model, scaled_identity_sae(D), windows)
    m = ev.metrics
    assert ev.method == "from_layer" and ev.kl_mode == "unembed"
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert m["nmse"] == 0.0 and m["explained_variance"] == 1.0
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-12)
    assert m["relative_reconstruction_bias_centred"] == pytest.approx(1.0, abs=1e-12)
    assert m["delta_loss"] == pytest.approx(0.0, abs=1e-6)
    assert m["kl_div"] == pytest.approx(0.0, abs=1e-6)
    # the random tiny model is near chance (CE ~ ln 49152), so ablation moves CE only slightly
    assert m["ce_zero_ablation"] != pytest.approx(m["ce_clean"], abs=1e-3)
    assert m["n_tokens"] == 2 * (CTX - 1)  # ctx_len - 1 predictions per window
    # CE follows TransformerLens's convention: its own next-token loss, averaged over positions
    with torch.no_grad():
        tl = float(model.bridge(windows, return_type="loss"))
    assert m["ce_clean"] == pytest.approx(tl, rel=1e-5)


def test_shrunk_identity_gives_gamma_by_hand(tiny_setup):
    """x_hat = s x: γ = E||s x||² / E[s x·x] = s, centred likewise (an identity SAE, γ = 1 = 1/γ,
    could not tell γ from its inverse). s = 0.5 is exact in float32 (every product s x_i is), so
    γ is 0.5 to the last bit; s = 0.8 is 0.800000012 in float32 and each product rounds (relative
    6e-8), hence its tolerance. NMSE = (1 - s)² Σ||x||² / Σ||x - mean||² over the spliced rows."""
    model, windows = tiny_setup
    es = build_evalset(model, TINY_HOOK, windows, 2, batch_size=1)
    x = es.site[:, 2:].reshape(-1, D).double()  # the spliced rows
    for s, tol in ((0.5, 0.0), (0.8, 1e-7), (1.25, 1e-7)):
        m = evaluate(model, scaled_identity_sae(D, s), es, batch_size=1).metrics
        assert m["relative_reconstruction_bias"] == pytest.approx(s, abs=tol), s
        assert m["relative_reconstruction_bias_centred"] == pytest.approx(s, abs=tol), s
        by_hand = (1 - s) ** 2 * float(x.pow(2).sum()) / float((x - x.mean(dim=0)).pow(2).sum())
        assert m["nmse"] == pytest.approx(by_hand, rel=1e-6), s
        assert m["l0"] == float((x != 0).sum()) / x.shape[0]  # one of ReLU(±x_i) per nonzero x_i


def test_zero_sae_scores_zero(tiny_setup):
    model, windows = tiny_setup
    m = _eval(model, zero_sae(D), windows).metrics
    assert m["loss_recovered"] == 0.0  # the spliced pass is the zero-ablated pass, bit for bit
    assert m["ce_spliced"] == m["ce_zero_ablation"]
    assert m["l0"] == 0.0 and m["frac_dead"] == 1.0 and m["frac_dense"] == 0.0
    assert math.isnan(m["relative_reconstruction_bias"])  # 0/0: undefined, not a number


# ---- positions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [2, 1, 5])
def test_context_positions_keep_their_clean_activation(tiny_setup, monkeypatch, first):
    """Positions before `first` keep the clean activation in the spliced and both ablated passes;
    every position from `first` on is replaced (by zeros, or by the mean of the site's rows)."""
    model, windows = tiny_setup
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = splice.Splicer.patched

    def spy(self, tokens, entry, replacement, capture=None):
        seen.append((entry if entry is not None else tokens, replacement.clone()))
        return real(self, tokens, entry, replacement, capture)

    monkeypatch.setattr(splice.Splicer, "patched", spy)
    ev = _eval(model, zero_sae(D), windows[:1], first=first, method="from_layer")
    # build: the zero- and the mean-ablated pass; eval: the spliced pass
    (entry_z, zeroed), (_, mean_ablated), (entry_s, spliced) = seen
    site = entry_z  # hook = blocks.2.hook_resid_pre: the block's entry is the site itself
    for replaced in (zeroed, mean_ablated, spliced):
        assert torch.equal(replaced[:, :first], site[:, :first])
    assert bool((zeroed[:, first:] == 0).all()) and bool((spliced[:, first:] == 0).all())
    mean = site[:, first:].flatten(0, 1).double().mean(dim=0)
    assert torch.allclose(mean_ablated[0, first].double(), mean, rtol=0, atol=1e-6)
    assert bool((mean_ablated[:, first:] == mean_ablated[:, first : first + 1]).all())  # one constant everywhere
    assert ev.metrics["frac_passthrough"] == pytest.approx((first - 1) / (CTX - 1), abs=1e-15)
    assert ev.sums["n_site"].tolist() == [CTX - first]
    assert ev.ci is None  # bootstrap_samples=0


def test_splice_all_and_site_start_set_the_first_position(out: Path):
    assert evalset.first_spliced(compose_config(overrides(out))) == 4  # site_start's default
    assert evalset.first_spliced(compose_config(overrides(out, "site_start=3"))) == 3
    assert evalset.first_spliced(compose_config(overrides(out, "site_start=3", "eval.splice_all=true"))) == 1


def test_context_predictions_are_the_same_in_every_pass(tiny_setup):
    """Causal attention: the predictions made at context positions cannot change, so the first
    positions' NLLs agree between the clean and the zero-ablated pass."""
    model, windows = tiny_setup
    splicer = splice.Splicer(model, TINY_HOOK, "full")
    with torch.no_grad():
        logits, acts = splicer.clean(windows[:1])
        zeroed = acts[TINY_HOOK].clone()
        zeroed[:, 3:] = 0
        z_logits, _ = splicer.patched(windows[:1], None, zeroed)
    clean, zero = splice.next_token_nll(logits, windows[:1]), splice.next_token_nll(z_logits, windows[:1])
    assert torch.allclose(clean[:, :3], zero[:, :3], atol=1e-5) and not torch.allclose(clean[:, 3:], zero[:, 3:])


# ---- windows -------------------------------------------------------------------------------------


def test_spread_indices_by_hand():
    assert spread_indices(10, 3) == [1, 5, 8]  # floor(10/6), floor(30/6), floor(50/6)
    assert spread_indices(5, 5) == [0, 1, 2, 3, 4]
    assert spread_indices(7, 1) == [3]
    with pytest.raises(ValueError):
        spread_indices(3, 4)


def test_windows_are_spread_over_the_whole_held_out_split(out: Path):
    cfg = compose_config(overrides(out, "eval.n_tokens=508"))  # 4 windows
    model = load_model(cfg.model, torch.device("cpu"))
    windows, index, total = select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)
    every = list(token_windows(cfg.data, model.tokenizer, "eval", CTX, model.bos_token_id, model.eos_token_id))
    assert total == len(every) and total > 100  # the whole split was packed, not a prefix
    assert index == spread_indices(total, 4)
    assert index[0] < total / 4 and index[-1] >= 3 * total / 4  # both ends of the split
    for row, i in zip(windows.tolist(), index):
        assert row == every[i]
    assert bool((windows[:, 0] == model.bos_token_id).all())


def test_too_few_held_out_windows_is_a_config_error(out: Path):
    cfg = compose_config(overrides(out, "eval.n_tokens=100000000"))
    model = load_model(cfg.model, torch.device("cpu"))
    with pytest.raises(ConfigError, match="held-out split has .* fewer than"):
        select_windows(cfg, model.tokenizer, model.bos_token_id, model.eos_token_id)


# ---- per-window sums and intervals --------------------------------------------------------------


def test_the_mean_ablation_reference_is_an_sae_that_outputs_the_mean(tiny_setup):
    """loss_recovered_mean_ablation is what an SAE recovers whose reconstruction is b_dec alone,
    set to the eval set's mean site activation: f = 0 everywhere, x_hat = b_dec."""
    model, windows = tiny_setup
    es = build_evalset(model, TINY_HOOK, windows, 2, batch_size=1)
    sae = build_sae("relu", D, 4 * D)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.b_enc.fill_(-1.0)
        sae.b_dec.copy_(evalset.site_mean(es))
    m = evaluate(model, sae.eval(), es, batch_size=1).metrics
    assert m["l0"] == 0.0
    assert m["loss_recovered"] == pytest.approx(m["loss_recovered_mean_ablation"], abs=1e-12)
    assert m["ce_spliced"] == pytest.approx(m["ce_mean_ablation"], abs=1e-12)


def test_gated_l0_counts_nonzero_features_and_l0_gate_the_open_gates(tiny_setup):
    """The paper's L0 is ||f||_0. A gate can be open where pi_mag <= 0, giving f = 0: here b_mag
    = -10 shuts the magnitude of features 0-31 wherever their gate opens, so those count in
    l0_gate but never in l0 (nor as firing in the density)."""
    model, windows = tiny_setup
    sae = build_sae("gated", D, 4 * D)
    sae.init_weights_(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_gate.fill_(0.05)
        sae.b_mag[:32] = -10.0
    es = build_evalset(model, TINY_HOOK, windows, 2, batch_size=1)
    ev = evaluate(model, sae.eval(), es, batch_size=1)
    x = es.site[:, 2:].reshape(-1, D)
    with torch.no_grad():
        f = torch.cat([sae.encode(w) for w in es.site[:, 2:]])
        gate = torch.cat([sae.active_mask(w) for w in es.site[:, 2:]])
    assert not bool((f[:, :32] != 0).any()) and bool(gate[:, :32].any())
    assert ev.metrics["l0"] == float((f != 0).sum()) / x.shape[0]
    assert ev.metrics["l0_gate"] == float(gate.sum()) / x.shape[0]
    assert ev.metrics["l0"] < ev.metrics["l0_gate"]
    assert int(ev.fire_counts[:, :32].sum()) == 0


def test_window_sums_give_the_metrics_and_match_direct_computation(tiny_setup):
    model, windows = tiny_setup
    sae = random_sae(D)
    es = build_evalset(model, TINY_HOOK, windows, 2, batch_size=1)
    ev = evaluate(model, sae, es, batch_size=1)
    assert set(ev.sums) == set(WINDOW_SCALARS) | set(WINDOW_VECTORS)
    assert all(v.dtype == torch.float64 and v.shape[0] == 2 for v in ev.sums.values())
    assert ev.sums["x_sum"].shape == (2, D)
    point = {k: float(v) for k, v in metrics_from_window_sums(ev.sums).items()}
    for key, value in point.items():
        assert ev.metrics[key] == value, key
    # against the one-shot functions on the spliced rows, and a direct L0 count
    x = es.site[:, 2:].reshape(-1, D)
    with torch.no_grad():  # one window at a time, as the eval ran (batch_size=1): the same matmuls
        x_hat = torch.cat([sae(w) for w in es.site[:, 2:]])
        active = torch.cat([sae.active_mask(w) for w in es.site[:, 2:]])
    assert ev.metrics["nmse"] == pytest.approx(nmse(x, x_hat), rel=1e-9)
    assert ev.metrics["relative_reconstruction_bias"] == pytest.approx(relative_reconstruction_bias(x, x_hat), rel=1e-9)
    assert ev.metrics["l0"] == float(active.sum()) / x.shape[0]
    assert torch.equal(ev.fire_counts.sum(dim=0), active.sum(dim=0, dtype=torch.int32))
    m = ev.metrics
    assert m["loss_recovered"] == pytest.approx(
        loss_recovered(m["ce_clean"], m["ce_spliced"], m["ce_zero_ablation"]), rel=1e-12
    )
    assert ev.feature_density.sum() * x.shape[0] == pytest.approx(float(active.sum()))


def test_bootstrap_intervals_contain_the_points_and_are_paired(tiny_setup):
    model, windows = tiny_setup
    es = build_evalset(model, TINY_HOOK, windows, 2, batch_size=1)
    a = evaluate(model, random_sae(D, 0), es, batch_size=1, bootstrap_samples=200, bootstrap_seed=0)
    assert set(a.ci) == set(METRIC_KEYS) - {"n_tokens", "frac_dead"}  # frac_dead: metrics.NO_BOOTSTRAP
    for key, (lo, hi) in a.ci.items():
        assert lo <= a.metrics[key] <= hi, key
    assert a.ci["ce_clean"][0] < a.ci["ce_clean"][1]  # two different windows: a real spread
    assert a.ci["frac_passthrough"] == [1 / 127, 1 / 127]
    again = summarise(a.sums, a.fire_counts, es.frac_passthrough, bootstrap_samples=200, bootstrap_seed=0)
    assert again[1] == a.ci  # same windows and seed: the same resamples
    # (with two windows every seed finds the same three distinct resamples, so only the points
    # are compared here; tests/evaluate/test_metrics.py checks that seeds change the draws)
    assert summarise(a.sums, a.fire_counts, es.frac_passthrough, bootstrap_samples=0)[0] == a.metrics


# ---- the two ways of running the patched passes, and of computing KL -----------------------------


@pytest.mark.parametrize("hook", [TINY_HOOK, "blocks.1.hook_mlp_out"])  # the entry, and a site inside
def test_restart_at_block_matches_full_hooked_forward(tiny_setup, hook):
    model, windows = tiny_setup
    sae = random_sae(D)
    fast = _eval(model, sae, windows, hook, method="from_layer")
    full = _eval(model, sae, windows, hook, method="full")
    assert fast.method == "from_layer" and full.method == "full"
    for key in METRIC_KEYS:
        assert fast.metrics[key] == pytest.approx(full.metrics[key], rel=1e-5, abs=1e-6), key
    assert full.metrics["ce_spliced"] != pytest.approx(full.metrics["ce_clean"], abs=1e-6)  # the splice mattered


def test_kl_shortcut_matches_the_textbook_kl(tiny_setup):
    """ "unembed" mode (KL from the cached expected unembedding) against "logits" mode (clean
    logits recomputed, Σ P (log P - log Q)), per window, for an SAE that changes the output."""
    model, windows = tiny_setup
    sae = random_sae(D, seed=2)
    short = evaluate(model, sae, build_evalset(model, TINY_HOOK, windows, 2, batch_size=1), batch_size=1)
    textbook = evaluate(
        model, sae, build_evalset(model, TINY_HOOK, windows, 2, batch_size=1, kl_mode="logits"), batch_size=1
    )
    assert short.kl_mode == "unembed" and textbook.kl_mode == "logits"
    assert float(textbook.sums["kl"].min()) > 1.0  # summed over 127 positions: clearly nonzero
    assert torch.allclose(short.sums["kl"], textbook.sums["kl"], rtol=1e-5, atol=127 * 2e-6)
    assert torch.equal(short.sums["nll_spliced"], textbook.sums["nll_spliced"])


def test_restart_path_skips_earlier_blocks(tiny_setup):
    model, windows = tiny_setup
    splicer = splice.Splicer(model, TINY_HOOK, "from_layer")
    calls = {"block0": 0}
    handle = model.bridge.blocks[0].register_forward_pre_hook(
        lambda *a: calls.__setitem__("block0", calls["block0"] + 1)
    )
    try:
        with torch.no_grad():
            _, acts = splicer.clean(windows[:1])
            calls["block0"] = 0
            splicer.patched(windows[:1], acts[splicer.entry], acts[TINY_HOOK])
    finally:
        handle.remove()
    assert calls["block0"] == 0
    assert len(model.bridge.original_model.model.layers) == 4  # restored


def test_failed_restart_falls_back_to_full_forwards(tiny_setup, monkeypatch):
    model, windows = tiny_setup

    @contextlib.contextmanager
    def broken(bridge, layer):
        raise RuntimeError("no restart here")
        yield

    monkeypatch.setattr(splice, "_only_blocks_from", broken)
    sae = random_sae(D, seed=1)
    ev = _eval(model, sae, windows[:1])
    assert ev.method == "full"
    monkeypatch.undo()
    ref = _eval(model, sae, windows[:1], method="full")
    assert ev.metrics["loss_recovered"] == pytest.approx(ref.metrics["loss_recovered"], rel=1e-6)


def test_nan_reconstruction_is_a_clear_error(tiny_setup):
    model, windows = tiny_setup
    sae = scaled_identity_sae(D)
    with torch.no_grad():
        sae.b_dec[0] = float("nan")
    with pytest.raises(ArtifactError, match="NaN"):
        _eval(model, sae, windows[:1])


# ---- the stage: artifact, cache, reuse ---------------------------------------------------------


def _save(directory: Path, sae) -> Path:
    save_sae(directory, sae, {"model": "tiny", "hook": TINY_HOOK})
    return directory


def test_run_eval_artifact_reuse_and_force(tmp_path: Path, out: Path):
    cfg = compose_config(overrides(out, f"sae.path={_save(tmp_path / 'sae', random_sae(D))}"))
    first = run_eval(cfg)
    assert not first.reused and artifacts.is_complete(first.path)
    on_disk = json.loads((first.path / "metrics.json").read_text())
    assert set(on_disk) == set(METRIC_KEYS) | {"config", "sae", "ci"}
    assert on_disk["config"]["hook"] == TINY_HOOK and on_disk["sae"]["architecture"] == "relu"
    assert on_disk["n_tokens"] == 254 and on_disk["frac_passthrough"] == pytest.approx(3 / 127)
    for name in ("config.yaml", "density.json", "density.png", "summary.json", PER_WINDOW):
        assert (first.path / name).exists(), name
    density = json.loads((first.path / "density.json").read_text())
    assert sum(density["counts"]) + density["n_dead"] == on_disk["sae"]["d_sae"] == 4 * D
    assert density["n_tokens"] == 2 * (CTX - 4)  # site_start=4: the site tokens the densities are over
    assert (first.path / "density.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((first.path / "summary.json").read_text())
    assert summary["held_out_windows"] > 100 and summary["n_windows"] == 2

    again = run_eval(cfg)
    assert again.reused and again.path == first.path and again.metrics == on_disk
    forced = run_eval(cfg, force=True)
    assert not forced.reused
    assert {k: forced.metrics[k] for k in METRIC_KEYS} == {k: on_disk[k] for k in METRIC_KEYS}


def test_per_window_file_reproduces_the_metrics(tmp_path: Path, out: Path):
    cfg = compose_config(overrides(out, f"sae.path={_save(tmp_path / 'sae', random_sae(D, 3))}"))
    result = run_eval(cfg)
    path = result.path / PER_WINDOW
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": WINDOW_FORMAT, "eval_set": evalset_hash(cfg)}
    sums = load_file(str(path))
    assert set(sums) == set(WINDOW_SCALARS) | set(WINDOW_VECTORS)
    for name in WINDOW_SCALARS:
        assert sums[name].dtype == torch.float64 and sums[name].shape == (2,), name
    for name in WINDOW_VECTORS:
        assert sums[name].dtype == torch.float64 and sums[name].shape == (2, D), name
    assert int(sums["n_pred"].sum()) == result.metrics["n_tokens"]
    for key, value in metrics_from_window_sums(sums).items():
        assert float(value) == result.metrics[key], key


def _same(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN (a zero SAE's γ)."""
    return all(a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_cached_and_uncached_paths_agree_exactly(tmp_path: Path, monkeypatch):
    sae_dir = _save(tmp_path / "sae", random_sae(D, 4))
    cached = run_eval(compose_config(overrides(tmp_path / "a", f"sae.path={sae_dir}")))
    uncached = run_eval(compose_config(overrides(tmp_path / "b", f"sae.path={sae_dir}", "eval.cache=false")))
    cfg_a = compose_config(overrides(tmp_path / "a"))
    assert artifacts.is_complete(evalset_dir(cfg_a))
    assert not (tmp_path / "b" / "evalset").exists()
    assert _same({k: cached.metrics[k] for k in METRIC_KEYS}, {k: uncached.metrics[k] for k in METRIC_KEYS})
    assert cached.metrics["ci"] == uncached.metrics["ci"]
    sums_a, sums_b = load_file(str(cached.path / PER_WINDOW)), load_file(str(uncached.path / PER_WINDOW))
    assert all(torch.equal(sums_a[k], sums_b[k]) for k in sums_a)

    # a second SAE at the same site reuses the eval set: building another would fail here
    def no_build(*a, **k):
        raise AssertionError("the eval set was rebuilt")

    monkeypatch.setattr(evalset, "build_evalset", no_build)
    second = run_eval(compose_config(overrides(tmp_path / "a", f"sae.path={_save(tmp_path / 'z', zero_sae(D))}")))
    assert second.metrics["loss_recovered"] == 0.0
    assert json.loads((second.path / "summary.json").read_text())["eval_set"]["reused"] is True
    # the zero-ablated CE is the same in both: it belongs to the eval set, not the SAE
    assert second.metrics["ce_zero_ablation"] == cached.metrics["ce_zero_ablation"]


def test_cached_eval_set_with_a_separate_block_entry(tmp_path: Path):
    """A site inside a block: the cache holds the block's entry as well, and still agrees."""
    hook = "blocks.1.hook_mlp_out"
    sae_dir = tmp_path / "sae"
    save_sae(sae_dir, random_sae(D, 8), {"model": "tiny", "hook": hook})
    cached = run_eval(compose_config(overrides(tmp_path / "a", f"hook={hook}", f"sae.path={sae_dir}")))
    cfg = compose_config(overrides(tmp_path / "a", f"hook={hook}"))
    stored = load_file(str(evalset_dir(cfg) / evalset.TENSORS))
    assert "entry" in stored and not torch.equal(stored["entry"], stored["site"])
    uncached = run_eval(
        compose_config(overrides(tmp_path / "b", f"hook={hook}", f"sae.path={sae_dir}", "eval.cache=false"))
    )
    assert _same({k: cached.metrics[k] for k in METRIC_KEYS}, {k: uncached.metrics[k] for k in METRIC_KEYS})


def test_interrupted_eval_set_build_is_redone(tmp_path: Path):
    sae_dir = _save(tmp_path / "sae", random_sae(D, 5))
    cfg = compose_config(overrides(tmp_path / "a", f"sae.path={sae_dir}"))
    partial = evalset_dir(cfg)
    partial.mkdir(parents=True)
    (partial / evalset.TENSORS).write_bytes(b"half a file")  # no completion marker
    result = run_eval(cfg)
    assert artifacts.is_complete(partial)
    assert load_file(str(partial / evalset.TENSORS))["tokens"].shape == (2, CTX)
    ref = run_eval(compose_config(overrides(tmp_path / "b", f"sae.path={sae_dir}", "eval.cache=false")))
    assert _same({k: result.metrics[k] for k in METRIC_KEYS}, {k: ref.metrics[k] for k in METRIC_KEYS})


def test_damaged_complete_eval_set_names_the_fix(tmp_path: Path):
    sae_dir = _save(tmp_path / "sae", random_sae(D, 6))
    cfg = compose_config(overrides(tmp_path / "a", f"sae.path={sae_dir}"))
    directory = evalset_dir(cfg)
    directory.mkdir(parents=True)
    (directory / evalset.TENSORS).write_bytes(b"not safetensors")
    artifacts.mark_complete(directory)
    with pytest.raises(ArtifactError, match=r"damaged.*rm -r"):
        run_eval(cfg)


def test_table_shows_intervals(tmp_path: Path, out: Path, capsys):
    cfg = compose_config(overrides(out, f"sae.path={_save(tmp_path / 'sae', random_sae(D, 7))}"))
    metrics = run_eval(cfg).metrics
    capsys.readouterr()
    print_table(metrics)
    err = capsys.readouterr().err
    lo, hi = metrics["ci"]["loss_recovered"]
    assert "95 % CI" in err and f"[{lo:.4f}, {hi:.4f}]" in err
    assert "gamma centred" in err and "passed through" in err


def test_external_sae_path_is_identified_by_its_weights(tmp_path: Path, out: Path):
    sae_dir = _save(tmp_path / "sae", scaled_identity_sae(D))
    cfg = compose_config(overrides(out, f"sae.path={sae_dir}"))
    result = run_eval(cfg)
    assert result.metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics["sae"]["path"] == str(sae_dir)
    _save(sae_dir, zero_sae(D))  # new weights, same path
    other = run_eval(cfg)
    assert not other.reused and other.path != result.path


def test_diverged_training_is_flagged_from_the_meta_or_the_log(tmp_path: Path, out: Path, capsys):
    """An SAE trained before training recorded divergence is judged from the metrics.jsonl beside
    it; one whose metadata records the verdict is taken at its word."""
    sae_dir = _save(tmp_path / "sae", random_sae(D, 5))  # no "divergence" key: an older SAE
    (sae_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "recon": r}) + "\n" for s, r in ((10, 0.4), (20, 0.1), (30, 2.5)))
    )
    flagged = run_eval(compose_config(overrides(out, f"sae.path={sae_dir}")))
    assert flagged.metrics["sae"]["divergence"]["step"] == 30
    assert "not a trustworthy point" in capsys.readouterr().err
    save_sae(sae_dir, random_sae(D, 5), {"model": "tiny", "hook": TINY_HOOK, "divergence": None})
    trusted = run_eval(compose_config(overrides(out, f"sae.path={sae_dir}")), force=True)
    assert trusted.metrics["sae"]["divergence"] is None
    assert "trustworthy" not in capsys.readouterr().err


def test_width_mismatch_is_a_config_error(tmp_path: Path, out: Path):
    sae_dir = tmp_path / "narrow"
    save_sae(sae_dir, scaled_identity_sae(32), {})
    with pytest.raises(ConfigError, match="d_model=32"):
        run_eval(compose_config(overrides(out, f"sae.path={sae_dir}")))


def test_model_or_hook_mismatch_names_both(tmp_path: Path, out: Path):
    sae_dir = tmp_path / "other-hook"
    save_sae(sae_dir, scaled_identity_sae(D), {"model": "tiny", "hook": "blocks.1.hook_resid_pre"})
    with pytest.raises(ConfigError, match=r"hook=blocks\.1\.hook_resid_pre.*hook=blocks\.2\.hook_resid_pre"):
        run_eval(compose_config(overrides(out, f"sae.path={sae_dir}")))


@pytest.mark.slow
def test_real_model_identity_sae_and_restart(tmp_path: Path):
    """The one real-model test here: on SmolLM2 (Llama) the fast path and the KL shortcut are
    taken and verified, an exact SAE scores 1, and zero-ablating a mid-depth residual stream
    clearly hurts."""
    hook = "blocks.12.hook_resid_pre"
    sae_dir = tmp_path / "sae"
    save_sae(sae_dir, scaled_identity_sae(576), {"model": "smollm2-135m", "hook": hook})
    cfg = compose_config(
        [
            f"hook={hook}",
            f"sae.path={sae_dir}",
            "eval.n_tokens=254",
            "eval.ctx_len=128",
            "eval.batch_size=2",
            "device=cpu",
            f"out_dir={tmp_path / 'out'}",
        ]
    )
    result = run_eval(cfg)
    m = result.metrics
    assert m["n_tokens"] == 254
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m["kl_div"] == pytest.approx(0.0, abs=1e-5)
    assert m["frac_passthrough"] == pytest.approx(3 / 127)  # site_start=4: BOS + 3
    assert m["ce_zero_ablation"] > m["ce_clean"] + 1.0
    summary = json.loads((result.path / "summary.json").read_text())
    assert summary["spliced_passes"] == "from_layer" and summary["kl_mode"] == "unembed"
