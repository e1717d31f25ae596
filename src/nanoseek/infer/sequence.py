"""What the engine hands back (Completion, Delta, Usage) and what it keeps per request and per
sample while they run (Request, Sample).

A Sample turns its tokens into text as they come (or, when nobody reads the deltas, once at the end)
and, when it finishes, into its Completion; which cache row it holds and when it runs is the
engine's business (engine.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from nanoseek.infer.prefix_cache import Block
from nanoseek.infer.sampling import SamplingParams, TokenLogprob
from nanoseek.infer.stream import StreamDelta, TextStream
from nanoseek.tokenizer import THINK_END, THINK_START, Tokenizer


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    # prompt tokens served from the prefix cache (DeepSeek: prompt_cache_hit_tokens)
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # completion tokens spent inside the think block

    @property
    def uncached_tokens(self) -> int:  # prompt_cache_miss_tokens
        return self.prompt_tokens - self.cached_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """What one step added to one sample. finish_reason ('stop', 'length', 'abort') and usage are
    set on a sample's last delta."""

    request_id: str
    index: int  # which of the request's n samples
    token_ids: list[int]
    text: str = ""  # raw text (think tags included, stop strings excluded)
    reasoning: str = ""
    content: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None

    def add(self, piece: StreamDelta) -> None:
        """Append a TextStream delta's text, reasoning and content."""
        self.text += piece.text
        self.reasoning += piece.reasoning
        self.content += piece.content


@dataclass
class Completion:
    request_id: str
    index: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # every generated token, a stop token included
    text: str
    reasoning_content: str
    content: str
    finish_reason: str
    usage: Usage
    logprobs: list[TokenLogprob] | None = None


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    in_reasoning: bool
    # step() reports each token as it comes; False: a sample's one delta when it finishes
    deltas: bool = True
    samples: list[Sample] = field(default_factory=list)
    cached: int = 0  # prompt tokens found in the prefix cache
    prefix_blocks: list[Block] = field(default_factory=list)
    done: list[Completion | None] = field(default_factory=list)
    backlog: deque[Delta] | None = None  # deltas kept for a stream() / astream() consumer


@dataclass(eq=False)
class Sample:
    """One of a request's n samples, from its prefill to its last token."""

    req: Request
    index: int
    stream: TextStream
    seed: int | None  # the sample's random stream (sampling.uniform); None when greedy
    row: int = -1  # its cache row, -1 when it holds none
    len: int = 0  # tokens whose latents are in the cache (positions 0..len-1)
    pending: int = -1  # sampled token not yet fed to the model, at position len
    h_last: Tensor | None = None  # after prefill: the hidden state at position len-1 (MTP's input)
    draft: int = -1
    out: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    reasoning_tokens: int = 0
    # inside the think block (text_at_end only; else the stream's parser knows)
    thinking: bool = False
    text_at_end: bool = False  # detokenized once when finished, not token by token (add_request)
    matcher: Any = None  # the grammar's state (llguidance), when the request has one
    answering: bool = False  # past </think> (or never in it): where the grammar holds
    finish_reason: str | None = None
    delta: Delta | None = None  # being filled during a step

    def append(self, t: int, lp: TokenLogprob | None, tok: Tokenizer) -> None:
        """Take sampled token t (and its logprob): text, delta, and whether the sample is done."""
        req, p = self.req, self.req.params
        self.out.append(t)
        self.pending = t
        if lp is not None and self.logprobs is not None:
            self.logprobs.append(lp)
        d = None
        if req.deltas:  # else the sample's one delta is made whole when it finishes
            if self.delta is None:
                self.delta = Delta(req.id, self.index, [], logprobs=[] if p.logprobs else None)
            d = self.delta
            d.token_ids.append(t)
            if lp is not None and d.logprobs is not None:
                d.logprobs.append(lp)
        if self.thinking if self.text_at_end else self.stream.parser.in_reasoning:
            self.reasoning_tokens += 1
        if self.matcher is not None and self.answering:
            self.matcher.consume_token(t)
        self.answering = self.answering or t == tok.think_end_id
        if (t in tok.stop_ids and not p.ignore_eos) or t in p.stop_token_ids:
            return self.finish("stop", tok)
        if self.text_at_end:  # the parser's state from the tag tokens alone; finish checks it
            if self.thinking:
                self.thinking = t != tok.think_end_id
            else:
                self.thinking = t == tok.think_start_id
        else:
            piece = self.stream.push(t)
            if d is not None:
                d.add(piece)
            if piece.stopped:
                return self.finish("stop", tok)
        if len(self.out) >= req.max_tokens:
            self.finish("length", tok)

    def finish(self, reason: str, tok: Tokenizer) -> None:
        """Close the text, make the last delta whole and file the request's Completion."""
        self.finish_reason = reason
        req = self.req
        if self.text_at_end:
            piece = self._text_at_end(reason, tok)
        else:
            piece = self.stream.finish()
        if req.deltas:
            d = self.delta
            d.add(piece)
        else:
            st = self.stream
            d = self.delta = Delta(req.id, self.index, list(self.out), st.text, st.reasoning,
                                   st.content, self.logprobs)
        d.finish_reason = reason
        d.usage = Usage(len(req.prompt), len(self.out), req.cached, self.reasoning_tokens)
        req.done[self.index] = Completion(req.id, self.index, req.prompt, list(self.out),
                                          self.stream.text, self.stream.reasoning,
                                          self.stream.content, reason, d.usage, self.logprobs)

    def _text_at_end(self, reason: str, tok: Tokenizer) -> StreamDelta:
        """Detokenize all the tokens at once; recount the reasoning tokens if append's count from
        the tag tokens alone was not exact."""
        pushed = self.out if reason == "length" else self.out[:-1]  # a stop token is not text
        piece = self.stream.push_all(pushed)
        tags = sum(t in (tok.think_start_id, tok.think_end_id) for t in pushed)
        text = self.stream.text
        if text.count(THINK_START) + text.count(THINK_END) != tags:
            # a tag spelled by ordinary tokens: count the think block's tokens as the stream would
            p = self.req.params
            replay = TextStream(tok, (), p.skip_special_tokens, self.req.in_reasoning)
            self.reasoning_tokens = 0
            for t in self.out:
                self.reasoning_tokens += replay.parser.in_reasoning
                replay.push(t)  # (after the last pushed id, only a stop token is left)
        return piece
