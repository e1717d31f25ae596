"""Numeric parity with transformers' DeepseekV3ForCausalLM (the reference), both checkpoint
directions."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402
from transformers.modeling_layers import MtpLayer  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3DecoderLayer,
    DeepseekV3RMSNorm,
)

from nanoseek.checkpoint import load_model, save_model  # noqa: E402
from nanoseek.model import ModelConfig  # noqa: E402
from nanoseek.model.model import Transformer  # noqa: E402

transformers.logging.set_verbosity_error()

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 32,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
PLAIN = {"rope_type": "default", "rope_theta": 10000.0}

# Together these cover: q_lora_rank set and null, YaRN on and off, n_group > 1 with
# topk_group < n_group, first_k_dense_replace 0 and > 0, n_shared_experts 0 and 2, MTP present,
# tied embeddings.
CONFIGS = {
    "v3-like": dict(q_lora_rank=16, rope_parameters=YARN, n_group=4, topk_group=2,
                    first_k_dense_replace=1, n_shared_experts=1, num_mtp_layers=1),
    "v2-lite-like": dict(q_lora_rank=None, rope_parameters=PLAIN, n_group=1, topk_group=1,
                         first_k_dense_replace=0, n_shared_experts=2, num_mtp_layers=0),
    "no-shared": dict(q_lora_rank=24, rope_parameters=YARN, n_group=2, topk_group=1,
                      first_k_dense_replace=2, n_shared_experts=0, num_mtp_layers=1),
    "tied-plain": dict(q_lora_rank=None, rope_parameters=PLAIN, n_group=4, topk_group=3,
                       first_k_dense_replace=1, n_shared_experts=1, num_mtp_layers=2,
                       tie_word_embeddings=True),
}


def hf_config(**kw) -> DeepseekV3Config:
    base = dict(vocab_size=211, hidden_size=48, intermediate_size=80, moe_intermediate_size=24,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
                qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
                num_experts_per_tok=3, max_position_embeddings=128, routed_scaling_factor=2.5,
                initializer_range=0.1)
    base.update(kw)
    return DeepseekV3Config(**base)


def random_hf_model(cfg: DeepseekV3Config, seed: int) -> DeepseekV3ForCausalLM:
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for m in model.modules():  # correction biases of both signs, so selection != gate weights
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.normal_(0, 0.3)
    return model


def ids_for(vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 45), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_checkpoint_loads_with_identical_logits(name, tmp_path):
    ref = random_hf_model(hf_config(**CONFIGS[name]), seed=list(CONFIGS).index(name))
    ref.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    ids = ids_for(ref.config.vocab_size, 1)
    with torch.no_grad():
        expected = ref(ids).logits
        got = model(ids).logits
        absorbed = model(ids, absorb=True).logits
    assert expected.abs().max() > 0.5  # a signal large enough for 1e-5 to mean something
    assert (got - expected).abs().max() <= 1e-5
    assert (absorbed - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_nanoseek_checkpoint_loads_in_transformers_with_identical_logits(name, tmp_path):
    kw = CONFIGS[name]
    rope = kw["rope_parameters"]
    cfg = ModelConfig.from_dict({**hf_config(**kw).to_dict(), "model_type": "deepseek_v3",
                                 "rope_scaling": None if rope["rope_type"] == "default" else rope})
    torch.manual_seed(3)
    model = Transformer(cfg).eval()
    for m in model.moe_layers():
        m.gate.e_score_correction_bias.normal_(0, 0.3)
    save_model(model, tmp_path)
    ref = DeepseekV3ForCausalLM.from_pretrained(tmp_path).eval()
    assert ref.config.rope_parameters["rope_type"] == rope["rope_type"]
    ids = ids_for(cfg.vocab_size, 2)
    with torch.no_grad():
        expected = ref(ids).logits
        got = model(ids).logits
    assert expected.abs().max() > 0.5
    assert (got - expected).abs().max() <= 1e-5


def test_mtp_matches_transformers_mtp_layer(tmp_path):
    """The MTP module against transformers' own MtpLayer built from its DeepSeek-V3 decoder
    layer."""
    hc = hf_config(**CONFIGS["v3-like"])
    torch.manual_seed(5)
    cfg = ModelConfig.from_dict({**hc.to_dict(), "model_type": "deepseek_v3", "rope_scaling": YARN})
    model = Transformer(cfg).eval()
    save_model(model, tmp_path)
    ref = DeepseekV3ForCausalLM.from_pretrained(tmp_path).eval()
    mtp_ref = MtpLayer(ref.config, DeepseekV3DecoderLayer, DeepseekV3RMSNorm,
                       hc.num_hidden_layers).eval()
    # our MTP layer's tensors under MtpLayer's names (shared_head.norm is its post_norm)
    state = {}
    for k, v in model.mtp[0].state_dict().items():
        if k.split(".")[0] in ("enorm", "hnorm", "eh_proj"):
            state[k] = v
        elif k.startswith("shared_head.norm"):
            state[k.replace("shared_head.norm", "post_norm")] = v
        else:  # the decoder block (experts fused the same way in both)
            state["mtp_block." + k] = v
    mtp_ref.load_state_dict(state, strict=True)
    ids = ids_for(cfg.vocab_size, 4)
    with torch.no_grad():
        out = model(ids, mtp=True)
        h = ref.model(ids).last_hidden_state
        pos = torch.arange(1, ids.shape[1])[None]
        emb = ref.model.embed_tokens(ids[:, 1:])
        rope = ref.model.rotary_emb(emb, pos)
        expected = ref.lm_head(mtp_ref(emb, h[:, :-1], position_embeddings=rope,
                                       attention_mask=None, position_ids=pos, past_key_values=None))
    assert expected.abs().max() > 0.5
    assert (out.mtp_logits[0] - expected).abs().max() <= 1e-5
