"""The forwards the engine runs over rows of its latent cache: a prompt prefill, a decode or verify
step of the main model, and the MTP module's drafting pass.

Prefill runs eager. A decode or verify step (one or two tokens a row) runs eager too, or, with
compile, as a torch.compile graph of static shapes: the rows are padded up to a power-of-two bucket
and every query attends over the whole cache under a mask, so one graph per bucket serves every
length. Which forward runs where, and what the cache rows hold, is the engine's business
(engine.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nanoseek.model.model import KVCache, Transformer

# below this many new tokens a row, attention runs absorbed (on the latent); above, naive (per-head
# K/V from the latent), whose matmuls are cheaper once there are many queries
ABSORB_BELOW = 16


class Runner:
    """Runner(model, cache, compile): prefill, decode (also verify) and mtp over cache rows a:b."""

    def __init__(self, model: Transformer, cache: KVCache, compile: bool = False):
        self.model, self.cache = model, cache
        self.device = model.embed_tokens.weight.device
        self.max_batch = cache.kv.shape[1]
        self._compiled = None
        if compile:  # shapes are static per bucket: one graph each, none recompiled as rows grow
            # cpp_wrapper: the graph's launcher in C++, not Python, a share of a small step's time
            opts = {"dynamic": False, "fullgraph": True, "options": {"cpp_wrapper": True}}
            self._compiled = {"main": torch.compile(self._main_forward, **opts),
                              "mtp": torch.compile(self._mtp_forward, **opts)}
            self._views: dict[int, KVCache] = {}
            # (forward, bucket, tokens a row) compiled so far
            self.ran: set[tuple[str, int, int]] = set()
            # a graph per forward, bucket and 1 or 2 tokens: more than dynamo's default of 8 for
            # V3's 256 experts
            limit = torch._dynamo.config.cache_size_limit
            torch._dynamo.config.cache_size_limit = max(limit, 32)

    def positions(self, starts: Sequence[int] | Tensor, S: int,
                  full: bool = False) -> tuple[Tensor, Tensor]:
        """Positions (b, S) from per-row starts, and the mask (b, S, kv_len): a query at p sees
        0..p. kv_len is the longest row's, or with full the whole cache (a static shape, for a
        compiled step). Padding positions are clamped into the cache (their writes land on unread
        spare positions)."""
        starts = torch.as_tensor(starts, device=self.device)
        positions = starts[:, None] + torch.arange(S, device=self.device)
        positions = positions.clamp(max=self.cache.max_len - 1)
        kv_len = self.cache.max_len if full else int(positions.max()) + 1
        mask = torch.arange(kv_len, device=self.device)[None, None, :] <= positions[:, :, None]
        return positions, mask

    def prefill(self, rows: tuple[int, int], tokens: Tensor, starts: Sequence[int]) -> Tensor:
        """The main model's hidden states (m, S, d) of right-padded prompt tokens (m, S) at
        positions starts + j, their latents written to cache rows rows[0]:rows[1]."""
        S = tokens.shape[1]
        positions, mask = self.positions(starts, S)
        return self.model.hidden_states(tokens, positions, cache=self.cache.rows(*rows), mask=mask,
                                        absorb=S < ABSORB_BELOW)

    def decode(self, rows: tuple[int, int], tokens: Tensor,
               starts: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The main model on tokens (k, S) at positions starts + j: hidden states and logits. S is
        1 for a decode step, 2 for a verify step (the pending token and the draft)."""
        return self._forward("main", rows, tokens, starts)

    def mtp(self, rows: tuple[int, int], h: Tensor, tokens: Tensor,
            starts: Sequence[int]) -> Tensor:
        """The MTP module on pairs (h_{p-1}, x_p) at indices starts + j; returns its normed
        output."""
        return self._forward("mtp", rows, tokens, starts, h)[0]

    def _main_forward(self, tokens: Tensor, positions: Tensor, mask: Tensor,
                      cache: KVCache) -> tuple[Tensor, Tensor]:
        h = self.model.hidden_states(tokens, positions, cache=cache, mask=mask, absorb=True)
        return h, self.model.lm_head(h)

    def _mtp_forward(self, tokens: Tensor, h: Tensor, positions: Tensor, mask: Tensor,
                     cache: KVCache) -> tuple[Tensor, None]:
        # index 0 holds no pair: hidden from every query but a placeholder at 0 itself (no empty
        # softmax)
        first = positions[..., None] == 0
        mask = mask & ((torch.arange(mask.shape[-1], device=mask.device) >= 1) | first)
        cos, sin = self.model.rope(positions, h.dtype)
        _, hk = self.model.mtp[0](self.model.embed_tokens(tokens), h, cos=cos, sin=sin, mask=mask,
                                  cache=cache, positions=positions, kv_len=mask.shape[-1],
                                  absorb=tokens.shape[1] < ABSORB_BELOW)
        return hk, None

    def _forward(self, which: str, rows: tuple[int, int], tokens: Tensor, starts: Sequence[int],
             h: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The main model ('main': hidden states and logits) or the MTP module ('mtp': its normed
        output of h and the tokens) on cache rows rows[0]:rows[1], tokens (k, S) at positions
        starts + j: eager, or compiled with static shapes."""
        k, S = tokens.shape
        view = self._static(rows, S)
        h_arg = () if h is None else (h,)  # _mtp_forward takes h after the tokens
        if view is None:
            fn, view = getattr(self, f"_{which}_forward"), self.cache.rows(*rows)
            positions, mask = self.positions(starts, S)
            return fn(tokens, *h_arg, positions, mask, view)
        b = view.kv.shape[1]
        if b > k:  # pad to the bucket: dummy rows at position 0 of free cache rows, dropped after
            tokens = torch.cat([tokens, tokens.new_zeros(b - k, S)])
            h_arg = tuple(torch.cat([x, x.new_zeros(b - k, *x.shape[1:])]) for x in h_arg)
        positions, mask = self.positions([*starts, *[0] * (b - k)], S, full=True)
        args = (tokens, *h_arg, positions, mask, view)
        key = (which, b, S)
        if key in self.ran:
            # dynamo checks ~100 guards a call, a share of a small step's time; once a shape has
            # compiled, only the guards that tell its graphs apart can change here: the engine's
            # model keeps its parameters' shapes and dtypes and always runs in eval and inference
            # mode
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                out = self._compiled[which](*args)
        else:
            out = self._compiled[which](*args)
            self.ran.add(key)
        return tuple(o[:k] if o is not None else None for o in out)

    def _static(self, rows: tuple[int, int], S: int) -> KVCache | None:
        """With compile, for a decode or verify step (S <= 2) on rows 0:k: the cache view of the
        bucket (k rounded up to a power of two, at most max_batch) when a compiled step pays, else
        None. It pays at a few tokens a step, where the eager step is per-op overhead (measured by
        bench/bench_infer.py) and each token's routed experts can be gathered (static shapes)
        while that copies fewer weights than all the experts hold; past that, eager grouped
        matmuls win."""
        if self._compiled is None or rows[0] != 0 or S > 2:
            return None
        b = min(1 << (rows[1] - 1).bit_length(), self.max_batch)
        cfg = self.model.cfg
        if cfg.n_routed_experts and b * S * cfg.num_experts_per_tok > cfg.n_routed_experts:
            return None
        if b not in self._views:
            self._views[b] = self.cache.rows(0, b)
        return self._views[b]
