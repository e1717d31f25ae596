"""The inference engine: continuous batching over the absorbed-MLA latent cache.

The cache is preallocated: max_batch rows of max_seq_len (+2 for speculation) token positions, each
holding only c_kv and k_pe per layer (576 numbers a layer for V3), never per-head keys and values.
Running samples occupy rows 0..k-1, so one forward over a row range serves them all; when one
finishes, the last row moves into its place. Each step admits waiting requests (one batched,
right-padded prefill; a request's n samples share it, then copy its rows), then decodes every
running row by one token, or, with MTP speculation, by one or two. The forwards themselves are the
Runner's (runner.py); the per-sample state and results are in sequence.py.

Speculative decoding with MTP (V3 section 2.2, used for inference in 5.4.3): the MTP module, fed
the main model's last hidden state h_{L-1} and the pending token x_L, drafts x_{L+1}. A verify
forward takes [x_L, draft] at positions L, L+1; x_{L+1} is sampled from the first position exactly
as plain decoding would (same logits, the same draw of the sample's random stream), and only if it
equals the draft is x_{L+2} sampled from the second. So outputs, greedy or seeded, are those of
plain decoding, and a step yields 1 + (acceptance) tokens. The MTP module keeps its own cache
entries (layer id num_hidden_layers); its entry at index p is the pair (h_{p-1}, x_p), so index 0
is never used.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nanoseek.errors import UserError
from nanoseek.infer.grammar import GrammarError, Grammars, close_reasoning, mask_logits
from nanoseek.infer.prefix_cache import Block, PrefixCache, fingerprint
from nanoseek.infer.runner import Runner, Sampling
from nanoseek.infer.sampling import (
    RowParams,
    SamplingParams,
    TokenLogprob,
    apply_logit_bias,
    apply_penalties,
    logprobs_of,
    sample,
    sample_seed,
    uniform,
)
from nanoseek.infer.sequence import Completion, Delta, Request, Sample
from nanoseek.infer.stream import TextStream, prompt_leaves_reasoning_open
from nanoseek.model.model import KVCache, Transformer
from nanoseek.tokenizer import THINK_END, Tokenizer

Prompt = str | Sequence[int]
Params = SamplingParams | Sequence[SamplingParams] | None
# MTP speculation is on by default up to this many slots: drafting pays at small batch and loses at
# large, where the step is compute-bound and verifying doubles its tokens (bench/bench_infer.py)
SPECULATE_UP_TO = 16

_entropy = random.SystemRandom()


# --quantize int8's calibration chat: a question, then an answer of prose, sums, code and facts
CALIBRATION = Path(__file__).parent.parent / "assets" / "calibration.md"


def calibration_ids(tok: Tokenizer, max_len: int) -> torch.Tensor:
    """The calibration chat in the model's own template (its first paragraph the user's turn),
    as (1, T) ids, T at most max_len and 1,024."""
    question, answer = CALIBRATION.read_text().split("\n\n", 1)
    ids = tok.encode_chat([{"role": "user", "content": question},
                           {"role": "assistant", "content": answer}], add_generation_prompt=False)
    return torch.tensor([ids[: min(max_len, 1024)]])


def leaves_reasoning_open(ids: list[int], tok: Tokenizer) -> bool:
    """Whether generation starts inside a think block: the prompt's last <think> token comes after
    its last </think> token (stream.prompt_leaves_reasoning_open, read from the ids: however long
    the block so far, and a tag a message spelled as plain text is no tag).

    A tokenizer without the tags as tokens has them as text: then only the text after the prompt's
    last special token counts, which is what the template wrote after the last message (a raw
    prompt without special tokens counts whole)."""
    if tok.think_start_id is None or tok.think_end_id is None:
        special = set(tok.tok.get_added_tokens_decoder())
        tail = next((i + 1 for i in range(len(ids) - 1, -1, -1) if ids[i] in special), 0)
        return prompt_leaves_reasoning_open(tok.decode(ids[tail:]))

    def last(token: int) -> int:
        try:
            return len(ids) - 1 - ids[::-1].index(token)
        except ValueError:
            return -1

    return last(tok.think_start_id) > last(tok.think_end_id)


def _fresh_seed() -> int:
    """A seed for a request that gave none: from the OS, so it neither reads nor moves torch's
    RNG."""
    return _entropy.getrandbits(63)


class EngineError(UserError):
    """A request or an engine setting that cannot run (a prompt past the context, an unknown
    device); servers answer it with a 400."""


@dataclass
class EngineStats:
    prefill_tokens: int = 0
    cached_tokens: int = 0
    decode_steps: int = 0
    generated_tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class Engine:
    """Engine(model, tokenizer): generate(prompts, params), stream(...), astream(...), or for a
    serving loop add_request / step / abort.

    Cache memory: max_batch rows x max_seq_len tokens. Give cache_tokens (a token budget) to size
    max_batch from it. A request whose prompt + max_tokens exceeds max_seq_len is refused at once.
    speculative: MTP drafting; None = on when the checkpoint has MTP layers and max_batch <= 16.
    prefix_cache: a PrefixCache, or None for none. compile: static decode and drafting steps (see
    runner.py): on a GPU in bf16, CUDA graphs of every batch bucket, recorded here; on a CPU,
    torch.compile'd while rows x max_seq_len is at most runner.CPU_COMPILED_POSITIONS, each batch
    size on its first step.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, max_batch: int | None = None,
                 max_seq_len: int | None = None, cache_tokens: int | None = None,
                 prefix_cache: PrefixCache | None = None, speculative: bool | None = None,
                 max_prefill_tokens: int = 4096, compile: bool = False):
        cfg = model.cfg
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        if tokenizer.vocab_size > cfg.vocab_size:
            raise EngineError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                             f"vocab_size is {cfg.vocab_size}")
        self.device, self.dtype = model.embed_tokens.weight.device, model.embed_tokens.weight.dtype
        self._size(max_batch, max_seq_len, cache_tokens)
        # drafting pays at small batch; compiled, a plain step costs so little that it no longer
        # does (bench/bench_infer.py)
        if speculative is None:
            speculative = bool(model.mtp) and self.max_batch <= SPECULATE_UP_TO and not compile
        if speculative and not model.mtp:
            raise EngineError("speculative decoding drafts with MTP layers, "
                              "and this model has none")
        self.speculative = speculative
        # +2 positions: a verify step writes the draft one past the last token, the MTP module one
        # more
        self.cache = KVCache(cfg, self.max_batch, self.max_seq_len + 2, dtype=self.dtype,
                             device=self.device,
                             n_layers=cfg.num_hidden_layers + (1 if speculative else 0))
        self.runner = Runner(model, self.cache, compile)
        self.runner.capture(speculative)  # a GPU's CUDA graphs, recorded while the cache is empty
        self.prefix_cache = prefix_cache
        if prefix_cache is not None:
            prefix_cache.namespace = fingerprint(model, speculative)
        self.max_prefill_tokens = max_prefill_tokens
        self.rows: list[Sample] = []  # rows[i] is the sample in cache row i
        self.waiting: deque[Request] = deque()
        self.requests: dict[str, Request] = {}
        # (max_batch, vocab) generated-token counts, once a request has penalties
        self.counts: Tensor | None = None
        self.seen: Tensor | None = None  # (max_batch, vocab) tokens in prompt or output
        self.stats = EngineStats()
        self.grammars = Grammars(tokenizer, cfg.vocab_size)  # response formats' (grammar.py)
        self._ids = itertools.count()
        # step(), add_request() and abort() may come from different threads (astream runs steps in
        # a worker thread): one at a time
        self._lock = threading.RLock()
        self._finished_now: dict[str, Request] = {}

    def _size(self, max_batch: int | None, max_seq_len: int | None,
              cache_tokens: int | None) -> None:
        """Set max_seq_len and max_batch (from cache_tokens when given), refusing what cannot
        run."""
        cfg = self.cfg
        self.max_seq_len = max_seq_len or min(cfg.max_position_embeddings, 4096)
        if self.max_seq_len > cfg.max_position_embeddings:
            raise EngineError(f"max_seq_len {self.max_seq_len} is past the model's context "
                             f"(max_position_embeddings {cfg.max_position_embeddings})")
        if cache_tokens is not None:
            if cache_tokens < self.max_seq_len:
                raise EngineError(f"cache_tokens {cache_tokens} cannot hold one sequence of "
                                 f"max_seq_len {self.max_seq_len}")
            max_batch = min(max_batch or cache_tokens, cache_tokens // self.max_seq_len)
        self.max_batch = max_batch or 16
        if self.max_batch < 1 or self.max_seq_len < 2:
            raise EngineError(f"max_batch must be >= 1 and max_seq_len >= 2, got {self.max_batch}, "
                             f"{self.max_seq_len}")

    @classmethod
    def from_checkpoint(cls, path: str, device: str | None = None, dtype: str | None = None,
                        quantize: str | None = None, **kw) -> Engine:
        """Load a checkpoint directory (model + tokenizer). Defaults: CUDA in bf16 when there is a
        GPU, else the CPU in fp32. On the CPU (model/quant.py), quantize="int4": 4-bit projections
        and bf16 elsewhere; quantize="int8": int8 projections and lm_head, calibrated on a short
        text, fp32 elsewhere."""
        from nanoseek.checkpoint import load_model
        from nanoseek.model.quant import quantize_int4, quantize_int8

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise EngineError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"device {device!r}: this torch has no CUDA device "
                              "(use --device cpu)")
        if quantize not in (None, "int4", "int8"):
            raise EngineError(f"quantize must be int4, int8 or none, got {quantize!r}")
        computes = {"int4": "bfloat16", "int8": "float32"}.get(quantize)
        if computes and dtype not in (None, computes):
            raise EngineError(f"--quantize {quantize} computes in {computes}, not {dtype}: leave "
                              "--dtype out")
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise EngineError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        # quantized from fp32 weights (int4 then goes to bf16): a block's values before rounding
        model = load_model(path, device=device,
                           dtype=torch.float32 if quantize else getattr(torch, dtype))
        tok = Tokenizer.load(path)
        if quantize == "int4":
            quantize_int4(model)
        elif quantize == "int8":
            quantize_int8(model, calibration_ids(tok, model.cfg.max_position_embeddings))
        return cls(model, tok, **kw)

    @property
    def cache_bytes(self) -> int:
        return self.cache.kv.nbytes

    # -----------------------------------------------------------------------------------------
    # requests in

    def encode(self, prompt: Prompt) -> list[int]:
        """A str is raw text: the model's BOS is put in front unless it starts with it (chat prompts
        rendered by render_chat do); a list of ints is used as is."""
        if isinstance(prompt, str):
            if not prompt:
                raise EngineError("the prompt is empty")
            return self.tok.encode_prompt(prompt)
        ids = [int(i) for i in prompt]
        if not ids:
            raise EngineError("the prompt has no tokens")
        bad = [i for i in ids if not 0 <= i < self.cfg.vocab_size]
        if bad:
            raise EngineError(f"prompt token id {bad[0]} is outside the vocabulary "
                             f"[0, {self.cfg.vocab_size})")
        return ids

    def validate(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's token ids, or an EngineError saying why the request cannot run on this
        engine."""
        ids = self.encode(prompt)
        room = self.max_seq_len - len(ids)
        if room < 1:
            raise EngineError(f"the prompt has {len(ids)} tokens; the engine's max_seq_len is "
                             f"{self.max_seq_len}, which leaves no room to generate")
        if params.max_tokens is not None and params.max_tokens > room:
            raise EngineError(f"the prompt has {len(ids)} tokens and max_tokens is "
                             f"{params.max_tokens}: {len(ids) + params.max_tokens} > the engine's "
                             f"max_seq_len {self.max_seq_len}")
        if params.n > self.max_batch:
            raise EngineError(f"n = {params.n} samples do not fit in the engine's {self.max_batch} "
                             "slots")
        if params.grammar is not None:
            self.grammars.matcher(params.grammar)  # a GrammarError now, not in a step
            # the answer it holds starts at the </think> token, which the model could not write
            if self.tok.think_end_id is None and leaves_reasoning_open(ids, self.tok):
                raise GrammarError(f"structured output holds the answer after {THINK_END}, and "
                                   "this model's tokenizer has no such token (it writes the tag "
                                   "as text): ask with thinking off")
        outside = [t for t in params.logit_bias if t >= self.cfg.vocab_size]
        if outside:
            raise EngineError(f"logit_bias token id {outside[0]} is outside the vocabulary "
                             f"[0, {self.cfg.vocab_size})")
        return ids

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None,
                    request_id: str | None = None, deltas: bool = True) -> str:
        """Queue a request; it starts at the next step() with free slots. Returns its id.

        deltas=False: the caller reads only the completions, so step() reports each sample once,
        when it finishes, in one delta that holds all of it; and a sample without stop strings is
        detokenized and parsed then, once, instead of token by token (the same text: the stream's
        stages do not depend on chunking). This is most of the per-token Python work of a GRPO
        rollout."""
        params = params or SamplingParams()
        ids = self.validate(prompt, params)
        with self._lock:
            rid = request_id or f"req-{next(self._ids)}"
            if rid in self.requests:
                raise EngineError(f"request id {rid!r} is already running")
            in_reasoning = leaves_reasoning_open(ids, self.tok)
            req = Request(rid, ids, params, params.max_tokens or self.max_seq_len - len(ids),
                          in_reasoning, deltas, done=[None] * params.n)
            self.requests[rid] = req
            self.waiting.append(req)
        return rid

    @torch.inference_mode()
    def abort(self, request_id: str) -> None:
        """Stop a request now (a client went away): its slots are free for the next step."""
        with self._lock:
            req = self.requests.pop(request_id, None)
            if req is None:
                return
            if req in self.waiting:
                self.waiting.remove(req)
            for s in req.samples:
                if s.row >= 0:
                    self._release(s)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -----------------------------------------------------------------------------------------
    # one step

    @torch.inference_mode()
    def step(self) -> list[Delta]:
        """Admit what fits, prefill it, decode every running row; returns this step's deltas."""
        with self._lock, self._evaluating():
            return self._step()

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """The model in eval mode, and back after: the engine may share a model that is being
        trained (GRPO). (A toggle walks every module, so generate() does it once rather than once a
        step.)"""
        training = self.model.training
        if training:
            self.model.eval()
        try:
            yield
        finally:
            if training:
                self.model.train()

    def _step(self) -> list[Delta]:
        self._done: list[Delta] = []
        admitted = self._admit()
        if admitted:
            try:
                self._prefill(admitted)
            except BaseException:  # e.g. out of memory: these requests fail, the engine goes on
                for r in admitted:
                    self.abort(r.id)
                raise
            self._release_finished()
        if self.rows:
            self._decode(self.speculative)
            self._release_finished()
        out = self._done
        for s in self.rows:
            if s.delta is not None:
                out.append(s.delta)
                s.delta = None
        for d in out:
            req = self.requests.get(d.request_id) or self._finished_now.get(d.request_id)
            if req is not None and req.backlog is not None:
                req.backlog.append(d)
        self._finished_now.clear()
        return out

    def _admit(self) -> list[Request]:
        """FIFO while slots are free and the padded prefill (rows x longest uncached prompt) stays
        within max_prefill_tokens (a single request always goes)."""
        out, longest, free = [], 0, self.max_batch - len(self.rows)
        while self.waiting and self.waiting[0].params.n <= free:
            req = self.waiting[0]
            req.prefix_blocks = self._match_prefix(req)
            longest_if = max(longest, len(req.prompt) - req.cached)
            if out and (len(out) + 1) * longest_if > self.max_prefill_tokens:
                break
            self.waiting.popleft()
            out.append(req)
            longest = longest_if
            free -= req.params.n
        return out

    def _new_sample(self, req: Request, index: int) -> Sample:
        """Sample index of req, in the next free row."""
        p = req.params
        seed = None
        if not p.greedy:  # sample 0 of a seeded request uses the seed itself; the others derive it
            seed = _fresh_seed() if p.seed is None else sample_seed(p.seed, index)
        stream = TextStream(self.tok, p.stop, p.skip_special_tokens, in_reasoning=req.in_reasoning)
        s = Sample(req, index, stream, seed, row=len(self.rows), len=len(req.prompt),
                   logprobs=[] if p.logprobs else None, thinking=req.in_reasoning,
                   text_at_end=not req.deltas and not stream.stop_matcher.stop,
                   matcher=None if p.grammar is None else self.grammars.matcher(p.grammar),
                   answering=not req.in_reasoning)
        self.rows.append(s)
        if p.penalised and self.counts is None:
            V = self.cfg.vocab_size
            self.counts = torch.zeros(self.max_batch, V, device=self.device)
            self.seen = torch.zeros(self.max_batch, V, dtype=torch.bool, device=self.device)
        if self.counts is not None:
            self.counts[s.row] = 0
            self.seen[s.row] = False
            self.seen[s.row, torch.tensor(req.prompt, device=self.device)] = True
        return s

    def _prefill(self, reqs: list[Request]) -> None:
        """One right-padded forward over the uncached part of every new prompt, in rows k..k+m-1
        (the first sample of each); the other samples copy those rows afterwards."""
        first = [self._new_sample(r, 0) for r in reqs]
        for r, f in zip(reqs, first):
            r.samples = [f]
        r0, m = first[0].row, len(reqs)
        starts = [r.cached for r in reqs]
        n_new = [len(r.prompt) - r.cached for r in reqs]
        tokens = torch.zeros(m, max(n_new), dtype=torch.long)
        for i, r in enumerate(reqs):
            tokens[i, : n_new[i]] = torch.tensor(r.prompt[r.cached:])
            if r.cached:
                self._load_blocks(first[i].row, r.prefix_blocks)
        tokens = tokens.to(self.device)
        h = self.runner.prefill((r0, r0 + m), tokens, starts)
        h_last = h[torch.arange(m, device=self.device), torch.tensor(n_new, device=self.device) - 1]
        logits = self.model.lm_head(h_last)
        self.stats.prefill_tokens += sum(n_new)
        self.stats.cached_tokens += sum(starts)
        if self.speculative:
            self._mtp_prompt(reqs, (r0, r0 + m), h, tokens, starts, n_new)
        if self.prefix_cache is not None:  # after the MTP pass: blocks carry its entries too
            for i, r in enumerate(reqs):
                self._store_blocks(r, first[i].row, h[i], starts[i])
        row_logits = {}
        for i, r in enumerate(reqs):
            first[i].h_last = h_last[i]
            for j in range(1, r.params.n):  # siblings copy the prompt's cache rows
                s = self._new_sample(r, j)
                L = len(r.prompt) + 2
                self.cache.kv[:, s.row, :L] = self.cache.kv[:, first[i].row, :L]
                s.h_last = h_last[i]
                r.samples.append(s)
            for s in r.samples:
                row_logits[s.row] = logits[i]
        samples = sorted((s for r in reqs for s in r.samples), key=lambda s: s.row)
        self._sample_append(samples, torch.stack([row_logits[s.row] for s in samples]))
        self._mtp_draft(samples)

    def _decode(self, speculate: bool) -> None:
        """Every running row by one token, or with speculate, a verify step: one or two."""
        samples = self.rows
        if speculate:
            tokens = torch.tensor([[s.pending, s.draft] for s in samples], device=self.device)
        else:
            tokens = torch.tensor([[s.pending] for s in samples], device=self.device)
        h, logits, picked = self.runner.decode((0, len(samples)), tokens,
                                               [s.len for s in samples],
                                               self._in_graph(samples, tokens.shape[1]))
        self.stats.decode_steps += 1
        for s in samples:
            s.len += 1
        if picked is not None:
            picked = picked.tolist()
            self._append_picked(samples, [p[0] for p in picked], logits, 0)
        else:
            self._sample_append(samples, logits[:, 0])
        if not speculate:
            return
        live = [s for s in samples if s.finish_reason is None]
        accepted = [s for s in live if s.out[-1] == s.draft]
        self.stats.drafted += len(live)
        self.stats.accepted += len(accepted)
        for s in accepted:
            s.len += 1
        if accepted and picked is not None:
            self._append_picked(accepted, [picked[s.row][1] for s in accepted],
                                None if logits is None else logits[[s.row for s in accepted]], 1)
        elif accepted:
            self._sample_append(accepted, logits[[s.row for s in accepted], 1])
        rows = {s.row for s in accepted}
        self._mtp_draft(samples, (h, [int(s.row in rows) for s in samples]))

    # -----------------------------------------------------------------------------------------
    # MTP drafting

    def _mtp_prompt(self, reqs: list[Request], rows: tuple[int, int], h: Tensor, tokens: Tensor,
                    starts: list[int], n_new: list[int]) -> None:
        """Fill the MTP cache with the prompt's own pairs: index p = start + j holds (h_{p-1},
        token p). The first pair's h_{start-1} comes from the prefix cache; with nothing cached,
        index 0 gets a placeholder that the mask hides from every later query."""
        hp = torch.zeros_like(h)
        for i, r in enumerate(reqs):
            hp[i, 0] = r.prefix_blocks[-1].h if r.cached else h[i, 0]
            hp[i, 1: n_new[i]] = h[i, : n_new[i] - 1]
        self.runner.mtp(rows, hp, tokens, starts)

    def _mtp_draft(self, samples: list[Sample],
                   verified: tuple[Tensor, list[int]] | None = None) -> None:
        """Draft the next token of each sample in samples (contiguous rows). After a prefill: the
        pair (h_last, pending) at index len. After a verify step (verified = its hidden states
        (k, 2, d) and, per row, 1 if the draft was accepted): the pairs at indices L+1 and L+2,
        (h_L, x_{L+1}) and (h_{L+1}, x_{L+2}), the draft read from the last real one."""
        if not self.speculative or not samples:
            return
        rows = (samples[0].row, samples[-1].row + 1)
        if verified is None:
            h = torch.stack([s.h_last for s in samples])[:, None]
            tokens = torch.tensor([[s.pending] for s in samples], device=self.device)
            hk = self.runner.mtp(rows, h, tokens, [s.len for s in samples])[:, 0]
        else:
            h, accepted = verified
            # a rejected row's second pair is a placeholder: written past its length, overwritten
            # later
            pairs = [s.out[-2:] if a else s.out[-1:] * 2 for s, a in zip(samples, accepted)]
            tokens = torch.tensor(pairs, device=self.device)
            hk = self.runner.mtp(rows, h, tokens, [s.len - a for s, a in zip(samples, accepted)])
            which = torch.tensor(accepted, device=self.device)
            hk = hk[torch.arange(len(samples), device=self.device), which]
        for s, d in zip(samples, self.model.lm_head(hk).argmax(dim=-1).tolist()):
            s.draft = d

    # -----------------------------------------------------------------------------------------
    # sampling, stopping, bookkeeping

    def _in_graph(self, samples: list[Sample], S: int) -> Sampling | None:
        """How a decode step's graph may pick the tokens of these rows (S a row), or None when one
        of them needs the host to sample (penalties, logit_bias, a grammar: _sample_append)."""
        params = [s.req.params for s in samples]
        if self.runner.graphs is None or any(
                p.logit_bias or p.penalised or s.matcher is not None
                for p, s in zip(params, samples)):
            return None
        logits = any(p.logprobs for p in params)
        if all(p.greedy for p in params):
            return Sampling(greedy=True, logits=logits)
        # each token's draw at its own position, as _sample_append draws it
        draws = [[0.0 if s.seed is None else uniform(s.seed, len(s.out) + j) for j in range(S)]
                 for s in samples]
        return Sampling(False, RowParams.of(params, self.model.cfg.vocab_size, "cpu"),
                        torch.tensor(draws, dtype=torch.float32), logits)

    def _append_picked(self, samples: list[Sample], tokens: list[int], logits: Tensor | None,
                       j: int) -> None:
        """Take the tokens a graph picked (at position j of each row's step)."""
        lps = None
        if logits is not None:
            lps = logprobs_of(logits[:, j].float(), torch.tensor(tokens, device=logits.device),
                              [s.req.params.top_logprobs for s in samples])
        for i, (s, t) in enumerate(zip(samples, tokens)):
            self._append(s, t, None if lps is None else lps[i])

    def _sample_append(self, samples: list[Sample], logits: Tensor) -> None:
        """Draw each sample's next token from its row of logits and take it."""
        logits = logits.float()
        params = [s.req.params for s in samples]
        raw = logits
        if any(p.logit_bias for p in params):
            logits = apply_logit_bias(logits, params)
        if self.counts is not None and any(p.penalised for p in params):
            rows = torch.tensor([s.row for s in samples], device=self.device)
            logits = apply_penalties(logits, params, self.counts[rows], self.seen[rows])
        held = [i for i, s in enumerate(samples) if s.matcher is not None and s.answering]
        if held:
            logits = mask_logits(logits, held, [samples[i].matcher for i in held])
        if reasoning := [i for i, s in enumerate(samples) if s.matcher is not None
                         and not s.answering and not s.req.params.ignore_eos]:
            logits = close_reasoning(logits, reasoning, sorted(self.tok.stop_ids),
                                     self.tok.think_end_id)
        # a draw per sample, at the position of the token drawn: the same alone, batched or
        # speculating
        draws = [None if s.seed is None else uniform(s.seed, len(s.out)) for s in samples]
        tokens = sample(logits, params, draws)
        lps = None
        if any(p.logprobs for p in params):
            lps = logprobs_of(raw, tokens, [p.top_logprobs for p in params])
        for i, (s, t) in enumerate(zip(samples, tokens.tolist())):
            self._append(s, t, None if lps is None else lps[i])

    def _append(self, s: Sample, t: int, lp: TokenLogprob | None) -> None:
        if self.counts is not None:
            self.counts[s.row, t] += 1
            self.seen[s.row, t] = True
        self.stats.generated_tokens += 1
        s.append(t, lp, self.tok)

    def _release_finished(self) -> None:
        """Free the rows of finished samples (keeping their last deltas) and forget finished
        requests."""
        for s in [s for s in self.rows if s.finish_reason is not None]:
            self._done.append(s.delta)
            s.delta = None
            self._release(s)
            if all(c is not None for c in s.req.done):
                self._finished_now[s.req.id] = self.requests.pop(s.req.id, s.req)

    def _release(self, s: Sample) -> None:
        """Free s's row: the last row moves into it, so running rows stay 0..k-1."""
        i, last = s.row, len(self.rows) - 1
        if i != last:
            mover = self.rows[last]
            L = min(mover.len + 2, self.cache.max_len)
            self.cache.kv[:, i, :L] = self.cache.kv[:, last, :L]
            if self.counts is not None:
                self.counts[i], self.seen[i] = self.counts[last], self.seen[last]
            mover.row = i
            self.rows[i] = mover
        self.rows.pop()
        s.row = -1

    # -----------------------------------------------------------------------------------------
    # prefix cache

    def _match_prefix(self, req: Request) -> list[Block]:
        pc = self.prefix_cache
        if pc is None:
            return []
        # at least one prompt token is always run: its logits give the first output token
        keys = pc.keys(req.prompt[: len(req.prompt) - 1])
        blocks = pc.match(keys, self.device)
        req.cached = len(blocks) * pc.block_size
        return blocks

    def _load_blocks(self, row: int, blocks: list[Block]) -> None:
        n = len(blocks) * self.prefix_cache.block_size
        self.cache.kv[:, row, :n] = torch.cat([b.kv for b in blocks], dim=1)

    def _store_blocks(self, req: Request, row: int, h: Tensor, start: int) -> None:
        """Keep every full block of the prompt not already cached (h: this prefill's hidden states
        of the row, position start onwards)."""
        pc = self.prefix_cache
        B = pc.block_size
        for j, key in enumerate(pc.keys(req.prompt)):
            if key in pc or (j + 1) * B <= start:
                continue
            lo, hi = j * B, (j + 1) * B
            pc.put(key, Block(self.cache.kv[:, row, lo:hi], h[hi - 1 - start]))

    # -----------------------------------------------------------------------------------------
    # the public loops

    def stream(self, prompts: Sequence[Prompt], params: Params = None) -> Iterator[Delta]:
        """Yield the deltas of these prompts as they come. Several streams may be consumed at once:
        each step's deltas are kept per request until their own consumer takes them."""
        reqs = self._add_all(prompts, params, listen=True)
        try:
            while True:
                ready, running = self._ready(reqs)
                yield from ready
                if not running:
                    return
                self.step()
        finally:  # also when the caller stops early: free the slots
            for r in reqs:
                self.abort(r.id)

    async def astream(self, prompts: Sequence[Prompt], params: Params = None
                      ) -> AsyncIterator[Delta]:
        """stream() for asyncio: each engine step runs in a worker thread, so the event loop stays
        free."""
        reqs = self._add_all(prompts, params, listen=True)
        try:
            while True:
                ready, running = self._ready(reqs)
                for d in ready:
                    yield d
                if not running:
                    return
                await asyncio.to_thread(self.step)
        finally:
            for r in reqs:
                self.abort(r.id)

    def generate(self, prompts: Sequence[Prompt], params: Params = None,
                 progress: bool = False) -> list[Completion]:
        """Completions of all prompts: for prompt i, its n samples, prompt-major order."""
        from tqdm.auto import tqdm

        reqs = self._add_all(prompts, params)
        ids = {r.id for r in reqs}
        bar = tqdm(total=sum(r.params.n for r in reqs), desc="generating", unit="sample",
                   disable=not progress)
        try:
            with self._evaluating():
                while any(r.id in self.requests for r in reqs):
                    for d in self.step():
                        bar.update(d.finish_reason is not None and d.request_id in ids)
        finally:
            bar.close()
            for r in reqs:
                self.abort(r.id)
        return [c for r in reqs for c in r.done]

    def _ready(self, reqs: list[Request]) -> tuple[list[Delta], bool]:
        """The deltas waiting for these requests, and whether any of them is still running."""
        with self._lock:
            out = [d for r in reqs for d in r.backlog]
            for r in reqs:
                r.backlog.clear()
            return out, any(r.id in self.requests for r in reqs)

    def _add_all(self, prompts: Sequence[Prompt], params: Params,
                 listen: bool = False) -> list[Request]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("pass a list of prompts (strings or token-id lists), not one prompt")
        plist = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise EngineError(f"{len(prompts)} prompts but {len(plist)} SamplingParams")
        reqs = []
        try:
            with self._lock:  # no step may run before the backlogs exist
                for p, sp in zip(prompts, plist):
                    req = self.requests[self.add_request(p, sp, deltas=listen)]
                    req.backlog = deque() if listen else None
                    reqs.append(req)
        except Exception:
            for r in reqs:
                self.abort(r.id)
            raise
        return reqs
