"""gsae_cli.inspect.features (what a dashboard shows) and the study statistics, on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from gsae_cli.inspect.features import (
    Lookup,
    activation_histograms,
    log_density_histogram,
    logit_effects,
    nearest_by_cosine,
    quantile_examples,
    sparse_from_batches,
    top_examples,
)
from gsae_cli.inspect.study import checksum, pair_statistics, sample_study

# 6 tokens x 3 features. Feature 0 fires on rows 0, 2, 3, 5 with 0.5, 2.0, 1.0, 2.0 (a tie at 2.0);
# feature 1 only on row 4 (3.0); feature 2 never.
F = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0, 0.0, 0.0]])


def acts():
    return sparse_from_batches([(0, F[:4]), (4, F[4:])], n_rows=6, d_sae=3)


def test_sparse_segments_sorted_by_activation_then_row():
    a = acts()
    assert a.counts.tolist() == [4, 1, 0]
    assert a.start.tolist() == [0, 4, 5, 5]
    assert a.rows.tolist() == [2, 5, 3, 0, 4]  # the 2.0 tie keeps row order
    assert a.values.tolist() == [2.0, 2.0, 1.0, 0.5, 3.0]


def test_top_examples_pad_short_features():
    rows, vals = top_examples(acts(), 2)
    assert rows.tolist() == [[2, 5], [4, -1], [-1, -1]]
    assert vals.tolist() == [[2.0, 2.0], [3.0, 0.0], [0.0, 0.0]]


def test_quantile_groups_are_equal_count_rank_ranges():
    # feature 0 has 4 firings ranked [2.0 (row 2), 2.0 (row 5), 1.0 (row 3), 0.5 (row 0)]; 2 groups:
    # ranks 0-1 and 2-3. One draw per group with 2 candidates; a draw of 2 takes both.
    rows, vals, ranges = quantile_examples(acts(), 2, 2, torch.Generator().manual_seed(0))
    assert sorted(rows[0, 0].tolist()) == [2, 5] and sorted(rows[0, 1].tolist()) == [0, 3]
    assert ranges[0].tolist() == [[2.0, 2.0], [0.5, 1.0]]
    # feature 1 (one firing): floor(q c / g) puts it in the last group; the first is empty
    assert rows[1, 0].tolist() == [-1, -1] and rows[1, 1].tolist() == [4, -1]
    assert math.isnan(ranges[1, 0, 0]) and ranges[1, 1].tolist() == [3.0, 3.0]
    assert (rows[2] == -1).all()


def test_quantile_draws_are_uniform_and_distinct():
    g = torch.Generator().manual_seed(1)
    f = torch.zeros(1000, 1)
    f[:, 0] = torch.arange(1, 1001).float()  # 1000 firings, distinct values
    a = sparse_from_batches([(0, f)], 1000, 1)
    counts = torch.zeros(1000)
    for _ in range(200):
        rows, vals, _ = quantile_examples(a, 4, 5, g)
        assert len(set(rows[0].flatten().tolist())) == 20  # distinct within and across groups
        # group 0 holds the 250 largest (rows 750-999), group 3 the smallest (rows 0-249)
        assert (rows[0, 0] >= 750).all() and (rows[0, 3] < 250).all()
        assert torch.equal(vals[0], (rows[0] + 1).float())
        counts[rows[0].flatten()] += 1
    # 200 x 5 draws per group of 250: each row expected 4 times; uniform within a few sd
    per_group = counts.view(4, 250)
    assert per_group.sum(dim=1).tolist() == [1000.0] * 4
    assert per_group.std() < 3.0


def test_histograms_and_lookup():
    a = acts()
    h = activation_histograms(a, 4)  # feature 0 over [0, 2]: 0.5 -> bin 1, 1.0 -> bin 2, 2.0 x2 -> bin 3
    assert h.tolist() == [[0, 1, 1, 2], [0, 0, 0, 1], [0, 0, 0, 0]]
    look = Lookup(a)
    r = torch.arange(6)[:, None].expand(6, 3)
    c = torch.arange(3)[None, :].expand(6, 3)
    assert torch.equal(look(r, c), F)
    assert look(torch.tensor([-1]), torch.tensor([0])).tolist() == [0.0]  # -1: no row


def test_logit_effects_through_rms_and_layer_norm():
    W_U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 3 tokens, d = 2
    d = torch.tensor([[3.0, 4.0]])  # unit: [0.6, 0.8]
    up, upv, down, downv = logit_effects(d, W_U, torch.tensor([2.0, 1.0]), centre=False, n=1)
    # RMSNorm weight [2, 1]: [1.2, 0.8] -> logits [1.2, 0.8, 2.0]
    assert up.tolist() == [[2]] and upv.flatten().tolist() == pytest.approx([2.0])
    assert down.tolist() == [[1]] and downv.flatten().tolist() == pytest.approx([0.8])
    # LayerNorm: centre first: [0.6, 0.8] - 0.7 = [-0.1, 0.1]; weight 1 -> [-0.1, 0.1, 0]
    up, upv, down, downv = logit_effects(d, W_U, None, centre=True, n=1)
    assert up.tolist() == [[1]] and upv.flatten().tolist() == pytest.approx([0.1])
    assert down.tolist() == [[0]] and downv.flatten().tolist() == pytest.approx([-0.1])


def test_nearest_by_cosine_excludes_self():
    D = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 2.0], [-1.0, 0.0]])
    ids, cos = nearest_by_cosine(D, D, 2, exclude_self=True)
    assert ids[0].tolist() == [1, 2] and cos[0].tolist() == pytest.approx([0.8, 0.0], abs=1e-7)
    assert ids[3].tolist()[0] == 2 and float(cos[3, 0]) == pytest.approx(0.0, abs=1e-7)
    ids, cos = nearest_by_cosine(D[:1], D[1:], 1)
    assert ids.tolist() == [[0]] and cos.flatten().tolist() == pytest.approx([0.8])


def test_log_density_histogram():
    freqs = torch.tensor([0.0, 1e-7, 1e-3, 0.5])
    counts, edges, dead = log_density_histogram(freqs, bins=6, lo=-6.0)
    assert dead == 1 and sum(counts) == 3
    assert counts[0] == 1 and counts[3] == 1 and counts[5] == 1  # 1e-7 clamped into the first bin


# ---- the study --------------------------------------------------------------------------------


def test_sample_study_draws_live_features_only():
    fa = torch.tensor([0.0, 0.1, 0.2, 0.0, 0.3])
    fb = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4])
    a, b, order = sample_study(fa, fb, 3, seed=5)
    assert sorted(a) == [1, 2, 4] and set(b) <= {0, 2, 3, 4} and len(set(b)) == 3
    assert sorted(order) == list(range(6))
    assert sample_study(fa, fb, 3, seed=5) == (a, b, order)  # seeded
    from gsae_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="only 3 of its 5 features fire"):
        sample_study(fa, fb, 4, seed=0)


def _fnv(data: bytes) -> str:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def test_checksum_is_fnv1a_of_the_canonical_text():
    assert _fnv(b"a") == "e40c292c" and _fnv(b"") == "811c9dc5"  # the published FNV-1a 32-bit vectors
    ratings = [{"item": 1, "label": "yes"}, {"item": 2, "label": "no"}]
    assert checksum("s", "r", ratings) == _fnv(b"s|r|1:yes,2:no")
    assert checksum("s", "Zoë", ratings) == _fnv("s|Zoë|1:yes,2:no".encode())  # UTF-8, as TextEncoder


def test_pair_statistics_by_hand():
    # differences 2, 1, 1, 0, -1: mean 0.6. Wilcoxon-Pratt: ranks of |d| with the zero kept:
    # |d| = 2,1,1,0,1 -> ranks 5, 3, 3, 1, 3; the zero's rank is dropped: W+ = 5 + 3 + 3 = 11, W- = 3.
    st = pair_statistics([2, 1, 1, 0, -1])
    assert st["n_pairs"] == 5 and st["mean_difference"] == pytest.approx(0.6)
    assert 0.0 < st["p_one_sided"] < 0.5
    lo, hi = st["ci"]
    assert lo < 0.6 < hi and lo >= -1 and hi <= 2
    from scipy import stats

    ref = stats.wilcoxon([2, 1, 1, 0, -1], zero_method="pratt", alternative="greater")
    assert ref.statistic == pytest.approx(11.0)
    assert st["p_one_sided"] == pytest.approx(ref.pvalue)
    # no spread: a point interval; all zero: p = 1
    assert pair_statistics([1, 1, 1])["ci"] == [1.0, 1.0]
    assert pair_statistics([0, 0, 0])["p_one_sided"] == 1.0


@pytest.mark.parametrize("name", ["relu", "gated", "rescale_shift"])
def test_encode_with_mask_is_encode_and_active_mask(name):
    from gsae_cli.saes import build_sae

    torch.manual_seed(0)
    sae = build_sae(name, 8, 32)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(64, 8)
    f, active = sae.encode_with_mask(x)
    assert torch.equal(f, sae.encode(x)) and torch.equal(active, sae.active_mask(x))
    assert active.any() and not active.all()


def test_sig_rounds_to_short_json():
    import json

    from gsae_cli.inspect.webpages import sig

    t = torch.tensor([0.123456, 123456.0, -0.000987654, 0.0, float("nan"), 9.9999, 3e-7])
    assert json.dumps(sig(t).tolist()) == "[0.123, 123000.0, -0.000988, 0.0, 0.0, 10.0, 3e-07]"
    assert sig(torch.tensor([0.12345]), 4).tolist() == [0.1235]
