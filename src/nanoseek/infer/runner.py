"""The forwards the engine runs over rows of its latent cache: a prompt prefill, a decode or verify
step of the main model, and the MTP module's drafting pass.

Prefill runs eager. A decode or verify step (one or two tokens a row) runs eager too, or, with
compile, with static shapes: the rows are padded up to a power-of-two bucket and every query attends
over the whole cache under a mask, so one step per bucket serves every length. On a GPU (bf16 or
fp16 weights) each bucket's step is recorded once as a CUDA graph, at start-up while the cache is
still empty, and replayed: a 100M-parameter model's step is hundreds of small kernels, whose
launches from Python cost more than the kernels themselves. A decode step's graph also picks its
tokens (sampling.sample_rows, from buffers of each row's parameters and random draws), so only the
chosen ids leave it: two graphs a bucket, greedy (an argmax) and sampled (the filters); rows whose
sampling needs the host (penalties, logit_bias, a grammar) sample eagerly from the greedy graph's
logits. On a CPU the steps are torch.compile'd instead (graphs do not exist there). Which forward
runs where, and what the cache rows hold, is the engine's business (engine.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nanoseek.infer.sampling import RowParams, sample_rows
from nanoseek.model.model import KVCache, Transformer, static_shapes

# below this many new tokens a row, attention runs absorbed (on the latent); above, naive (per-head
# K/V from the latent), whose matmuls are cheaper once there are many queries
ABSORB_BELOW = 16
# compiled CPU steps (Engine(compile=True) without CUDA) while rows x cache length is at most this;
# eager past it. A compiled step attends over the whole cache (static shapes), an eager one over
# what is written: 4 rows of a 4,096-token cache, or 32 rows of 512
CPU_COMPILED_POSITIONS = 16384


@dataclass
class Sampling:
    """How a decode step's graph picks the tokens of rows 0..k-1 (k, S): greedy (argmax), or by
    each row's parameters and each token's draw (sampling.uniform). logits: also hand back the
    logits (for log-probabilities)."""

    greedy: bool
    params: RowParams | None = None  # (k,), unless greedy
    draws: Tensor | None = None  # (k, S) float32, unless greedy
    logits: bool = False


@dataclass
class StepGraph:
    """One bucket's decode, verify or drafting step: static input buffers (tokens, [h], positions,
    mask; a sampled step's row parameters and draws too) the runner fills before each run, and the
    outputs the run leaves. graph is the recorded CUDA graph, replayed; None off a GPU, where the
    same step runs eagerly on the same buffers (what the CPU tests check)."""

    fn: Callable[..., tuple[Tensor | None, ...]]
    inputs: tuple[Tensor, ...]
    view: KVCache
    sampler: tuple = ()  # (RowParams, draws) of a sampled main step
    graph: torch.cuda.CUDAGraph | None = None
    outputs: tuple[Tensor | None, ...] | None = None

    def run(self) -> tuple[Tensor | None, ...]:
        if self.graph is not None:
            self.graph.replay()
        else:
            with static_shapes():
                self.outputs = self.fn(*self.inputs, self.view, *self.sampler)
        return self.outputs


class Runner:
    """Runner(model, cache, compile): prefill, decode (also verify) and mtp over cache rows a:b.
    graphs: run the static steps as CUDA graphs (None: with compile, on a GPU in bf16 or fp16;
    True off a GPU runs the graph path's buffers eagerly, for tests)."""

    def __init__(self, model: Transformer, cache: KVCache, compile: bool = False,
                 graphs: bool | None = None):
        self.model, self.cache = model, cache
        self.device = model.embed_tokens.weight.device
        self.max_batch = cache.kv.shape[1]
        if graphs is None:
            # bf16 only: other dtypes have no grouped GEMM on a GPU, and the per-expert loop that
            # stands in for it syncs with the host (model.grouped_mm)
            bf16 = model.embed_tokens.weight.dtype == torch.bfloat16
            graphs = compile and self.device.type == "cuda" and bf16
        # (forward, bucket, tokens a row) -> its step; a main step's forward is "greedy" or
        # "sample"
        self.graphs: dict[tuple[str, int, int], StepGraph] | None = {} if graphs else None
        self._pool = None  # the CUDA graphs' shared memory pool
        self._compiled = None
        self._views: dict[int, KVCache] = {}
        # (forward, bucket, tokens a row) of the static steps run so far
        self.ran: set[tuple[str, int, int]] = set()
        self._guarded: set[tuple[str, int, int]] = set()  # compiled shapes already guarded once
        if compile and not graphs:
            # shapes are static per bucket: one graph each, none recompiled as rows grow;
            # cpp_wrapper: the graph's launcher in C++, not Python, a share of a small step's time
            opts = {"dynamic": False, "fullgraph": True, "options": {"cpp_wrapper": True}}
            self._compiled = {"main": torch.compile(self._main_forward, **opts),
                              "mtp": torch.compile(self._mtp_forward, **opts)}
            # a graph per forward, bucket and 1 or 2 tokens: more than dynamo's default of 8 for
            # V3's 256 experts
            limit = torch._dynamo.config.cache_size_limit
            torch._dynamo.config.cache_size_limit = max(limit, 32)

    def buckets(self) -> list[int]:
        """The batch sizes a static step is padded to: powers of two, and max_batch."""
        out, b = [], 1
        while b < self.max_batch:
            out.append(b)
            b *= 2
        return [*out, self.max_batch]

    @torch.inference_mode()
    def capture(self, speculative: bool) -> None:
        """Record every bucket's CUDA graphs (decode; with speculative also verify and the two
        drafting passes), largest first so that the smaller ones fit in its memory pool. Call it
        while the cache is empty: a recording run writes its dummy rows' latents at position 0."""
        if self.graphs is None or self.device.type != "cuda":
            return
        main = [("greedy", 1), ("sample", 1)]
        steps = main + ([("greedy", 2), ("sample", 2), ("mtp", 1), ("mtp", 2)]
                        if speculative else [])
        for b in reversed(self.buckets()):
            for which, S in steps:
                self._graph(which, b, S)

    def _graph(self, which: str, b: int, S: int) -> StepGraph:
        """The step of bucket b, S tokens a row: made (and on a GPU recorded) on first use."""
        key = (which, b, S)
        if key in self.graphs:
            return self.graphs[key]
        dev, d = self.device, self.model.cfg.hidden_size
        tokens = torch.zeros(b, S, dtype=torch.long, device=dev)
        h = (torch.zeros(b, S, d, dtype=self.model.embed_tokens.weight.dtype, device=dev),)
        positions = torch.zeros(b, S, dtype=torch.long, device=dev)
        mask = torch.zeros(b, S, self.cache.max_len, dtype=torch.bool, device=dev)
        mask[..., 0] = True  # the recording runs see position 0 only: no empty softmax
        sampler = ()
        if which == "sample":
            sampler = (RowParams.neutral(b, self.model.cfg.vocab_size, dev),
                       torch.zeros(b, S, device=dev))
        step = StepGraph(self._main_step if which != "mtp" else self._mtp_forward,
                         (tokens, *(h if which == "mtp" else ()), positions, mask),
                         self._view(b), sampler)
        if dev.type == "cuda":
            # a first run off the graph: lazy initialisations (cuBLAS workspaces, autotuning)
            # must not be recorded
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                step.run()
            torch.cuda.current_stream(dev).wait_stream(side)
            step.graph = torch.cuda.CUDAGraph()
            with static_shapes(), torch.cuda.graph(step.graph, pool=self._pool):
                step.outputs = step.fn(*step.inputs, step.view, *step.sampler)
            self._pool = step.graph.pool()
        self.graphs[key] = step
        return step

    def _view(self, b: int) -> KVCache:
        if b not in self._views:
            self._views[b] = self.cache.rows(0, b)
        return self._views[b]

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

    def decode(self, rows: tuple[int, int], tokens: Tensor, starts: Sequence[int],
               sampling: Sampling | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The main model on tokens (k, S) at positions starts + j: hidden states, logits, and
        when the step ran as a graph (a CUDA graph, or its buffers on a CPU) and `sampling` says
        how, the tokens it picked (k, S) (the logits then only if sampling.logits). Else the
        picked tokens are None: the caller samples from the logits. S is 1 for a decode step, 2
        for a verify step (the pending token and the draft)."""
        if self.graphs is None or self._bucket(rows, tokens.shape[1]) is None:
            return (*self._forward("main", rows, tokens, starts), None)
        which = "greedy" if sampling is None or sampling.greedy else "sample"
        h, logits, picked = self._forward(which, rows, tokens, starts, sampling=sampling)
        if sampling is None:
            return h, logits, None
        return h, logits if sampling.logits else None, picked

    def mtp(self, rows: tuple[int, int], h: Tensor, tokens: Tensor,
            starts: Sequence[int]) -> Tensor:
        """The MTP module on pairs (h_{p-1}, x_p) at indices starts + j; returns its normed
        output."""
        return self._forward("mtp", rows, tokens, starts, h)[0]

    def _main_forward(self, tokens: Tensor, positions: Tensor, mask: Tensor,
                      cache: KVCache) -> tuple[Tensor, Tensor]:
        h = self.model.hidden_states(tokens, positions, cache=cache, mask=mask, absorb=True)
        return h, self.model.lm_head(h)

    def _main_step(self, tokens: Tensor, positions: Tensor, mask: Tensor, cache: KVCache,
                   params: RowParams | None = None,
                   draws: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """A graph's decode or verify step: hidden states, logits, and each token's pick (b, S):
        the argmax, or with params and draws, sampled."""
        h, logits = self._main_forward(tokens, positions, mask, cache)
        if params is None:
            return h, logits, logits.argmax(dim=-1)
        b, S, V = logits.shape
        each = RowParams(*(x.repeat_interleave(S) for x in (
            params.temperature, params.top_k, params.min_p, params.top_p)))
        return h, logits, sample_rows(logits.reshape(b * S, V), each, draws.reshape(-1)).view(b, S)

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
                 h: Tensor | None = None,
                 sampling: Sampling | None = None) -> tuple[Tensor | None, ...]:
        """The main model ('main': hidden states and logits; as a graph, 'greedy' or 'sample',
        which add the tokens picked) or the MTP module ('mtp': its normed output of h and the
        tokens) on cache rows rows[0]:rows[1], tokens (k, S) at positions starts + j: eager, or a
        static step of the bucket (a CUDA graph or a compiled one)."""
        k, S = tokens.shape
        b = self._bucket(rows, S)
        h_arg = () if h is None else (h,)  # _mtp_forward takes h after the tokens
        if b is None:
            fn, view = getattr(self, f"_{which}_forward"), self.cache.rows(*rows)
            positions, mask = self.positions(starts, S)
            return fn(tokens, *h_arg, positions, mask, view)
        # pad to the bucket: dummy rows at position 0 of free cache rows, their outputs dropped
        positions, mask = self.positions([*starts, *[0] * (b - k)], S, full=True)
        key = (which, b, S)
        self.ran.add(key)
        if self.graphs is not None:
            step = self._graph(which, b, S)
            for buf, x in zip(step.inputs, (tokens, *h_arg)):
                buf[:k].copy_(x)
                buf[k:].zero_()
            step.inputs[-2].copy_(positions)
            step.inputs[-1].copy_(mask)
            if step.sampler:  # padding rows keep what they hold: their picks are dropped
                params, draws = step.sampler
                params.copy_(sampling.params, k)
                draws[:k].copy_(sampling.draws)
            out = step.run()
            if which != "mtp" and not (sampling is None or sampling.logits):
                out = (out[0], None, out[2])  # (the logits are not needed: no copy of them)
            # copies: the outputs' memory is the graphs' pool, rewritten by the next replay
            return tuple(None if o is None else o[:k].clone() for o in out)
        if b > k:
            tokens = torch.cat([tokens, tokens.new_zeros(b - k, S)])
            h_arg = tuple(torch.cat([x, x.new_zeros(b - k, *x.shape[1:])]) for x in h_arg)
        args = (tokens, *h_arg, positions, mask, self._view(b))
        if key in self._guarded:
            # dynamo checks ~100 guards a call, a share of a small step's time; once a shape has
            # compiled, only the guards that tell its graphs apart can change here: the engine's
            # model keeps its parameters' shapes and dtypes and always runs in eval and inference
            # mode
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                out = self._compiled[which](*args)
        else:
            out = self._compiled[which](*args)
            self._guarded.add(key)
        return tuple(o[:k] if o is not None else None for o in out)

    def _bucket(self, rows: tuple[int, int], S: int) -> int | None:
        """For a decode or verify step (S <= 2) on rows 0:k with static steps on: its bucket (k
        rounded up to a power of two, at most max_batch), or None to run eager. A CUDA graph always
        pays. A compiled CPU step pays at a few tokens a step, where the eager step is per-op
        overhead (measured by bench/bench_infer.py) and each token's routed experts can be gathered
        (the grouped GEMM is not compiled on a CPU) while that copies fewer weights than all the
        experts hold; past that, eager grouped matmuls win."""
        if (self.graphs is None and self._compiled is None) or rows[0] != 0 or S > 2:
            return None
        b = min(1 << (rows[1] - 1).bit_length(), self.max_batch)
        cfg = self.model.cfg
        if (self.graphs is None and cfg.n_routed_experts
                and b * S * cfg.num_experts_per_tok > cfg.n_routed_experts):
            return None
        # a compiled CPU step fuses the small ops around each matmul (SmolLM2-135M at 32 rows on 2
        # cores: 0.90x eager's time in fp32, 0.75x with int8 projections), but reads the whole
        # cache where eager reads what is written
        if self.graphs is None and b * self.cache.max_len > CPU_COMPILED_POSITIONS:
            return None
        return b
