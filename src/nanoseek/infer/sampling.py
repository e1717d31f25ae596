"""Sampling parameters and the batched sampler: one call turns a (rows, vocab) block of logits
into one token per row, each row under its own parameters and its own random stream.

Why a stream per sample: a request with a seed must give the same tokens whether it runs alone or
beside 63 others. Each token is drawn by inverting the row's cumulative distribution at one uniform
number, and that number is a hash of the sample's seed and the token's position (counter-based, as
Philox is): it depends on nothing else in the batch, and the whole batch samples in one cumsum and
one searchsorted rather than a random-number kernel per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nanoseek.errors import UserError

SEED_STRIDE = 1_000_003  # a prime above any count of items or samples one run draws


def item_seed(seed: int, i: int) -> int:
    """The seed of item i (a prompt, an example, an epoch's shuffle) of a run seeded with `seed`:
    distinct for every (seed, i) with i < SEED_STRIDE, and its samples' seeds (sample_seed) stay
    distinct too."""
    return seed * SEED_STRIDE + i


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request seeded with `seed`. Sample 0 keeps the seed itself,
    so a request for one sample and the first of n samples agree."""
    return (seed + SEED_STRIDE * index) % 2**63


class SamplingError(UserError):
    """A sampling parameter out of its range; the message names the field and the range."""


@dataclass
class SamplingParams:
    """What to generate for one prompt, in the OpenAI/vLLM names."""

    max_tokens: int | None = None  # None: up to the engine's max_seq_len
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # drop tokens below min_p x the most likely token's probability
    # CTRL/HF form: logits of seen tokens (prompt + output) / r if > 0, x r if < 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI form, over output tokens: - presence x [count > 0]
    frequency_penalty: float = 0.0  # - frequency x count
    seed: int | None = None  # reproducible regardless of the rest of the batch
    n: int = 1  # samples of this prompt; they share one prefill
    stop: Sequence[str] = ()  # stop strings: generation ends before them, and they are not returned
    stop_token_ids: Sequence[int] = ()  # besides EOS (unless ignore_eos)
    ignore_eos: bool = False
    # token id -> a number in [-100, 100] added to its logit before anything else (OpenAI's form:
    # -100 bans a token, +100 all but forces it)
    logit_bias: dict[int, float] = field(default_factory=dict)
    # the answer (after </think>) held to this grammar (grammar.json_grammar's lark text)
    grammar: str | None = None
    logprobs: bool = False  # log-probability of each chosen token (of the model's distribution)
    top_logprobs: int = 0  # and the n most likely alternatives at each step
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise SamplingError(f"SamplingParams.{name} must be {allowed}, "
                                 f"got {getattr(self, name)!r}")

        # types first (JSON and CLI input arrive here), so that nothing fails later inside an
        # engine step
        for name in ("max_tokens", "seed", "top_k", "n", "top_logprobs"):
            v = getattr(self, name)
            optional = v is None and name in ("max_tokens", "seed")
            check(name, optional or isinstance(v, int) and not isinstance(v, bool), "an integer")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty"):
            v = getattr(self, name)
            check(name, isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
        for name in ("logprobs", "ignore_eos", "skip_special_tokens"):
            check(name, isinstance(getattr(self, name), bool), "true or false")
        if self.stop is None:
            self.stop = ()

        check("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "None or >= 1")
        check("temperature", 0 <= self.temperature <= 100, "in [0, 100]")
        check("top_p", 0 < self.top_p <= 1, "in (0, 1]")
        check("top_k", self.top_k >= 0, ">= 0")
        check("min_p", 0 <= self.min_p <= 1, "in [0, 1]")
        check("repetition_penalty", 0 < self.repetition_penalty <= 10, "in (0, 10]")
        check("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]")
        check("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]")
        check("n", self.n >= 1, ">= 1")
        check("top_logprobs",
              0 <= self.top_logprobs <= 20 and (self.logprobs or not self.top_logprobs),
              "in [0, 20], and 0 unless logprobs is on")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        check("stop", isinstance(self.stop, (list, tuple))
              and all(isinstance(s, str) and s for s in self.stop), "a list of non-empty strings")
        check("stop_token_ids", isinstance(self.stop_token_ids, (list, tuple))
              and all(isinstance(i, int) for i in self.stop_token_ids), "a list of token ids")
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(int(i) for i in self.stop_token_ids)
        check("grammar", self.grammar is None or isinstance(self.grammar, str), "None or a str")
        check("logit_bias", isinstance(self.logit_bias, dict) and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0
            and isinstance(b, (int, float)) and not isinstance(b, bool) and -100 <= b <= 100
            for t, b in self.logit_bias.items()), "a map of token ids to numbers in [-100, 100]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return (self.repetition_penalty != 1 or self.presence_penalty != 0
                or self.frequency_penalty != 0)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    # (token id, logprob), most likely first
    top: list[tuple[int, float]] = field(default_factory=list)


def apply_logit_bias(logits: Tensor, params: Sequence[SamplingParams]) -> Tensor:
    """logits (b, V) with each row's logit_bias added (a new tensor)."""
    rows, ids, bias = [], [], []
    for r, p in enumerate(params):
        rows += [r] * len(p.logit_bias)
        ids += list(p.logit_bias)
        bias += list(p.logit_bias.values())
    out = logits.clone()
    dev = logits.device
    out.index_put_((torch.tensor(rows, device=dev), torch.tensor(ids, device=dev)),
                   torch.tensor(bias, device=dev, dtype=out.dtype), accumulate=True)
    return out


def apply_penalties(logits: Tensor, params: Sequence[SamplingParams], counts: Tensor,
                    seen: Tensor) -> Tensor:
    """logits (b, V) fp32; counts (b, V) how often each token was generated; seen (b, V) bool, in
    the prompt or the output. Returns penalised logits (a new tensor)."""
    dev = logits.device
    rep = torch.tensor([p.repetition_penalty for p in params], device=dev)[:, None]
    pres = torch.tensor([p.presence_penalty for p in params], device=dev)[:, None]
    freq = torch.tensor([p.frequency_penalty for p in params], device=dev)[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    return logits - pres * (counts > 0) - freq * counts


@dataclass
class RowParams:
    """SamplingParams of a block of rows as tensors (b,) on the logits' device: what filter_probs
    and a CUDA graph's sampler read (a graph's are its static buffers, refilled before each run)."""

    temperature: Tensor  # 0: greedy (that row's sampled token is then replaced by its argmax)
    top_k: Tensor  # int64, >= 1 (the vocabulary's size: off)
    min_p: Tensor
    top_p: Tensor

    @staticmethod
    def of(params: Sequence[SamplingParams], vocab: int, device) -> RowParams:
        def t(xs, dtype=torch.float32):
            return torch.tensor(xs, dtype=dtype, device=device)

        return RowParams(t([p.temperature for p in params]),
                         t([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params],
                           torch.long),
                         t([p.min_p for p in params]), t([p.top_p for p in params]))

    @staticmethod
    def neutral(b: int, vocab: int, device) -> RowParams:
        """b rows at temperature 1 with no filter."""
        def full(v, dtype=torch.float32):
            return torch.full((b,), v, dtype=dtype, device=device)

        return RowParams(full(1.0), full(vocab, torch.long), full(0.0), full(1.0))

    def copy_(self, other: RowParams, k: int) -> None:
        """Rows 0..k-1 from other's (k,) (a graph's buffers, refilled before a run)."""
        for name in ("temperature", "top_k", "min_p", "top_p"):
            getattr(self, name)[:k].copy_(getattr(other, name), non_blocking=True)


def filter_probs(logits: Tensor, params: Sequence[SamplingParams] | RowParams) -> Tensor:
    """Softmax at each row's temperature, then top-k, min-p and top-p; rows (b, V) of probabilities
    with the dropped tokens at 0 (not renormalised: sample() scales its draw by the row's total).
    Given SamplingParams, a filter no row uses is skipped; given RowParams, all of them run, as in
    a CUDA graph: a filter at its neutral value (top_k = V, min_p 0, top_p 1, temperature 1)
    changes no number, so both give the same probabilities."""
    if not isinstance(params, RowParams):
        use = (all(p.temperature == 1 for p in params), any(p.top_k > 0 for p in params),
               any(p.min_p > 0 for p in params), any(p.top_p < 1 for p in params))
        params = RowParams.of(params, logits.shape[-1], logits.device)
    else:
        use = (False, True, True, True)
    plain_t, use_k, use_min_p, use_top_p = use
    if plain_t:
        probs = logits.softmax(dim=-1)  # (x / 1 is x: the same numbers, one op fewer)
    else:  # (a greedy row's 0 is kept off the division: its draw is replaced by the argmax)
        probs = (logits / params.temperature.clamp(min=1e-5)[:, None]).softmax(dim=-1)
    if use_k:
        kth = probs.sort(dim=-1, descending=True)[0].gather(1, (params.top_k - 1)[:, None])
        probs = probs.masked_fill(probs < kth, 0)
    if use_min_p:
        probs = probs.masked_fill(probs < params.min_p[:, None] * probs.amax(dim=-1, keepdim=True),
                                  0)
    if use_top_p:
        top_p = params.top_p[:, None]
        sorted_p, order = probs.sort(dim=-1, descending=True)
        total = sorted_p.sum(dim=-1, keepdim=True)
        # drop a token when the tokens above it already reach top_p of the (kept) mass; the top one
        # stays. (top_p < 1): against rounding, top_p 1 keeps every token
        drop = ((sorted_p.cumsum(dim=-1) - sorted_p) >= top_p * total) & (top_p < 1)
        probs = probs.scatter(1, order, sorted_p.masked_fill(drop, 0))
    return probs


_M64 = (1 << 64) - 1


def uniform(seed: int, position: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, position): SplitMix64's finaliser
    over the two, in exact Python integers (the same on every device and in every batch)."""
    z = (seed * 0x9E3779B97F4A7C15 + (position + 1) * 0xD1B54A32D192ED03) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return ((z ^ (z >> 31)) >> 11) / 2.0**53


def sample(logits: Tensor, params: Sequence[SamplingParams],
           draws: Sequence[float | None]) -> Tensor:
    """One token per row of logits (b, V) (already penalised): argmax for greedy rows, else the
    token at which the row's cumulative distribution passes draws[row] (a uniform number; see
    uniform()), which is token i with probability p_i. Returns (b,) int64."""
    logits = logits.float()
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if not rows:
        return logits.argmax(dim=-1)
    every = len(rows) == len(params)  # (a rollout batch: no argmax, no row gather and scatter)
    if every:
        probs = filter_probs(logits, params)
    else:
        probs = filter_probs(logits[rows], [params[i] for i in rows])
    u = torch.tensor([draws[i] for i in rows], device=logits.device, dtype=probs.dtype)
    drawn = _invert(probs, u)
    if every:
        return drawn
    tokens = logits.argmax(dim=-1)
    tokens[rows] = drawn
    return tokens


def sample_rows(logits: Tensor, params: RowParams, draws: Tensor) -> Tensor:
    """sample() with every row's parameters as tensors and no branch on their values: the sampler
    a CUDA graph records after the decode step's logits (b, V). draws (b,): a greedy row's is
    ignored. The same tokens as sample() for the same parameters and draws."""
    logits = logits.float()
    drawn = _invert(filter_probs(logits, params), draws)
    return torch.where(params.temperature == 0, logits.argmax(dim=-1), drawn)


def _invert(probs: Tensor, u: Tensor) -> Tensor:
    """The token at which each row's cumulative distribution passes u (b,) x its total."""
    cdf = probs.cumsum(dim=-1)
    u = u[:, None] * cdf[:, -1:]
    # right=True: the first token whose cdf exceeds u, so a token of probability 0 is never picked;
    # the clamp catches u rounding onto the total
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)


def logprobs_of(logits: Tensor, tokens: Tensor, top_n: Sequence[int]) -> list[TokenLogprob]:
    """Log-probabilities of the chosen tokens under the model's raw distribution (before
    temperature, penalties and filters, as vLLM and the OpenAI API report them), with each row's
    top_n alternatives."""
    logp = logits.float().log_softmax(dim=-1)
    chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
    k = max(top_n, default=0)
    top_v, top_i = logp.topk(k, dim=-1) if k else (None, None)
    out = []
    for r, (tok, lp) in enumerate(zip(tokens.tolist(), chosen)):
        top = list(zip(top_i[r, : top_n[r]].tolist(), top_v[r, : top_n[r]].tolist())) if k else []
        out.append(TokenLogprob(tok, lp, top))
    return out
