"""Constrained decoding: a sample's answer held to a grammar (JSON of a schema), token by token.

The grammar engine is llguidance (maintained, used by the big serving stacks): before each draw it
fills a bitmask of the tokens the grammar allows next, in tens of microseconds on a CPU and with no
per-schema index to build, and it consumes the token drawn. Chosen by measurement against
outlines-core, whose per-schema index and per-token allowed list cost more at a real vocabulary,
and xgrammar, which needs transformers and triton at run time.

Only the answer is held: R1 reasons freely, and the grammar starts after its </think> token (from
the first token when the prompt leaves no reasoning open); only, a sample about to stop inside its
reasoning closes it instead (close_reasoning), or it would have no answer to hold. Each sample
has its own matcher; the engine masks the rows that have one (Engine._sample_append), so batching,
speculation (the draft is drawn under the mask of the state it follows) and the prefix cache
(prompts only) are as before.
"""

from __future__ import annotations

import json
import threading

import llguidance
import llguidance.torch
import torch
from torch import Tensor

from nanoseek.errors import UserError
from nanoseek.tokenizer import Tokenizer, TokenizerError


class GrammarError(UserError):
    """A grammar or JSON schema the engine cannot compile; the message says where."""


def json_grammar(schema: dict | None = None) -> str:
    """A grammar for one JSON value of `schema` (None: any JSON object), after optional whitespace
    (R1 writes a blank line after </think>; the reasoning parser drops it from the content)."""
    schema = dict(schema if schema is not None else {"type": "object"})
    # JSON as json.dumps writes it (", " and ": "), no free whitespace inside: a small model that
    # likes newlines would otherwise fill its budget with them
    schema["x-guidance"] = {"whitespace_flexible": False} | schema.get("x-guidance", {})
    body = json.dumps(schema)
    # at most three whitespace characters: a model that likes blank lines cannot spend its tokens
    # on them
    return "start: WS? body\nWS: /[ \\t\\r\\n]{1,3}/\nbody: %json " + body


class Grammars:
    """The grammar engine's view of one tokenizer (made on first use: a second or so at a 100K
    vocabulary) and the matchers of the grammars it compiles."""

    def __init__(self, tok: Tokenizer, vocab_size: int):
        self.tok, self.vocab_size = tok, vocab_size
        self._ll: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll is None:
                # the token a complete answer ends with (without one, llguidance would guess one)
                try:
                    eos = self.tok.require_eos("structured output (a grammar)")
                except TokenizerError as e:
                    raise GrammarError(str(e)) from None
                self._ll = llguidance.LLTokenizer(self.tok.tok.to_str(), n_vocab=self.vocab_size,
                                                  eos_token=eos)
            return self._ll

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher of `grammar` (lark text, as json_grammar writes), or GrammarError."""
        m = llguidance.LLMatcher(self._tokenizer(), llguidance.LLMatcher.grammar_from_lark(grammar))
        if m.is_error():
            raise GrammarError(f"the grammar does not compile: {m.get_error().splitlines()[0]}")
        return m


def mask_logits(logits: Tensor, rows: list[int], matchers: list[llguidance.LLMatcher]) -> Tensor:
    """logits (b, V) with every token that matchers[j] does not allow next set to -inf in row
    rows[j] (a new tensor). A matcher whose grammar is complete allows EOS alone."""
    V = logits.shape[1]
    mask = torch.full(llguidance.torch.get_bitmask_shape(len(rows), V), -1, dtype=torch.int32)
    for j, m in enumerate(matchers):
        llguidance.torch.fill_next_token_bitmask(m, mask, j)
    bits = (mask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # (rows, V/32, 32)
    allowed = bits.view(len(rows), -1)[:, :V].bool().to(logits.device)
    out = logits.clone()
    index = torch.tensor(rows, device=logits.device)
    out[index] = out[index].masked_fill(~allowed, float("-inf"))
    return out


def close_reasoning(logits: Tensor, rows: list[int], stop_ids: list[int],
                    think_end_id: int) -> Tensor:
    """logits (b, V) with, in rows still reasoning before a held answer, the weight of the stop
    tokens (EOS, and a foreign model's others) moved to </think> (a new tensor): a sample that ends
    there has no answer for the grammar to hold, so a model about to stop ends its reasoning
    instead, and then answers."""
    out = logits.clone()
    index = torch.tensor(rows, device=logits.device)[:, None]
    stops = torch.tensor(stop_ids, device=logits.device)
    out[index, think_end_id] = torch.logsumexp(
        torch.cat([out[index, think_end_id], out[index, stops]], dim=1), dim=1, keepdim=True)
    out[index, stops] = float("-inf")
    return out
