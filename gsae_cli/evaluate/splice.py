"""Running the model with its site replaced: the forward restarted at the hook's block (or a full
forward with a hook), and the per-position losses and KL computed from logits in chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from gsae_cli.core.progress import notice
from gsae_cli.errors import ArtifactError, ConfigError
from gsae_cli.evaluate.metrics import kl_div_per_position
from gsae_cli.lm.models import LoadedModel, hook_layer

# Vocabulary-sized temporaries are made for a few dozen positions at a time: small buffers are
# recycled by the allocator instead of being fresh (page-faulting) memory for every op.
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Running the model with the site replaced
# ---------------------------------------------------------------------------------------------


def _block_container(bridge) -> tuple[nn.Module, str] | None:
    """(parent, attribute) of the HF model's ModuleList that holds the bridge's blocks."""
    root = getattr(bridge, "original_model", None)
    blocks = getattr(bridge, "blocks", None)
    if root is None or blocks is None:
        return None
    for module in root.modules():
        for name, child in module.named_children():
            if child is blocks:
                return module, name
    return None


@contextlib.contextmanager
def _only_blocks_from(bridge, layer: int) -> Iterator[None]:
    """Hide blocks 0..layer-1 from the HF model's layer loop for one forward: with
    `start_at_layer` their output is discarded anyway, so running them is pure waste."""
    found = _block_container(bridge) if layer > 0 else None
    if found is None:
        yield
        return
    parent, name = found
    full = getattr(parent, name)
    setattr(parent, name, nn.ModuleList(list(full)[layer:]))
    try:
        yield
    finally:
        setattr(parent, name, full)


class Splicer:
    """Clean forwards with capture, and forwards with the hook's activation replaced.

    method: "auto" (restart from the hook's block when the hook is inside one, verified on the
    first batch), "from_layer" (always restart, unverified) or "full" (full hooked forwards).
    TransformerLens 4.3's `start_at_layer` still executes blocks 0..L-1 on a throw-away input,
    so the restart also hides those blocks from the HF model for the duration of the call."""

    def __init__(self, model: LoadedModel, hook: str, method: str = "auto"):
        if method not in ("auto", "from_layer", "full"):
            raise ValueError(method)
        self.bridge, self.hook, self.device = model.bridge, hook, model.device
        self.layer = hook_layer(hook)
        self.entry = None if self.layer is None else f"blocks.{self.layer}.hook_resid_pre"
        self.from_layer = method != "full" and self.layer is not None
        self.unverified = method == "auto" and self.from_layer

    @property
    def method(self) -> str:
        return "from_layer" if self.from_layer else "full"

    @property
    def entry_is_site(self) -> bool:
        return self.entry == self.hook

    @property
    def entry_name(self) -> str:
        """`entry` where a restart needs it (from_layer)."""
        assert self.entry is not None  # from_layer is only ever set for a hook inside a block
        return self.entry

    def clean(self, tokens: Tensor, extra: tuple[str, ...] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits, {name: activation}) for the hook, the block entry (restart method only) and
        `extra` hook names."""
        got: dict[str, Tensor] = {}

        def keeper(name: str):
            # Keyed by the name we asked for: TransformerLens may report an alias's target
            # (hook_resid_pre fires as blocks.L.hook_in).
            def keep(act: Tensor, hook) -> None:
                got[name] = act.detach().clone()  # clone: later in-place ops must not reach it

            return keep

        names = [self.hook] + ([self.entry_name] if self.from_layer and not self.entry_is_site else [])
        names += [n for n in extra if n not in names]
        logits = self.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(n, keeper(n)) for n in names])
        missing = [n for n in names if n not in got]
        if missing:
            raise ConfigError(
                f"Hook {', '.join(missing)} never fired in a forward pass; choose a hook on "
                "the residual stream, attention or MLP path (e.g. blocks.L.hook_resid_pre)."
            )
        if self.from_layer and self.entry_is_site:
            got[self.entry_name] = got[self.hook]
        return logits, got

    def patched(
        self, tokens: Tensor, entry: Tensor | None, replacement: Tensor, capture: str | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(logits, the activation at `capture` or None) with the hook's activation replaced by
        `replacement` (same shape)."""
        got: dict[str, Tensor] = {}

        def replace(act: Tensor, hook) -> Tensor:
            return replacement.to(act.dtype)

        def keep(act: Tensor, hook) -> None:
            got["c"] = act.detach()

        fwd_hooks = [(self.hook, replace)] + ([(capture, keep)] if capture else [])
        if self.from_layer:
            assert self.layer is not None  # from_layer is only ever set for a hook inside a block
            with _only_blocks_from(self.bridge, self.layer):
                logits = self.bridge.run_with_hooks(
                    entry, start_at_layer=self.layer, return_type="logits", fwd_hooks=fwd_hooks
                )
        else:
            logits = self.bridge.run_with_hooks(tokens, return_type="logits", fwd_hooks=fwd_hooks)
        if capture and "c" not in got:
            raise ArtifactError(
                f"Hook {capture} did not fire in the spliced pass; rebuild the eval set "
                "(remove its folder under out_dir/evalset/)."
            )
        return logits, got.get("c")

    def checked_entry(self, tokens: Tensor, logits: Tensor, site: Tensor, entry: Tensor | None) -> Tensor | None:
        """The block entry to pass to `patched` for this batch: on the first call of an "auto"
        splicer, verify the restart path first (it may fall back to full forwards, which take none)."""
        if self.unverified:
            self.verify(tokens, logits, site, entry)
        return entry if self.from_layer else None

    def ablated_nll(
        self, tokens: Tensor, entry: Tensor | None, site: Tensor, first: int, value: Tensor | float = 0.0
    ) -> Tensor:
        """Per-window sums of next-token NLL [n] with the site set to `value` (zeros, or one
        activation broadcast to every position) at positions >= `first`."""
        ablated = site.clone()
        ablated[:, first:] = value
        logits, _ = self.patched(tokens, entry, ablated)
        return next_token_nll(logits, tokens).sum(dim=1)

    def verify(self, tokens: Tensor, logits: Tensor, site: Tensor, entry: Tensor | None) -> None:
        """On the first batch: the restart path, fed the clean activation, must give the clean
        logits (one sequence, a fraction of a pass). If not, use full forwards from then on."""
        self.unverified = False
        try:
            assert entry is not None  # unverified implies from_layer, for which callers pass the entry
            check, _ = self.patched(tokens[:1], entry[:1], site[:1])
            ok = logits_close(check, logits[:1])
        except Exception as e:  # noqa: BLE001 — any failure of the fast path means: use the slow one
            ok = False
            reason = f"{type(e).__name__}: {e}"
        else:
            reason = "its logits differ from the full forward's"
        if not ok:
            notice(
                f"eval: cannot restart the forward at block {self.layer} for this model ({reason}); "
                "using full forwards (about 1.5x slower)."
            )
            self.from_layer = False


def logits_close(a: Tensor, b: Tensor) -> bool:
    """Equal to float rounding (relative to the largest logit)."""
    if a.shape != b.shape:
        return False
    tol = 1e-4 if b.dtype == torch.float32 else 2e-2
    scale = float(b.abs().max()) + 1e-6
    return float((a.float() - b.float()).abs().max()) <= tol * scale


def unembed_affine(bridge) -> tuple[Tensor, Tensor | None] | None:
    """(W_U [vocab, d_u], b_U or None) when the bridge's unembedding wraps a plain Linear."""
    linear = getattr(getattr(bridge, "unembed", None), "original_component", None)
    if isinstance(linear, nn.Linear):
        return linear.weight, linear.bias
    return None


# ---------------------------------------------------------------------------------------------
# Per-position quantities from logits (chunked over positions)
# ---------------------------------------------------------------------------------------------


def _row_step(vocab: int) -> int:
    return max(1, _CHUNK_ELEMENTS // vocab)


def log_sum_exp(logits: Tensor) -> Tensor:
    """log Σ_v exp z(v) per position, float32 arithmetic, as float64 [leading dims]."""
    *lead, v = logits.shape
    rows = logits.reshape(-1, v)
    step = _row_step(v)
    out = torch.cat([torch.logsumexp(rows[i : i + step].float(), dim=-1) for i in range(0, rows.shape[0], step)])
    return out.view(lead).double()


def next_token_nll(logits: Tensor, tokens: Tensor, lse: Tensor | None = None) -> Tensor:
    """Per-position next-token NLL [batch, ctx_len - 1] float64: position t predicts token t + 1
    (TransformerLens's convention; the last position predicts nothing)."""
    if lse is None:
        lse = log_sum_exp(logits)
    target = logits[:, :-1].gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    return lse[:, :-1] - target.double()


def kl_direct(logits_clean: Tensor, logits_spliced: Tensor) -> Tensor:
    """KL(P_clean ‖ P_spliced) per position [batch, ctx_len] float64 from both sets of logits."""
    b, s, v = logits_clean.shape
    rows_c, rows_s = logits_clean.reshape(b * s, v), logits_spliced.reshape(b * s, v)
    step = _row_step(v)
    out = torch.cat([kl_div_per_position(rows_c[i : i + step], rows_s[i : i + step]) for i in range(0, b * s, step)])
    return out.view(b, s).double()


def expected_unembedding(logits: Tensor, w: Tensor) -> Tensor:
    """Σ_v P(v) W_U[v] per position [batch, ctx_len, d_u] float32 (w: W_U in float32)."""
    b, s, v = logits.shape
    rows = logits.reshape(b * s, v)
    step = _row_step(v)
    out = torch.cat([torch.softmax(rows[i : i + step].float(), dim=-1) @ w for i in range(0, b * s, step)])
    return out.view(b, s, -1)
