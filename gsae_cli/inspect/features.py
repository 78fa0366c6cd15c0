"""What a feature dashboard shows, as pure functions of tensors (gsae inspect).

Activations are kept sparse: an SAE's f(x) over N site tokens has about N x L0 non-zeros, far
fewer than N x d_sae, so every per-feature quantity (firing frequency, maximum, top examples,
examples from lower quantiles, the histogram) is computed from the non-zeros sorted by
(feature, activation descending), one vectorised pass for all features at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseActs:
    """The non-zero activations of an SAE over `n_rows` tokens, sorted by feature and, within a
    feature, by activation (largest first; ties by row). `start[j]:start[j + 1]` is feature j's
    segment."""

    rows: Tensor  # [nnz] int64 token row
    feats: Tensor  # [nnz] int64 feature
    values: Tensor  # [nnz] float32 activation
    start: Tensor  # [d_sae + 1] int64 segment offsets
    n_rows: int
    d_sae: int

    @property
    def counts(self) -> Tensor:
        return self.start[1:] - self.start[:-1]


def sparse_from_batches(batches: list[tuple], n_rows: int, d_sae: int) -> SparseActs:
    """Build SparseActs from (first row, f [b, d_sae]) or (first row, f, active [b, d_sae])
    batches. With `active` (the SAE's own active mask: a Gated SAE's gate can be open while its
    magnitude is 0), a feature fires where it is active, as eval's L0 counts it; else where f != 0."""
    rows, feats, values = [], [], []
    for first, f, *active in batches:
        r, c = torch.nonzero(active[0] if active else f, as_tuple=True)
        rows.append(r.to(torch.int64) + first)
        feats.append(c.to(torch.int64))
        values.append(f[r, c].float())
    return sort_sparse(
        torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64),
        torch.cat(feats) if feats else torch.zeros(0, dtype=torch.int64),
        torch.cat(values) if values else torch.zeros(0),
        n_rows,
        d_sae,
    )


def sort_sparse(rows: Tensor, feats: Tensor, values: Tensor, n_rows: int, d_sae: int) -> SparseActs:
    # Three stable sorts, last key first: row ascending, then value descending, then feature.
    order = torch.argsort(rows, stable=True)
    order = order[torch.argsort(values[order], descending=True, stable=True)]
    order = order[torch.argsort(feats[order], stable=True)]
    rows, feats, values = rows[order], feats[order], values[order]
    counts = torch.bincount(feats, minlength=d_sae)
    start = torch.zeros(d_sae + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(counts, 0)
    return SparseActs(rows, feats, values, start, n_rows, d_sae)


def top_examples(acts: SparseActs, k: int) -> tuple[Tensor, Tensor]:
    """(rows [d_sae, k], values [d_sae, k]) of each feature's k largest activations; -1 / 0 pad
    features that fire on fewer than k tokens."""
    idx, ok = _segment_heads(acts.feats, acts.d_sae, k)
    if acts.values.numel() == 0:
        return torch.full(idx.shape, -1, dtype=torch.int64), torch.zeros(idx.shape)
    return (
        torch.where(ok, acts.rows[idx], torch.full_like(idx, -1)),
        torch.where(ok, acts.values[idx], torch.zeros(idx.shape)),
    )


def max_activations(acts: SparseActs) -> Tensor:
    """[d_sae] each feature's largest activation (the head of its segment), 0 if it never fires."""
    vmax = torch.zeros(acts.d_sae)
    live = acts.counts > 0
    vmax[live] = acts.values[acts.start[:-1][live]]
    return vmax


def _segment_heads(seg: Tensor, n_segments: int, k: int) -> tuple[Tensor, Tensor]:
    """For nnz entries sorted by segment id `seg`: (indices [n_segments, k] of each segment's
    first k entries, valid mask)."""
    counts = torch.bincount(seg, minlength=n_segments)
    start = torch.cumsum(counts, 0) - counts
    offs = start[:, None] + torch.arange(k)[None, :]
    ok = torch.arange(k)[None, :] < counts[:, None]
    return torch.where(ok, offs, torch.zeros_like(offs)), ok


def quantile_examples(
    acts: SparseActs, n_groups: int, per_group: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Examples from across each feature's activation distribution, as the paper's raters saw
    them: a feature's c firings, ranked by activation, are cut into `n_groups` equal-count groups
    (group q holds ranks floor(q c / g) .. floor((q + 1) c / g) - 1; group 0 the largest), and
    `per_group` distinct firings are drawn uniformly from each (seeded).

    Returns (rows [d_sae, g, p], values [d_sae, g, p], ranges [d_sae, g, 2] (min, max activation
    of the group)); -1 / 0 / NaN pad groups with too few firings."""
    d, g, p = acts.d_sae, n_groups, per_group
    n = acts.values.numel()
    if n == 0:
        return (torch.full((d, g, p), -1, dtype=torch.int64), torch.zeros(d, g, p), torch.full((d, g, 2), math.nan))
    counts = acts.counts
    rank = torch.arange(n) - acts.start[:-1][acts.feats]
    group = acts.feats * g + torch.div((rank + 1) * g - 1, counts[acts.feats], rounding_mode="floor")
    # random order within each group: sort by a uniform key, then stably by group
    order = torch.argsort(torch.rand(n, generator=generator))
    order = order[torch.argsort(group[order], stable=True)]
    idx, ok = _segment_heads(group[order], d * g, p)
    picked = order[idx]
    rows = torch.where(ok, acts.rows[picked], torch.full_like(picked, -1)).view(d, g, p)
    vals = torch.where(ok, acts.values[picked], torch.zeros(picked.shape)).view(d, g, p)
    # each group's range: entries are sorted descending within a feature, so by group id too
    first, has = _segment_heads(group, d * g, 1)
    sizes = torch.bincount(group, minlength=d * g)
    last = (first[:, 0] + sizes - 1).clamp(min=0)
    nan = torch.full((d * g,), math.nan)
    vmax = torch.where(has[:, 0], acts.values[first[:, 0]], nan)
    vmin = torch.where(has[:, 0], acts.values[last], nan)
    return rows, vals, torch.stack([vmin, vmax], dim=-1).view(d, g, 2)


def activation_histograms(acts: SparseActs, bins: int) -> Tensor:
    """Counts [d_sae, bins] of each feature's non-zero activations over [0, its maximum], equal
    width bins (the maximum falls in the last)."""
    d = acts.d_sae
    if acts.values.numel() == 0:
        return torch.zeros(d, bins, dtype=torch.int64)
    rel = acts.values / max_activations(acts)[acts.feats].clamp_min(1e-30)
    b = torch.clamp((rel * bins).to(torch.int64), 0, bins - 1)
    return torch.bincount(acts.feats * bins + b, minlength=d * bins).view(d, bins)


class Lookup:
    """f[row, feat] for arbitrary index tensors (0 where the feature is silent): the non-zeros
    keyed by feat * n_rows + row and sorted once, then a binary search per query."""

    def __init__(self, acts: SparseActs):
        key = acts.feats * acts.n_rows + acts.rows
        order = torch.argsort(key)
        self.keys, self.values, self.n_rows = key[order], acts.values[order], acts.n_rows

    def __call__(self, rows: Tensor, feats: Tensor) -> Tensor:
        want = feats.to(torch.int64) * self.n_rows + rows.to(torch.int64)
        if self.keys.numel() == 0:
            return torch.zeros(want.shape)
        flat = want.reshape(-1)
        pos = torch.searchsorted(self.keys, flat).clamp(max=self.keys.numel() - 1)
        hit = (self.keys[pos] == flat) & (rows.reshape(-1) >= 0)
        return torch.where(hit, self.values[pos], torch.zeros(())).view(want.shape)


def unit_rows(w: Tensor) -> Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)


def logit_effects(
    directions: Tensor, W_U: Tensor, norm_weight: Tensor | None, centre: bool, n: int, chunk: int = 256
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The output tokens each decoder direction d promotes and suppresses most, read through the
    model's final norm and unembedding (the direct path: d added to the last residual stream).
    The norm is linear in d apart from its per-token scale, which is positive and the same for
    every token of the vocabulary: so the effect is W_U (w ⊙ d'), with d' = d - mean(d) for a
    LayerNorm (centring) and d' = d for an RMSNorm, and w the norm's weight.

    Returns (top ids [d_sae, n], top values, bottom ids, bottom values) in logit units per unit
    of the direction."""
    d = unit_rows(directions.float())
    if centre:
        d = d - d.mean(dim=1, keepdim=True)
    if norm_weight is not None:
        d = d * norm_weight.float()[None, :]
    W = W_U.float()
    tops, topv, bots, botv = [], [], [], []
    for i in range(0, d.shape[0], chunk):
        eff = d[i : i + chunk] @ W.T  # [chunk, vocab]
        v, ix = torch.topk(eff, n, dim=1)
        tops.append(ix)
        topv.append(v)
        v, ix = torch.topk(eff, n, dim=1, largest=False)
        bots.append(ix)
        botv.append(v)
    return torch.cat(tops), torch.cat(topv), torch.cat(bots), torch.cat(botv)


def nearest_by_cosine(
    a: Tensor, b: Tensor, n: int, exclude_self: bool = False, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """For each row of `a`, the `n` rows of `b` with the largest cosine similarity: (indices
    [len(a), n], cosines). `exclude_self` (a is b) leaves each row's own match out."""
    au, bu = unit_rows(a.float()), unit_rows(b.float())
    n = min(n, bu.shape[0] - (1 if exclude_self else 0))
    ids, cos = [], []
    for i in range(0, au.shape[0], chunk):
        sim = au[i : i + chunk] @ bu.T
        if exclude_self:
            r = torch.arange(sim.shape[0])
            sim[r, r + i] = -math.inf
        v, ix = torch.topk(sim, n, dim=1)
        ids.append(ix)
        cos.append(v)
    return torch.cat(ids), torch.cat(cos)


def log_density_histogram(freqs: Tensor, bins: int = 40, lo: float = -6.0) -> tuple[list[int], list[float], int]:
    """(counts, edges, n_dead) of log10 firing frequency over [lo, 0] for the index page;
    frequencies below 10^lo fall in the first bin, dead features are counted apart."""
    live = freqs[freqs > 0].double()
    logf = torch.log10(live).clamp(min=lo, max=0.0)
    edges = torch.linspace(lo, 0.0, bins + 1, dtype=torch.float64)
    counts = (
        torch.histogram(logf, bins=edges).hist.to(torch.int64) if logf.numel() else torch.zeros(bins, dtype=torch.int64)
    )
    return counts.tolist(), edges.tolist(), int((freqs == 0).sum())
