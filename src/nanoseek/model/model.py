"""DeepSeek-V3 in one file: Multi-head Latent Attention, DeepSeekMoE, Multi-Token Prediction; and
the dense students R1 was distilled into (Llama, Qwen2), which swap MLA for grouped-query attention
and keep the rest (norms, SwiGLU MLP, RoPE, the cache, the fused head).

Names follow the paper and the Hugging Face checkpoint (c_kv, k_pe, e_score_correction_bias,
kv_a_proj_with_mqa, ...), so a reader can hold this file, the V3 report and a checkpoint side by
side. Numerics follow transformers' DeepseekV3ForCausalLM, which the tests check to ~1e-7 in fp32.

Conventions: `labels` are next-token targets aligned with `input_ids` (labels[:, i] is the token
after input_ids[:, i]; -100 is ignored), as in nanoGPT: a packed row r gives input r[:-1], labels
r[1:].
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nanoseek.model.config import ModelConfig

IGNORE_INDEX = -100


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32, cast back, then scale: the order transformers uses, so bf16 matches too
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Rotary embedding (MLA's is decoupled: only the qk_rope_head_dim part of q and k is rotated)


def rope_frequencies(cfg: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies of the rope dims, YaRN-corrected when rope_scaling is yarn (Llama 3's
    correction when llama3), and the cos/sin magnitude factor YaRN asks for (mscale /
    mscale_all_dim, 1.0 for V2 and V3)."""
    dim, base = cfg.rope_dim, cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    rs = cfg.rope_scaling
    kind = None if rs is None else rs.get("type", rs.get("rope_type"))
    if kind == "llama3":
        return llama3_frequencies(inv_freq, rs), 1.0
    if kind != "yarn":
        return inv_freq, 1.0
    factor = float(rs["factor"])
    original = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(n_rot: float) -> float:
        """The dim whose wavelength fits n_rot times in `original`."""
        return dim * math.log(original / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    # ramp = 0 for fast-rotating dims (kept: extrapolation), 1 for slow ones (divided by factor)
    ramp = ((torch.arange(dim // 2, dtype=torch.float) - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)

    def yarn_mscale(m: float) -> float:
        return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0

    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if rs.get("attention_factor") is not None:
        attn_factor = float(rs["attention_factor"])
    elif mscale and mscale_all_dim:
        attn_factor = yarn_mscale(mscale) / yarn_mscale(mscale_all_dim)
    else:
        attn_factor = yarn_mscale(1.0)
    return inv_freq, attn_factor


def llama3_frequencies(inv_freq: Tensor, rs: dict) -> Tensor:
    """Llama 3.1's long-context correction: wavelengths longer than original / low_freq_factor are
    stretched by factor, those shorter than original / high_freq_factor kept, and the band between
    blended smoothly."""
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(
        rs["high_freq_factor"])
    original = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((original / wavelen - low) / (high - low)).clamp(0, 1)  # 0: stretch, 1: keep
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, interleave: bool) -> Tensor:
    """Rotate pairs of x's last dim. DeepSeek pairs neighbours (x0, x1), (x2, x3), ... The output
    lists the rotated first elements then the second ones: a fixed permutation of the interleaved
    layout, applied to q and k alike, so q·k is unchanged and no interleaving copy is made."""
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ---------------------------------------------------------------------------------------------
# Latent KV cache: per layer only the normed c_kv (kv_lora_rank) and the rotated k_pe (rope dim)


class KVCache:
    """Preallocated absorbed-MLA cache: per layer, row and position the normed latent c_kv and the
    rotated k_pe side by side (kv_lora_rank + qk_rope_head_dim numbers: 576 for V3, against
    2*128*128 for MHA of the same width). Side by side because the absorbed attention reads them as
    one key. Layer ids num_hidden_layers.. are the MTP modules'. rows(a, b) is a view of rows a:b
    sharing the storage, so an engine can run a forward on some of its slots. A GQA model (llama,
    qwen2) keeps its rotated keys and values of every KV head side by side in the same slots
    (cfg.kv_cache_dim wide), so the engine is the same for both."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, n_layers: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        if n_layers is None:
            n_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
        self.max_len, self.rank = max_len, cfg.kv_lora_rank
        self.kv = torch.zeros(n_layers, batch_size, max_len, cfg.kv_cache_dim, dtype=dtype,
                              device=device)

    @property
    def c_kv(self) -> Tensor:
        return self.kv[..., : self.rank]

    @property
    def k_pe(self) -> Tensor:
        return self.kv[..., self.rank:]

    def rows(self, start: int, stop: int) -> KVCache:
        view = object.__new__(KVCache)
        view.max_len, view.rank, view.kv = self.max_len, self.rank, self.kv[:, start:stop]
        return view

    def update(self, layer_id: int, positions: Tensor, kv: Tensor, kv_len: int) -> Tensor:
        """Write the new entries kv (b, s, rank + rope) at their positions (b, s); return the first
        kv_len entries of each row (b, kv_len, rank + rope)."""
        b = positions.shape[0]
        rows = torch.arange(b, device=positions.device)[:, None]
        # an indexed write, not scatter_ (5-25x as long on a CPU, bf16 most), and into the whole
        # cache, not a view of one layer: compiled, a write into a view copies every layer's cache
        # each time (120 ms a step for SmolLM2 at 32 rows, against 3)
        self.kv.index_put_((torch.full_like(rows, layer_id), rows, positions), kv.to(self.kv.dtype))
        return self.kv[layer_id, :b, :kv_len]


# ---------------------------------------------------------------------------------------------
# Document masking: attention inside each document of a packed training row


class Documents:
    """Block-causal attention for packed rows: a token attends to the tokens before it in its own
    document only, as if each document were a row of its own (as Llama 3 trained).

    Why: a packed row of seq_len tokens holds several short documents, and causal attention over
    the whole row costs seq_len² / 2 score pairs a row, most of them between unrelated documents.
    Here the documents are cut out and grouped by length (rounded up to GRAIN), and each group runs
    as one causal batch: the cost is the documents' own lengths squared (0.43 of the row's on
    the skills corpus, where a document averages 113 tokens). RoPE is relative, so a document's
    scores do not depend on where in the row it lies: its tokens keep their row positions. A
    document starts at a row's start and after an end-of-document token; a run of them (a packed
    row's padding) stays with the document before it.

    The plan (which rows of the flattened (b * s) tokens go where) is made once a forward and read
    by every layer."""

    GRAIN = 16

    @staticmethod
    def starts(input_ids: Tensor, eos_id: int) -> Tensor:
        """(b, s) bool: where a document starts in packed rows whose documents end at eos_id."""
        starts = torch.zeros_like(input_ids, dtype=torch.bool)
        starts[:, 0] = True
        starts[:, 1:] = (input_ids[:, :-1] == eos_id) & (input_ids[:, 1:] != eos_id)
        return starts

    def __init__(self, starts: Tensor):
        b, s = starts.shape
        self.starts, self.shape, dev = starts, (b, s), starts.device
        first = starts.flatten().nonzero().squeeze(1)
        ends = torch.cat([first[1:], first.new_full((1,), b * s)])
        groups: dict[int, list[tuple[int, int]]] = {}
        for a, n in zip(first.tolist(), (ends - first).tolist()):
            groups.setdefault(-(-n // self.GRAIN) * self.GRAIN, []).append((a, n))
        # per group: the (documents, width) token indices, a document's padding repeating its last
        # token (causal: padding after a token never reaches it), and which of them are real
        self.groups, real = [], []
        for width, docs in sorted(groups.items()):
            col = torch.arange(width, device=dev)
            start, n = (torch.tensor(v, device=dev)[:, None] for v in zip(*docs))
            idx, ok = start + torch.minimum(col, n - 1), col < n
            self.groups.append((idx, ok))
            real.append(idx[ok])
        self.gather = torch.cat([idx.flatten() for idx, _ in self.groups])
        self.order = torch.cat(real).argsort()  # the groups' outputs, concatenated -> row order

    def shifted(self, k: int) -> Documents:
        """The plan for the first s - k tokens: MTP depth k reads h_i for i < s - k."""
        return Documents(self.starts[:, : self.shape[1] - k])

    @torch.compiler.disable  # the plan's shapes change every batch: runs eagerly inside a graph
    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """q, k (b, s, h, d) and v (b, s, h, d_v) -> (b, s, h, d_v)."""
        h, dq, dv = q.shape[2], q.shape[3], v.shape[3]
        sizes = [idx.numel() for idx, _ in self.groups]
        if q.device.type in WRITTEN_OUT:
            # documents of the skills corpus average 113 tokens: at that length the product, mask
            # and softmax written out cost less than SDPA's CPU flash kernel and the gathers its
            # one (q, k, v) tensor needs (a pretraining step of the shipped model's teacher 0.92x
            # the time)
            parts = zip(*(t.flatten(0, 1).index_select(0, self.gather).split(sizes)
                          for t in (q, k, v)))
        else:
            # SDPA's flash kernel wants v as wide as q and k (MLA.naive says why): one gather
            v = F.pad(v, (0, max(0, dq - dv)))
            qkv = torch.cat([q, k, v], dim=-1).flatten(0, 1).index_select(0, self.gather)
            parts = (x.split([dq, dq, qkv.shape[-1] - 2 * dq], dim=-1) for x in qkv.split(sizes))
        out = []
        for (idx, real), (xq, xk, xv) in zip(self.groups, parts):
            xq, xk, xv = (x.view(*idx.shape, h, -1).transpose(1, 2) for x in (xq, xk, xv))
            out.append(causal_attention(xq, xk, xv, scale).transpose(1, 2)[real][..., :dv])
        return torch.cat(out).index_select(0, self.order).view(*self.shape, h, dv)


# devices whose block-causal attention is written out rather than SDPA's (Documents.attend)
WRITTEN_OUT = ("cpu",)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of (n, h, s, d) batches: SDPA, except on a CPU for rows of up to 512
    tokens, where the product, mask and softmax are written out."""
    s = q.shape[-2]
    if q.device.type not in WRITTEN_OUT or s > 512:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu_(1)
    return torch.matmul(scores.masked_fill_(future, float("-inf")).softmax(-1), v)


# ---------------------------------------------------------------------------------------------
# Multi-head Latent Attention


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.cfg, self.layer_id = cfg, layer_id
        d, h = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads = h
        self.nope, self.rope, self.v_dim, self.rank = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                                                       cfg.v_head_dim, cfg.kv_lora_rank)
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * cfg.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * cfg.qk_head_dim, bias=False)
        # one projection gives the latent c_kv and the single rope key k_pe shared by all heads
        self.kv_a_proj_with_mqa = nn.Linear(d, self.rank + self.rope, bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(self.rank)
        self.kv_b_proj = nn.Linear(self.rank, h * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, d, bias=cfg.attention_bias)
        self.softmax_scale = cfg.softmax_scale

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None, positions: Tensor | None = None, kv_len: int = 0,
                absorb: bool = False, documents: Documents | None = None) -> Tensor:
        """x (b, s, d); cos/sin (b, s, rope/2); mask (b, s, kv) bool or None for plain causal;
        documents: attention inside each document of a packed row instead (training)."""
        b, s, _ = x.shape
        if self.cfg.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, s, self.n_heads, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_pe = apply_rope(q_pe, cos[:, :, None], sin[:, :, None], self.cfg.rope_interleave)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        k_pe = apply_rope(k_pe, cos, sin, self.cfg.rope_interleave)
        if cache is not None:
            kv = cache.update(self.layer_id, positions, torch.cat([c_kv, k_pe], dim=-1), kv_len)
            c_kv, k_pe = kv.split([self.rank, self.rope], dim=-1)
        elif absorb:
            kv = torch.cat([c_kv, k_pe], dim=-1)
        if absorb:
            o = self._absorbed(q_nope, q_pe, kv, mask)
        else:
            o = self._naive(q_nope, q_pe, c_kv, k_pe, mask, documents)
        return self.o_proj(o.flatten(2))

    def _naive(self, q_nope: Tensor, q_pe: Tensor, c_kv: Tensor, k_pe: Tensor,
               mask: Tensor | None, documents: Documents | None = None) -> Tensor:
        """Materialise per-head keys and values from the latent (training and prefill)."""
        b, t, _ = c_kv.shape
        kv = self.kv_b_proj(c_kv).view(b, t, self.n_heads, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k_pe_heads = k_pe[:, :, None].expand(-1, -1, self.n_heads, -1)  # one rope key, every head
        k = torch.cat([k_nope, k_pe_heads], dim=-1)
        if documents is not None:
            return documents.attend(q, k, v, self.softmax_scale)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        # SDPA's flash kernels need v as wide as q and k, else it falls back to its slower math
        # path: pad v with zeros and drop those output columns (as transformers' flash-attention
        # path does)
        v = F.pad(v, (0, max(0, q.shape[-1] - self.v_dim))).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v,
                                           attn_mask=None if mask is None else mask[:, None],
                                           is_causal=mask is None, scale=self.softmax_scale)
        return o.transpose(1, 2)[..., : self.v_dim]  # (b, s, h, v_dim)

    def _absorbed(self, q_nope: Tensor, q_pe: Tensor, kv: Tensor, mask: Tensor | None) -> Tensor:
        """Fold kv_b_proj's key half into the query and its value half after attention, so that
        attention runs on the cached latent directly. It is then multi-query attention with one key
        [c_kv; k_pe] (rank + rope wide) shared by all heads, whose value is the same tensor (the
        first rank outputs are kept). A shared key lets the heads be stacked as extra queries: one
        (s * h) x t attention per row."""
        b, s, h, _ = q_nope.shape
        t = kv.shape[1]
        w = self.kv_b_proj.weight.view(h, self.nope + self.v_dim, self.rank)
        # einsum runs these as one (h)-batched matmul over all b * s tokens; matmul would copy w per
        # row
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w[:, : self.nope])
        q = torch.cat([q_lat, q_pe], dim=-1).view(b, s * h, -1)
        # bmm, not SDPA: it reads the cache rows in place, where SDPA copies a strided cache view
        scores = torch.bmm(q, kv.transpose(1, 2)).view(b, s, h, t)
        if mask is None:
            mask = torch.ones(s, t, dtype=torch.bool, device=kv.device).tril(t - s)[None]
        p = scores.mul_(self.softmax_scale).masked_fill_(~mask[:, :, None], float("-inf"))
        p = p.softmax(dim=-1, dtype=torch.float32).to(kv.dtype).view(b, s * h, t)
        o_lat = torch.bmm(p, kv[..., : self.rank]).view(b, s, h, -1)
        return torch.einsum("bshc,hdc->bshd", o_lat, w[:, self.nope:])  # (b, s, h, v_dim)


class GQA(nn.Module):
    """Grouped-query attention with RoPE over whole heads (Llama, Qwen2): num_key_value_heads keys
    and values, each shared by num_attention_heads / num_key_value_heads query heads. Qwen2 puts
    biases on q, k and v; Llama's attention_bias puts them on all four projections."""


    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.cfg, self.layer_id = cfg, layer_id
        d, self.n_heads, self.n_kv, self.hd = (cfg.hidden_size, cfg.num_attention_heads,
                                               cfg.num_key_value_heads, cfg.head_dim)
        qkv_bias = cfg.model_type == "qwen2" or cfg.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.hd, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, d,
                                bias=cfg.attention_bias and cfg.model_type != "qwen2")
        # q, k and v as one projection, where an int8 model joined them (model/quant.py): one
        # matmul and one quantization of x instead of three
        self.qkv_proj: nn.Module | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None, positions: Tensor | None = None, kv_len: int = 0,
                absorb: bool = False, documents: Documents | None = None) -> Tensor:
        """As MLA.forward (absorb has no meaning here); the cache holds [k; v] per token."""
        b, s, _ = x.shape
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv_proj(x).split(
                (self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd), dim=-1)
        q = apply_rope(q.view(b, s, self.n_heads, self.hd), cos[:, :, None], sin[:, :, None],
                       False)
        k = apply_rope(k.view(b, s, self.n_kv, self.hd), cos[:, :, None], sin[:, :, None], False)
        v = v.view(b, s, self.n_kv, self.hd)
        if cache is not None:
            kv = cache.update(self.layer_id, positions, torch.cat([k, v], dim=2).flatten(2), kv_len)
            k, v = kv.view(b, kv_len, 2 * self.n_kv, self.hd).split(self.n_kv, dim=2)
        group = self.n_heads // self.n_kv
        if mask is not None:
            # Under a mask (the engine's cached steps) a group's query heads become extra query
            # rows of their KV head: the cached keys and values are read where they lie, where
            # repeating them per query head copies the whole cache every step (most of a decode
            # step's time at batch 32 on a CPU).
            q = q.view(b, s, self.n_kv, group, self.hd).permute(0, 2, 3, 1, 4).reshape(
                b, self.n_kv, group * s, self.hd)
            m = mask[:, None, None].expand(b, 1, group, s, kv_len).reshape(b, 1, group * s, kv_len)
            if s <= 2:
                # a decode (or verify) step: two small matmuls and a softmax, about a third
                # less than the CPU flash kernel takes over keys and values strided in the cache
                a = torch.matmul(q, k.permute(0, 2, 3, 1)).float().mul_(self.cfg.softmax_scale)
                o = torch.matmul(a.masked_fill_(~m, float("-inf")).softmax(-1).to(v.dtype),
                                 v.transpose(1, 2))
            else:
                o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2),
                                                   attn_mask=m, scale=self.cfg.softmax_scale)
            o = o.view(b, self.n_kv, group, s, self.hd).permute(0, 3, 1, 2, 4)
            return self.o_proj(o.reshape(b, s, self.n_heads * self.hd))
        # repeat the KV heads for their query groups (SDPA's enable_gqa does this in place, but
        # not with every kernel and torch version)
        if documents is not None:
            k, v = (t.repeat_interleave(group, dim=2) for t in (k, v))
            o = documents.attend(q, k, v, self.cfg.softmax_scale)
            return self.o_proj(o.flatten(2))
        k, v = (t.transpose(1, 2).repeat_interleave(group, dim=1) for t in (k, v))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v,
                                           attn_mask=None if mask is None else mask[:, None],
                                           is_causal=mask is None, scale=self.cfg.softmax_scale)
        return self.o_proj(o.transpose(1, 2).flatten(2))


# ---------------------------------------------------------------------------------------------
# Feed-forward: dense SwiGLU MLP, and DeepSeekMoE (router + routed experts + shared experts)


class MLP(nn.Module):
    def __init__(self, dim: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter, bias=False)
        self.up_proj = nn.Linear(dim, inter, bias=False)
        self.down_proj = nn.Linear(inter, dim, bias=False)
        self.gate_up_proj: nn.Module | None = None  # gate and up as one (as GQA.qkv_proj)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Gate(nn.Module):
    """Sigmoid router with group-limited top-k and the aux-loss-free correction bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        # b in the V3 report: steers selection only, never the gate weights; updated by
        # update_correction_bias() after each optimizer step, not by gradients
        self.register_buffer("e_score_correction_bias",
                             torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, d) -> gate weights (T, K), expert ids (T, K), scores s (T, E), all routing in
        fp32."""
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid() if cfg.scoring_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + self.e_score_correction_bias if cfg.topk_method == "noaux_tc" else scores
        if cfg.n_group > 1:
            T, E, G = x.shape[0], cfg.n_routed_experts, cfg.n_group
            grouped = choice.view(T, G, E // G)
            # V3 scores a group by the sum of its top-2 biased scores; V2 by its best expert
            group_scores = (grouped.topk(2, dim=-1)[0].sum(-1) if cfg.topk_method == "noaux_tc"
                            else grouped.amax(dim=-1))
            keep = group_scores.topk(cfg.topk_group, dim=-1, sorted=False)[1]
            dropped = torch.ones(T, G, dtype=torch.bool, device=x.device).scatter_(1, keep, False)
            # -inf, not 0: a biased score can be negative, and 0 would let a dropped group win
            choice = grouped.masked_fill(dropped[..., None], float("-inf")).view(T, E)
        idx = choice.topk(cfg.num_experts_per_tok, dim=-1, sorted=False)[1]
        weights = scores.gather(1, idx)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * cfg.routed_scaling_factor, idx, scores


class Experts(nn.Module):
    """The routed experts as stacked weights, gate and up fused: one matmul per expert over the
    tokens routed to it (tokens sorted by expert), never a loop over tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, d, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        # [gate_proj; up_proj] of each expert
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, I))

    def forward(self, x: Tensor, weights: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
        T, K = idx.shape
        order = idx.flatten().argsort(stable=True)  # (T*K,) assignments grouped by expert
        token = order // K
        # not x[token]: its backward (index_put_) is much slower on CPU (bench/bench_train.py)
        xs = x.index_select(0, token)
        offs = counts.cumsum(0).to(torch.int32)
        gate, up = grouped_mm(xs, self.gate_up_proj.transpose(1, 2), offs).chunk(2, dim=-1)
        ys = grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs)
        ys = ys * weights.flatten()[order, None].to(ys.dtype)
        # in the GEMMs' dtype (bf16 under autocast, as a Linear's output would be), not x's
        return x.new_zeros(x.shape, dtype=ys.dtype).index_add_(0, token, ys)

    def gathered(self, x: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        """The same result for a few tokens with static shapes, for a compiled decode step: each
        (token, expert) pair gathers its expert's weights and runs as one batched matrix-vector
        product. It copies T*K experts' weights, so it pays only when that is fewer than all of
        them."""
        T, K = idx.shape
        xs = x.repeat_interleave(K, dim=0)[:, :, None]  # (T*K, d, 1)
        gate, up = torch.bmm(self.gate_up_proj[idx.flatten()], xs).squeeze(-1).chunk(2, dim=-1)
        ys = torch.bmm(self.down_proj[idx.flatten()], (F.silu(gate) * up)[:, :, None]).squeeze(-1)
        return (ys * weights.flatten()[:, None].to(ys.dtype)).view(T, K, -1).sum(dim=1)


def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """Rows of x sorted by group; group g (rows offs[g-1]:offs[g]) times w[g] (in, out).

    The dtype rule: the GEMM runs in autocast's dtype when autocast is on for x's device (as
    nn.Linear would: autocast does not know grouped_mm, so without this an fp32 master weight meets
    bf16 activations), else in x's dtype; w is cast to match. So one rule covers fp32, pure bf16
    and autocast, on every device. Then the kernel: torch's grouped GEMM where it exists (bf16 on
    any device, fp32 on CPU), else (fp32 on CUDA) one matmul per expert."""
    device, dtype = x.device.type, matmul_dtype(x)
    x, w = x.to(dtype), w.to(dtype)
    if hasattr(F, "grouped_mm") and dtype == torch.bfloat16:
        return F.grouped_mm(x, w, offs=offs)
    if hasattr(F, "grouped_mm") and device == "cpu":
        return _eager_grouped_mm(x, w, offs)
    return loop_grouped_mm(x, w, offs)


def matmul_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on x runs in: autocast's when autocast is on for x's device (what
    nn.Linear does), else x's. For the ops autocast does not know: grouped GEMMs, the fused
    head."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def loop_grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """grouped_mm as a loop over experts, never tokens (one host sync): the kernel where torch has
    no grouped GEMM for the dtype (fp32 on CUDA). Split, not slices: its backward is one cat, where
    each slice's backward would write a zero-filled copy of all of x."""
    sizes = torch.diff(offs, prepend=offs.new_zeros(1)).tolist()
    return torch.cat([xg @ wg for xg, wg in zip(x.split(sizes), w)])


@torch.compiler.disable  # torch.compile's shape check wants bf16; the CPU kernel itself takes fp32
def _eager_grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    return F.grouped_mm(x, w, offs=offs)


_static = False


@contextmanager
def static_shapes() -> Iterator[None]:
    """Inside: the model runs as a CUDA graph records it (infer.runner): no op whose output shape
    depends on the data and no host sync. torch.compile's tracing counts as inside too."""
    global _static
    before, _static = _static, True
    try:
        yield
    finally:
        _static = before


def _static_shapes() -> bool:
    return _static or torch.compiler.is_compiling()


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = Experts(cfg)
        shared = cfg.moe_intermediate_size * cfg.n_shared_experts
        self.shared_experts = MLP(cfg.hidden_size, shared) if cfg.n_shared_experts > 0 else None
        # tokens routed to each expert since the last bias update (summed over micro-batches)
        self.register_buffer("expert_load", torch.zeros(cfg.n_routed_experts), persistent=False)
        self.last_load: Tensor | None = None  # load of the latest forward, for logging
        self.balance_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        flat = x.reshape(-1, d)
        weights, idx, scores = self.gate(flat)
        E = self.cfg.n_routed_experts
        static = _static_shapes()
        if static:
            # bincount's output shape depends on the data (a host sync on a GPU), which a graph
            # cannot hold: count by index_add into E slots instead
            counts = torch.zeros(E, dtype=torch.long, device=x.device).index_add_(
                0, idx.flatten(), torch.ones_like(idx.flatten()))
        else:
            counts = torch.bincount(idx.flatten(), minlength=E)
        if static and idx.numel() <= E and not self.training:
            y = self.experts.gathered(flat, weights, idx)  # a decode step of a few rows
        else:
            y = self.experts(flat, weights, idx, counts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        self.last_load = counts.detach()
        self.balance_loss = None
        if self.training:
            self.expert_load += counts.to(self.expert_load.dtype)
            if self.cfg.aux_loss_alpha > 0:
                self.balance_loss = self.sequence_balance_loss(scores.view(b, s, -1),
                                                               idx.view(b, s, -1))
        return y.view(b, s, d)

    def sequence_balance_loss(self, scores: Tensor, idx: Tensor) -> Tensor:
        """alpha * sum_i f_i P_i per sequence, averaged over sequences (V3 eq. 17-20)."""
        b, s, E = scores.shape
        K = idx.shape[-1]
        chosen = torch.zeros(b, E, device=scores.device).scatter_add_(
            1, idx.reshape(b, -1), torch.ones(b, s * K, device=scores.device))
        f = chosen * E / (K * s)
        P = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)
        return self.cfg.aux_loss_alpha * (f * P).sum(dim=-1).mean()


# ---------------------------------------------------------------------------------------------
# Output head and loss, fused


class LinearCrossEntropy(torch.autograd.Function):
    """logits = h @ w.T and their mean cross-entropy against labels (IGNORE_INDEX skipped), a block
    of rows at a time, so that each block's logits are still in cache when their softmax and the
    gradients of h and w are taken. The loss is a scalar: those gradients are final up to the
    incoming scale, so they are computed here, and no (tokens, vocab) softmax or gradient is ever
    written out (faster than cross_entropy(lm_head(h)) on CPU: bench/bench_train.py measures the
    step). The logits come back too, still differentiable, for callers that look at them."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        valid = labels != IGNORE_INDEX
        n = valid.sum()
        target, scale = labels.where(valid, 0)[:, None], (valid / n.clamp_min(1))[:, None]
        logits = h.new_empty(h.shape[0], w.shape[0])
        # both False under no_grad (validation): skip the work
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(w, dtype=torch.float32) if need_w else None
        loss = h.new_zeros((), dtype=torch.float32)
        # ~4 MB of fp32 logits per block on a CPU (they stay in cache); ~256 MB on a GPU, where
        # each block costs a dozen kernel launches and the GEMMs want to be large
        rows = max(128, (2**26 if h.is_cuda else 2**20) // w.shape[0])
        for i in range(0, h.shape[0], rows):
            r = slice(i, i + rows)
            z = torch.mm(h[r], w.t(), out=logits[r]).float()
            # softmax by hand: keeps the max and the sum for the loss; on CPU much faster than
            # logsumexp + exp
            m = z.amax(dim=-1, keepdim=True)
            e = (z - m).exp_()
            total = e.sum(dim=-1, keepdim=True)
            loss += ((m + total.log() - z.gather(1, target[r])) * valid[r, None]).sum()
            if not (need_h or need_w):
                continue
            # d loss / d logits = (softmax - one_hot(label)) * valid / n, built in place
            g = e.mul_(scale[r] / total).scatter_add_(1, target[r], -scale[r]).to(h.dtype)
            if need_h:
                torch.mm(g, w, out=grad_h[r])
            if need_w:
                grad_w += (g.t() @ h[r]).float()
        ctx.save_for_backward(h, w, grad_h, grad_w)
        ctx.set_materialize_grads(False)
        return loss / n, logits  # nan when every label is ignored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None, grad_logits: Tensor | None):
        h, w, grad_h, grad_w = ctx.saved_tensors
        gh = gw = None
        if grad_loss is not None:
            gh = None if grad_h is None else grad_h * grad_loss
            gw = None if grad_w is None else (grad_w * grad_loss).to(w.dtype)
        if grad_logits is not None:  # a loss was also taken on the logits
            if ctx.needs_input_grad[0]:
                gh = grad_logits @ w if gh is None else gh + grad_logits @ w
            if ctx.needs_input_grad[1]:
                gw = grad_logits.t() @ h if gw is None else gw + grad_logits.t() @ h
        return gh, gw, None


def linear_cross_entropy(h: Tensor, w: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy, logits) of h (..., d) through the head w (vocab, d) against labels
    (...)."""
    # inductor fuses the plain form well, and compiles the loop badly
    if torch.compiler.is_compiling():
        logits = F.linear(h, w)
        loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(),
                               ignore_index=IGNORE_INDEX)
        return loss, logits
    # the GEMMs in the matmul dtype (bf16 under autocast, like lm_head's Linear): the function's
    # torch.mm(out=) would otherwise run fp32; the casts' backward hands w an fp32 gradient
    dtype = matmul_dtype(h)
    loss, logits = LinearCrossEntropy.apply(h.flatten(0, -2).to(dtype), w.to(dtype),
                                            labels.flatten())
    return loss, logits.view(*h.shape[:-1], w.shape[0])


# ---------------------------------------------------------------------------------------------
# Blocks, MTP, the model


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.self_attn = MLA(cfg, layer_id) if cfg.is_mla else GQA(cfg, layer_id)
        self.mlp = (MoE(cfg) if cfg.is_moe_layer(layer_id)
                    else MLP(cfg.hidden_size, cfg.intermediate_size))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, **attn) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), **attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class SharedHead(nn.Module):
    """The MTP module's output norm; the projection is the main model's lm_head (shared)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPLayer(Block):
    """MTP module k: h' = eh_proj([enorm(Emb(t_{i+k})); hnorm(h_i^{k-1})]) -> a decoder block ->
    shared_head.norm -> the shared lm_head. A checkpoint stores it as layer
    num_hidden_layers + k - 1."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.shared_head = SharedHead(cfg)

    def forward(self, emb: Tensor, h: Tensor,  # type: ignore[override]
                **attn) -> tuple[Tensor, Tensor]:
        """Returns (h^k, shared_head.norm(h^k)): the state the next depth takes, and what the head
        reads. The norm runs inside forward so that FSDP has this module's parameters gathered for
        it."""
        # embedding first, as the released checkpoints and every server do
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        h = super().forward(x, **attn)
        return h, self.shared_head.norm(h)


@dataclass
class ModelOutput:
    logits: Tensor  # (b, s, vocab)
    loss: Tensor | None = None  # main + mtp + balance
    main_loss: Tensor | None = None
    mtp_loss: Tensor | None = None  # already weighted by lambda / D
    balance_loss: Tensor | None = None  # already weighted by alpha
    mtp_logits: list[Tensor] | None = None  # depth k: (b, s - k, vocab), predicting token i + k + 1
    hidden: Tensor | None = None  # final normed hidden state (b, s, d)
    expert_load: Tensor | None = None  # (n moe layers, E) tokens per expert in this forward
    max_vio: Tensor | None = None  # (n moe layers,) max load / mean load - 1


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPLayer(cfg, cfg.num_hidden_layers + k)
                                 for k in range(cfg.num_nextn_predict_layers))
        inv_freq, attn_factor = rope_frequencies(cfg)
        self.rope_attn_factor = attn_factor
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.init_weights()
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, initializer_range) for every matrix (V3: 0.006), ones for norms, zero
        biases."""
        std = self.cfg.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, Gate):
                nn.init.normal_(m.weight, std=std)
                m.e_score_correction_bias.zero_()
            elif isinstance(m, Experts):
                nn.init.normal_(m.gate_up_proj, std=std)
                nn.init.normal_(m.down_proj, std=std)

    # routing state and rope frequencies stay fp32 whatever dtype the weights are cast to
    # (transformers keeps e_score_correction_bias fp32 too); a bf16 bias could not move by
    # gamma=1e-3
    FP32_BUFFERS = ("e_score_correction_bias", "expert_load", "inv_freq")

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keep = {(m, n): b for m in self.modules() for n, b in m._buffers.items()
                if n in self.FP32_BUFFERS and b is not None and b.dtype == torch.float32}
        super()._apply(fn, recurse)
        for (m, n), old in keep.items():
            if m._buffers[n].dtype != torch.float32:
                m._buffers[n] = old.to(device=m._buffers[n].device, dtype=torch.float32)
        return self

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # same op order as transformers
        return ((freqs.cos() * self.rope_attn_factor).to(dtype),
                (freqs.sin() * self.rope_attn_factor).to(dtype))

    def hidden_states(self, input_ids: Tensor, positions: Tensor, *, cache: KVCache | None = None,
                      mask: Tensor | None = None, absorb: bool = False,
                      documents: Documents | None = None) -> Tensor:
        """The final normed hidden states (b, s, d) of tokens at positions (b, s). With a cache,
        their latents are written at those positions and mask (b, s, kv_len) says what each query
        sees."""
        kv_len = input_ids.shape[1] if mask is None else mask.shape[-1]
        if cache is not None and kv_len > cache.max_len:
            raise ValueError(f"position {kv_len - 1} is past the cache length {cache.max_len}")
        h = self.embed_tokens(input_ids)
        cos, sin = self.rope(positions, h.dtype)
        for layer in self.layers:
            h = layer(h, cos=cos, sin=sin, mask=mask, cache=cache, positions=positions,
                      kv_len=kv_len, absorb=absorb, documents=documents)
        return self.norm(h)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, *,
                cache: KVCache | None = None, start_pos: int | Tensor = 0,
                absorb: bool | None = None, mtp: bool | None = None,
                documents: Tensor | None = None) -> ModelOutput:
        """input_ids (b, s). With a cache, tokens go at start_pos (an int, or a (b,) tensor of
        per-row offsets) and attend to everything cached before them; the absorbed path is the
        default there. MTP heads run when labels are given (training) or mtp=True. documents
        (b, s) bool, where a document of a packed row starts (Documents.starts): attention then
        stays inside each document (training, no cache)."""
        b, s = input_ids.shape
        dev = input_ids.device
        if absorb is None:
            absorb = cache is not None
        start = torch.as_tensor(start_pos, device=dev).reshape(-1, 1).expand(b, 1)
        positions = start + torch.arange(s, device=dev)
        at_zero = isinstance(start_pos, int) and start_pos == 0
        if cache is None and not at_zero and not bool((start == 0).all()):
            raise ValueError("start_pos > 0 needs a cache holding the earlier tokens")
        mask, docs = None, None
        if documents is not None:
            if cache is not None or absorb:
                raise ValueError("documents mask a full training forward: not with a cache")
            docs = Documents(documents)
        if cache is not None:
            # a query at position p sees cache entries 0..p of its own row
            seen = torch.arange(int(positions.max()) + 1, device=dev)
            mask = seen[None, None, :] <= positions[:, :, None]
        h = self.hidden_states(input_ids, positions, cache=cache, mask=mask, absorb=absorb,
                               documents=docs)
        if labels is None:
            out = ModelOutput(logits=self.lm_head(h), hidden=h)
        else:
            loss, logits = linear_cross_entropy(h, self.lm_head.weight, labels)
            out = ModelOutput(logits=logits, loss=loss, main_loss=loss, hidden=h)
        ran = list(self.layers)
        if self.mtp and (mtp or (mtp is None and labels is not None)):
            ran += self._forward_mtp(input_ids, labels, h, positions, out, cached=cache is not None,
                                     documents=docs)
        moe = [m for layer in self.layers if isinstance(m := layer.mlp, MoE)]
        if moe:
            out.expert_load = torch.stack([m.last_load for m in moe])
            out.max_vio = max_violation(out.expert_load)
        parts = [m.balance_loss for layer in ran
                 if isinstance(m := layer.mlp, MoE) and m.balance_loss is not None]
        if parts and out.loss is not None:
            out.balance_loss = torch.stack(parts).sum()
            out.loss = out.loss + out.balance_loss
        return out

    def _forward_mtp(self, input_ids: Tensor, labels: Tensor | None, h: Tensor, positions: Tensor,
                     out: ModelOutput, cached: bool,
                     documents: Documents | None = None) -> list[MTPLayer]:
        """Depth k sees h^{k-1}_i and the embedding of token i+k (the label of position i+k-1), and
        predicts token i+k+1 (labels[:, i+k]). Training only: uses the full sequence, no cache."""
        if cached:
            raise ValueError("the MTP heads run on a full sequence; draft with the engine instead")
        s = input_ids.shape[1]
        D = len(self.mtp)
        out.mtp_logits, losses = [], []
        for k, layer in enumerate(self.mtp, start=1):
            if s - k <= 0:
                break
            # position of the token whose embedding enters, as servers feed the MTP block
            pos = positions[:, k:]
            cos, sin = self.rope(pos, h.dtype)
            h, hk = layer(self.embed_tokens(input_ids[:, k:]), h[:, :-1], cos=cos, sin=sin,
                          mask=None, cache=None, positions=pos, kv_len=s - k, absorb=False,
                          documents=None if documents is None else documents.shifted(k))
            if labels is None:
                out.mtp_logits.append(self.lm_head(hk))
            else:
                loss, logits = linear_cross_entropy(hk, self.lm_head.weight, labels[:, k:])
                out.mtp_logits.append(logits)
                losses.append(loss)
        if losses:
            out.mtp_loss = self.cfg.mtp_loss_weight / D * torch.stack(losses).sum()
            out.loss = out.loss + out.mtp_loss
        return list(self.mtp[: len(out.mtp_logits)])


def max_violation(load: Tensor) -> Tensor:
    """MaxVio = max load / mean load - 1 along the last dim (0 when perfectly balanced)."""
    load = load.float()
    return load.amax(dim=-1) / load.mean(dim=-1).clamp_min(1e-9) - 1


@torch.no_grad()
def update_correction_bias(model: Transformer, gamma: float | None = None) -> Tensor | None:
    """The aux-loss-free balancing step, called by the trainer after each optimizer step:
    b_i <- b_i + gamma * sign(mean load - load_i), with loads summed over every micro-batch since
    the last call and over all data-parallel ranks. Returns the per-layer MaxVio of those loads."""
    moe = model.moe_layers()
    if not moe:
        return None
    gamma = model.cfg.bias_update_speed if gamma is None else gamma
    load = torch.stack([m.expert_load for m in moe])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(load)
    for m, l in zip(moe, load):
        m.gate.e_score_correction_bias += gamma * torch.sign(l.mean() - l)
        m.expert_load.zero_()
    return max_violation(load)
