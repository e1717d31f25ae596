"""Parameter, FLOP and KV-cache arithmetic: exact against transformers' DeepseekV3ForCausalLM."""

import time

import pytest
import torch

from nanoseek.model.config import ModelConfig, get_preset
from nanoseek.model.counting import (
    count_params,
    flops_per_token,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
)

# n_shared_experts=0 makes transformers build a zero-width shared MLP, which torch warns about
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

_SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
              qk_nope_head_dim=8, qk_rope_head_dim=4,
              v_head_dim=8, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
              num_nextn_predict_layers=1, max_position_embeddings=256, rope_scaling=None)

CONFIGS = {
    # q LoRA, YaRN, 1 dense + 1 MoE layer, 1 shared expert, untied
    "tiny": get_preset("tiny"),
    # single q_proj, every layer MoE, no shared expert, tied embeddings
    "no-qlora-tied": ModelConfig(**_SMALL, q_lora_rank=None, first_k_dense_replace=0,
                                 n_shared_experts=0, tie_word_embeddings=True),
    # q LoRA with biases, 2 dense layers then MoE, 2 shared experts, tied
    "bias-2shared": ModelConfig(**_SMALL, q_lora_rank=24, attention_bias=True,
                                first_k_dense_replace=2, n_shared_experts=2,
                                tie_word_embeddings=True),
    # q_proj with attention_bias (q_proj stays unbiased), all layers dense
    "dense-bias": ModelConfig(**{**_SMALL, "num_hidden_layers": 2}, q_lora_rank=None,
                              attention_bias=True, first_k_dense_replace=2, n_shared_experts=1),
}


def _hf_model(cfg: ModelConfig):
    """The reference: transformers' DeepseekV3ForCausalLM (a dev dependency; these tests skip
    without it)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**cfg.to_hf_dict()))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_total_matches_transformers_exactly(name):
    cfg = CONFIGS[name]
    model = _hf_model(cfg)
    p = count_params(cfg)
    assert p.total == sum(t.numel() for t in model.parameters())
    assert sum(p.breakdown.values()) == p.total
    assert p.embedding == model.model.embed_tokens.weight.numel()
    assert p.breakdown["lm_head"] == (0 if cfg.tie_word_embeddings
                                      else cfg.vocab_size * cfg.hidden_size)
    # the correction bias is a buffer, reported apart from the parameters
    bias = sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    assert p.buffers == bias


@pytest.mark.parametrize("name", list(CONFIGS))
def test_active_and_matmul_params_match_transformers(name):
    """Re-derive active counts from the HF module tree: a fused expert tensor counts k / n_routed
    of it."""
    cfg = CONFIGS[name]
    model = _hf_model(cfg)
    active = matmul = 0
    for n, t in model.named_parameters():
        size = t.numel()
        if ".mlp.experts." in n:
            assert size % cfg.n_routed_experts == 0
            size = size // cfg.n_routed_experts * cfg.num_experts_per_tok
        active += size
        if t.dim() >= 2 and "embed_tokens" not in n:
            matmul += size
    if cfg.tie_word_embeddings:  # the head matmul still runs, on the embedding's weight
        matmul += cfg.vocab_size * cfg.hidden_size
    p = count_params(cfg)
    assert p.active == active
    assert p.active_matmul == matmul
    assert p.active_non_embedding == active - cfg.vocab_size * cfg.hidden_size


@pytest.mark.parametrize("name", ["tiny", "bias-2shared"])
def test_mtp_is_the_extra_modules_plus_one_layer_body(name):
    cfg = CONFIGS[name]
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer

    hf_cfg = transformers.DeepseekV3Config(**cfg.to_hf_dict())
    d = cfg.hidden_size
    body = DeepseekV3DecoderLayer(hf_cfg, cfg.num_hidden_layers)  # the MTP block's index
    extra = 3 * d + 2 * d * d  # enorm, hnorm, shared_head.norm, eh_proj (no bias)
    per_module = extra + sum(t.numel() for t in body.parameters())
    assert count_params(cfg).mtp == cfg.num_nextn_predict_layers * per_module
    assert count_params(cfg.replace(num_nextn_predict_layers=0)).mtp == 0
    assert count_params(cfg.replace(num_nextn_predict_layers=2)).mtp == 2 * count_params(cfg).mtp


def test_deepseek_v3_figures():
    cfg = get_preset("deepseek-v3")
    t0 = time.perf_counter()
    p = count_params(cfg)
    assert time.perf_counter() - t0 < 0.5  # arithmetic, never a model
    assert p.total == pytest.approx(671e9, rel=0.01)
    assert p.active == pytest.approx(37e9, rel=0.02)
    assert 11.5e9 <= p.mtp <= 14e9
    # regression pin (the layout is checked exactly on tiny configs above)
    assert p.total == 671_026_404_352
    assert p.embedding == 129280 * 7168
    kv = kv_cache_bytes_per_token(cfg)
    assert kv.mla_latent == 61 * 576 * 2 == 70_272
    assert kv.mha == 61 * 2 * 128 * 128 * 2
    assert kv.naive == 61 * 128 * (192 + 128) * 2
    assert kv.gqa == 61 * 2 * 8 * 128 * 2 and kv.gqa_groups == 8
    assert kv.mha_over_mla == pytest.approx(57, abs=0.2)
    assert kv_cache_bytes_per_token(cfg, dtype_bytes=1).mla_latent == 35_136


def test_deepseek_v2_lite_figures():
    p = count_params(get_preset("deepseek-v2-lite"))
    assert p.total == pytest.approx(15.7e9, rel=0.01)
    # DeepSeek's "2.4B activated" leaves the input embedding out; `active` keeps it (+0.2B)
    assert p.active_non_embedding == pytest.approx(2.4e9, rel=0.03)
    assert p.active == p.active_non_embedding + 102400 * 2048
    assert p.mtp == 0


def test_flops_convention():
    cfg = get_preset("tiny")
    n = count_params(cfg).active_matmul
    seq = 1000
    attn_fwd = (cfg.num_hidden_layers * cfg.num_attention_heads
                * (cfg.qk_head_dim + cfg.v_head_dim) * seq)
    assert forward_flops_per_token(cfg, seq) == 2 * n + attn_fwd
    assert (flops_per_token(cfg, seq) == 6 * n + 3 * attn_fwd
            == 3 * forward_flops_per_token(cfg, seq))
    # longer context costs more, only through attention
    assert flops_per_token(cfg, 2 * seq) - flops_per_token(cfg, seq) == 3 * attn_fwd
    assert flops_per_token(cfg, seq, include_mtp=True) > flops_per_token(cfg, seq)
    with pytest.raises(ValueError):
        flops_per_token(cfg, 0)


def test_flops_deepseek_v3_magnitude():
    cfg = get_preset("deepseek-v3")
    f = flops_per_token(cfg, 4096)
    # 6 * ~36.6B active matmul weights + causal attention at 4K
    assert f == 6 * count_params(cfg).active_matmul + 3 * 61 * 128 * 320 * 4096
    assert 2.4e11 < f < 2.6e11


def test_kv_cache_layouts_and_gqa_groups():
    cfg = get_preset("tiny")  # 4 heads: 8 GQA groups cap at the head count
    kv = kv_cache_bytes_per_token(cfg, dtype_bytes=4)
    assert kv.mla_latent == 2 * (32 + 8) * 4
    assert kv.gqa_groups == 4 and kv.gqa == kv.mha
    kv2 = kv_cache_bytes_per_token(cfg, gqa_groups=2)
    assert kv2.gqa == 2 * 2 * 2 * 16 * 2 and kv2.gqa_over_mla == kv2.gqa / kv2.mla_latent
    with pytest.raises(ValueError):
        kv_cache_bytes_per_token(cfg, dtype_bytes=0)
