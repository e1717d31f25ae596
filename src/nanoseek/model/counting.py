"""How big a model is, what a token costs, and what its KV cache holds: arithmetic on a
ModelConfig.

Nothing here builds a model, so the 671B DeepSeek-V3 shape is counted as fast as the tiny one. The
parameter counts follow the Hugging Face `DeepseekV3ForCausalLM` layout module by module, and must
equal `sum(p.numel() for p in model.parameters())` exactly (tests check it against transformers).

Per decoder layer (d = hidden_size, H = num_attention_heads):
  attention  q_a_proj d->q_lora_rank (+bias if attention_bias), q_a_layernorm,
             q_b_proj q_lora_rank->H*qk_head_dim
             (or one q_proj d->H*qk_head_dim, never biased, when q_lora_rank is null);
             kv_a_proj_with_mqa d->kv_lora_rank+qk_rope_head_dim (+bias),
             kv_a_layernorm (kv_lora_rank),
             kv_b_proj kv_lora_rank->H*(qk_nope_head_dim+v_head_dim), o_proj H*v_head_dim->d (+bias)
  FFN        dense SwiGLU (gate/up/down, intermediate_size) for layers < first_k_dense_replace,
             else MoE: router weight (n_routed_experts x d), n_routed_experts SwiGLU experts of
             moe_intermediate_size, shared experts as one SwiGLU of
             moe_intermediate_size * n_shared_experts
  norms      input_layernorm + post_attention_layernorm (d each)
Plus the embedding, the final norm and lm_head (absent when tie_word_embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

from nanoseek.model.config import ModelConfig


def _swiglu(d: int, width: int) -> int:
    return 3 * d * width  # gate_proj, up_proj (d -> width), down_proj (width -> d); no biases


@dataclass(frozen=True)
class _Attention:
    params: int  # every parameter of self_attn
    matmul: int  # the weight matrices only (no biases, no q_a/kv_a layernorms)


def _attention(cfg: ModelConfig) -> _Attention:
    d, h = cfg.hidden_size, cfg.num_attention_heads
    bias = cfg.attention_bias
    if not cfg.is_mla:  # GQA: q_proj, k_proj, v_proj, o_proj
        q, kv = h * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        matmul = d * q + 2 * d * kv + q * d
        if cfg.model_type == "qwen2":
            biases = q + 2 * kv  # q, k, v; never o
        else:
            biases = (q + 2 * kv + d) if bias else 0
        return _Attention(params=matmul + biases, matmul=matmul)
    if cfg.q_lora_rank is None:
        q_mat = d * h * cfg.qk_head_dim  # q_proj: transformers never gives it a bias
        q_other = 0
    else:
        q_mat = d * cfg.q_lora_rank + cfg.q_lora_rank * h * cfg.qk_head_dim
        # q_a_layernorm (+ q_a_proj bias)
        q_other = cfg.q_lora_rank + (cfg.q_lora_rank if bias else 0)
    kv_out = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    kv_mat = d * kv_out + cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    # kv_a_layernorm (+ kv_a_proj_with_mqa bias)
    kv_other = cfg.kv_lora_rank + (kv_out if bias else 0)
    o_mat = h * cfg.v_head_dim * d
    o_other = d if bias else 0
    matmul = q_mat + kv_mat + o_mat
    return _Attention(params=matmul + q_other + kv_other + o_other, matmul=matmul)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer body, split the way ParamCount reports it."""

    attention: int
    attention_matmul: int
    dense_ffn: int
    routed_experts: int  # all of them
    routed_active: int  # the num_experts_per_tok a token visits
    shared_experts: int
    router: int
    router_buffer: int  # e_score_correction_bias: a buffer, not a parameter
    norms: int

    @property
    def total(self) -> int:
        return (self.attention + self.dense_ffn + self.routed_experts + self.shared_experts
                + self.router + self.norms)

    @property
    def active(self) -> int:
        return (self.attention + self.dense_ffn + self.routed_active + self.shared_experts
                + self.router + self.norms)

    @property
    def active_matmul(self) -> int:
        # the router is a matmul over every expert's row, so all of it counts
        return (self.attention_matmul + self.dense_ffn + self.routed_active + self.shared_experts
                + self.router)


def _layer(cfg: ModelConfig, layer_id: int) -> _Layer:
    d = cfg.hidden_size
    att = _attention(cfg)
    norms = 2 * d
    if cfg.is_moe_layer(layer_id):
        expert = _swiglu(d, cfg.moe_intermediate_size)
        return _Layer(attention=att.params, attention_matmul=att.matmul, dense_ffn=0,
                      routed_experts=cfg.n_routed_experts * expert,
                      routed_active=cfg.num_experts_per_tok * expert,
                      shared_experts=_swiglu(d, cfg.moe_intermediate_size * cfg.n_shared_experts),
                      router=cfg.n_routed_experts * d, router_buffer=cfg.n_routed_experts,
                      norms=norms)
    return _Layer(attention=att.params, attention_matmul=att.matmul,
                  dense_ffn=_swiglu(d, cfg.intermediate_size), routed_experts=0, routed_active=0,
                  shared_experts=0, router=0, router_buffer=0, norms=norms)


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a DeepSeek-V3 model (exact integers).

    total          the main model (what `DeepseekV3ForCausalLM` holds), MTP excluded
    active         parameters a token touches: embedding + lm_head + attention + dense FFN + shared
                   experts + num_experts_per_tok routed experts + router + norms
    mtp            the MTP modules (enorm, hnorm, eh_proj 2d->d, shared_head.norm, one decoder layer
                   body each); they share the main embedding and head, which are not counted again.
                   (The released V3 checkpoint stores its own copy of both in layer 61: 11.6B + 1.9B
                   is DeepSeek's "14B".)
    embedding      embed_tokens (vocab x d)
    breakdown      total split into attention, dense_ffn, routed_experts, shared_experts, router,
                   norms, embedding, lm_head (0 when tied); the values sum to total
    active_matmul  the active parameters that enter a matmul: active minus the embedding lookup,
                   norms and biases, plus the head's d x vocab when it is tied (the matmul still
                   happens) — the N of 6N
    buffers        e_score_correction_bias elements of the main model: state, not parameters
    """

    total: int
    active: int
    mtp: int
    embedding: int
    breakdown: dict[str, int]
    active_matmul: int
    buffers: int

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    @property
    def active_non_embedding(self) -> int:
        """active without the embedding lookup: the convention of DeepSeek's "37B" / V2-Lite's
        "2.4B"."""
        return self.active - self.embedding


def count_params(cfg: ModelConfig) -> ParamCount:
    d, vocab = cfg.hidden_size, cfg.vocab_size
    layers = [_layer(cfg, i) for i in range(cfg.num_hidden_layers)]
    embedding = vocab * d
    lm_head = 0 if cfg.tie_word_embeddings else vocab * d
    breakdown = {
        "attention": sum(x.attention for x in layers),
        "dense_ffn": sum(x.dense_ffn for x in layers),
        "routed_experts": sum(x.routed_experts for x in layers),
        "shared_experts": sum(x.shared_experts for x in layers),
        "router": sum(x.router for x in layers),
        "norms": sum(x.norms for x in layers) + d,  # + the final norm
        "embedding": embedding,
        "lm_head": lm_head,
    }
    total = sum(breakdown.values())
    active = sum(x.active for x in layers) + d + embedding + lm_head
    active_matmul = sum(x.active_matmul for x in layers) + vocab * d  # the head, tied or not
    mtp = 0
    for k in range(cfg.num_nextn_predict_layers):
        body = _layer(cfg, cfg.num_hidden_layers + k)
        # enorm, hnorm, shared_head.norm; eh_proj; the layer body
        mtp += 3 * d + 2 * d * d + body.total
    return ParamCount(total=total, active=active, mtp=mtp, embedding=embedding, breakdown=breakdown,
                      active_matmul=active_matmul, buffers=sum(x.router_buffer for x in layers))


def _flops(cfg: ModelConfig, seq_len: int, passes: int, include_mtp: bool) -> int:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1 (got {seq_len})")
    n = count_params(cfg).active_matmul
    n_layers = cfg.num_hidden_layers
    if include_mtp:
        for k in range(cfg.num_nextn_predict_layers):
            # eh_proj + the layer body + the shared head once more (the embedding lookup is free)
            n += 2 * cfg.hidden_size**2 + _layer(cfg, cfg.num_hidden_layers + k).active_matmul
            n += cfg.vocab_size * cfg.hidden_size
        n_layers += cfg.num_nextn_predict_layers
    # scores q.k (qk_head_dim) and the weighted sum of v (v_head_dim), 2 FLOPs per multiply-add,
    # over seq_len / 2 keys on average under the causal mask: 2 * (dqk + dv) * seq_len / 2 per head
    # per layer
    attn = n_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len
    return passes * (2 * n + attn)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, include_mtp: bool = False) -> int:
    """Training FLOPs per token (forward + backward), the Kaplan/Chinchilla convention extended to
    MoE:

        6 * N_active_matmul
          + 3 * 2 * num_hidden_layers * heads * (qk_head_dim + v_head_dim) * seq_len / 2

    N_active_matmul counts the weights a token multiplies by (attention projections, dense FFN,
    shared and num_experts_per_tok routed experts, router, lm_head; not the embedding lookup, norms
    or biases): 2 FLOPs per weight forward, 4 backward. The attention term is the part of the score
    and value matmuls that grows with context: a query sees on average half the sequence under the
    causal mask. Softmax, norms, RoPE and the MLA absorption rewrite (decode only) are ignored. With
    include_mtp, the MTP modules' forward/backward (eh_proj, their layer body, the shared head) are
    added, as when training with MTP.
    """
    return _flops(cfg, seq_len, passes=3, include_mtp=include_mtp)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, *, include_mtp: bool = False) -> int:
    """Forward-only FLOPs per token (prefill / evaluation): a third of flops_per_token."""
    return _flops(cfg, seq_len, passes=1, include_mtp=include_mtp)


@dataclass(frozen=True)
class KVCacheSize:
    """Bytes of KV cache per token (all main layers; MTP layers are not counted).

    mla_latent  what nanoseek's absorbed cache stores: c_kv (kv_lora_rank) and k_pe
                (qk_rope_head_dim); for a llama / qwen2 model, its own grouped K and V
                (2 * num_key_value_heads * head_dim), what nanoseek's cache holds for it
    naive       per-head K (qk_head_dim) and V (v_head_dim) materialised from the latent
    mha         plain multi-head attention of the same width: K and V of v_head_dim per head
    gqa         grouped-query attention with gqa_groups KV heads of v_head_dim
    """

    dtype_bytes: int
    mla_latent: int
    naive: int
    mha: int
    gqa: int
    gqa_groups: int

    @property
    def naive_over_mla(self) -> float:
        return self.naive / self.mla_latent

    @property
    def mha_over_mla(self) -> float:
        return self.mha / self.mla_latent

    @property
    def gqa_over_mla(self) -> float:
        return self.gqa / self.mla_latent


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2,
                             gqa_groups: int = 8) -> KVCacheSize:
    """KV cache bytes per token under four layouts; gqa_groups is capped at the head count.

    Note: transformers 5's DeepseekV3Attention also caches the compressed latent
    (kv_a_layernorm(c_kv) and the roped k_pe, as two one-head tensors) and re-expands it through
    kv_b_proj at every step, so its DynamicCache holds `mla_latent` bytes; `naive` is what a cache
    of expanded per-head K/V would hold (transformers 4.x and the reference "naive" attention of the
    official V3 code did this).
    """
    if dtype_bytes < 1:
        raise ValueError(f"dtype_bytes must be >= 1 (got {dtype_bytes})")
    if gqa_groups < 1:
        raise ValueError(f"gqa_groups must be >= 1 (got {gqa_groups})")
    n_layers, h = cfg.num_hidden_layers, cfg.num_attention_heads
    groups = min(gqa_groups, h)
    return KVCacheSize(
        dtype_bytes=dtype_bytes,
        mla_latent=n_layers * cfg.kv_cache_dim * dtype_bytes,
        naive=n_layers * h * (cfg.qk_head_dim + cfg.v_head_dim) * dtype_bytes,
        mha=n_layers * 2 * h * cfg.v_head_dim * dtype_bytes,
        gqa=n_layers * 2 * groups * cfg.v_head_dim * dtype_bytes,
        gqa_groups=groups,
    )


__all__ = ["KVCacheSize", "ParamCount", "count_params", "flops_per_token",
           "forward_flops_per_token", "kv_cache_bytes_per_token"]
