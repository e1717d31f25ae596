"""ModelConfig: HF field names, config.json in both rope spellings, presets, validation messages."""

import json

import pytest

from nanoseek.model import PRESETS, ConfigError, ModelConfig, get_preset, resolve_config


def test_v3_softmax_scale_includes_yarn_mscale():
    # mscale = 0.1 * ln(40) * 1 + 1; scale = 192^-0.5 * mscale^2 = 0.1352
    assert get_preset("deepseek-v3").softmax_scale == pytest.approx(0.1352, abs=1e-4)
    assert get_preset("cpu-small").softmax_scale == pytest.approx(48**-0.5)


def test_round_trip_through_config_json(tmp_path):
    for name in PRESETS:
        cfg = get_preset(name)
        cfg.save(tmp_path / "config.json")
        assert ModelConfig.load(tmp_path) == cfg, name


def test_written_config_carries_both_rope_spellings(tmp_path):
    d = get_preset("deepseek-v3").to_hf_dict()
    assert d["model_type"] == "deepseek_v3" and d["architectures"] == ["DeepseekV3ForCausalLM"]
    assert d["rope_scaling"]["type"] == "yarn" and d["rope_scaling"]["factor"] == 40.0
    assert d["rope_parameters"]["rope_type"] == "yarn"
    assert d["rope_parameters"]["rope_theta"] == 10000.0
    assert d["num_nextn_predict_layers"] == d["num_mtp_layers"] == 1


def test_reads_transformers5_rope_parameters_and_v3_release_style():
    base = get_preset("tiny").to_hf_dict()
    hf5 = {k: v for k, v in base.items() if k not in ("rope_scaling", "rope_theta")}
    hf5["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 8.0,
                              "original_max_position_embeddings": 128, "mscale": 1.0,
                              "mscale_all_dim": 1.0}
    cfg = ModelConfig.from_dict(hf5)
    assert cfg.rope_theta == 5000.0
    assert cfg.rope_scaling["type"] == "yarn" and cfg.rope_scaling["factor"] == 8.0
    release = {k: v for k, v in base.items() if k != "rope_parameters"}
    release["rope_scaling"] = {"type": "yarn", "factor": 8.0,
                               "original_max_position_embeddings": 128}
    assert ModelConfig.from_dict(release).rope_scaling["factor"] == 8.0
    plain = {k: v for k, v in base.items() if k != "rope_scaling"}
    plain["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    assert ModelConfig.from_dict(plain).rope_scaling is None


@pytest.mark.parametrize("changes, field, words", [
    ({"n_group": 3}, "n_routed_experts", "divisible by n_group"),
    ({"topk_group": 5}, "topk_group", "must be in"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok", "must be in"),
    ({"hidden_size": 0}, "hidden_size", "positive integer"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim", "even"),
    ({"num_key_value_heads": 2}, "num_key_value_heads", "must equal num_attention_heads"),
    ({"q_lora_rank": -1}, "q_lora_rank", "positive integer or null"),
    ({"hidden_act": "gelu"}, "hidden_act", "silu"),
    ({"n_routed_experts": 0}, "first_k_dense_replace", "every layer is dense"),
])
def test_invalid_hyper_parameters_name_the_field(changes, field, words):
    with pytest.raises(ConfigError, match=rf"'{field}'.*{words}"):
        get_preset("tiny").replace(**changes)


def test_wrong_model_type_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="model_type must be one of deepseek_v3, llama, qwen2"):
        ModelConfig.from_dict({"model_type": "mistral"})
    (tmp_path / "config.json").write_text('{"model_type": "deepseek_v3",\n "x": }')
    with pytest.raises(ConfigError, match="line 2"):
        ModelConfig.load(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no such file"):
        ModelConfig.load(tmp_path / "missing.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        ModelConfig.load(tmp_path / "bin.json")


def test_unknown_keys_are_ignored_and_nulls_mean_defaults():
    d = get_preset("tiny").to_hf_dict()
    d.update({"quantization_config": {"quant_method": "fp8"}, "n_shared_experts": None,
              "eos_token_id": [1, 2]})
    cfg = ModelConfig.from_dict(d)
    assert cfg.n_shared_experts == 0 and cfg.eos_token_id == 1


def test_resolve_config(tmp_path):
    assert resolve_config("tiny") == get_preset("tiny")
    get_preset("cpu-small").save(tmp_path / "config.json")
    assert resolve_config(str(tmp_path)) == get_preset("cpu-small")
    assert resolve_config(str(tmp_path / "config.json")) == get_preset("cpu-small")
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_config("gpt-5")


def test_presets_are_copies():
    a = get_preset("deepseek-v3")
    a.rope_scaling["factor"] = 1.0
    assert get_preset("deepseek-v3").rope_scaling["factor"] == 40.0
    json.dumps(get_preset("deepseek-v3").to_hf_dict())  # serialisable


def test_a_misspelt_field_is_refused_with_its_close_matches():
    with pytest.raises(ConfigError, match=r"'hiden_size': no such field; did you mean hidden_size"):
        get_preset("tiny").replace(hiden_size=64)
    with pytest.raises(ConfigError, match=r"'xyzzy': no such field$"):
        get_preset("tiny").replace(xyzzy=1)


@pytest.mark.parametrize("changes, field", [
    ({"moe_intermediate_size": 30}, "moe_intermediate_size"),
    ({"moe_intermediate_size": 12}, "moe_intermediate_size"),  # fp32 would take it, bf16 not
    ({"hidden_size": 60}, "hidden_size"),
])
def test_widths_the_experts_grouped_gemm_cannot_take_are_refused(changes, field):
    with pytest.raises(ConfigError, match=rf"'{field}': must be a multiple of 8 with routed"):
        get_preset("tiny").replace(**changes)
    # a dense model has no grouped GEMM: any width
    dense = {"first_k_dense_replace": 2, "num_nextn_predict_layers": 0}
    assert get_preset("tiny").replace(**dense, **changes).n_moe_layers == 0
