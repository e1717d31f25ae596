"""Checkpoints in the HF layout: round trips, sharding, atomic writes, and errors that name the
problem."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import nanoseek.checkpoint as ckpt
from nanoseek.checkpoint import CheckpointError, load_model, save_model
from nanoseek.model import get_preset
from nanoseek.model.model import Transformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = Transformer(get_preset("tiny")).eval()
    for moe in m.moe_layers():
        moe.gate.e_score_correction_bias.normal_(0, 0.1)
    return m


def same_state(a: Transformer, b: Transformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0, msg=k)


def test_round_trip_is_exact_and_uses_hf_names(model, tmp_path):
    save_model(model, tmp_path / "ck")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    keys = set(load_file(tmp_path / "ck" / "model.safetensors"))
    N = model.cfg.num_hidden_layers
    for key in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                "model.layers.0.mlp.gate_proj.weight",
                "model.layers.1.mlp.experts.7.gate_proj.weight",
                "model.layers.1.mlp.experts.0.down_proj.weight",
                "model.layers.1.mlp.gate.e_score_correction_bias",
                "model.layers.1.mlp.shared_experts.up_proj.weight",
                f"model.layers.{N}.enorm.weight", f"model.layers.{N}.hnorm.weight",
                f"model.layers.{N}.eh_proj.weight", f"model.layers.{N}.shared_head.norm.weight",
                f"model.layers.{N}.shared_head.head.weight",
                f"model.layers.{N}.embed_tokens.weight",
                f"model.layers.{N}.mlp.experts.3.up_proj.weight"]:
        assert key in keys, key
    assert not any("gate_up_proj" in k for k in keys)  # experts are saved one by one
    loaded = load_model(tmp_path / "ck")
    same_state(model, loaded)
    ids = torch.randint(0, 500, (2, 9))
    torch.testing.assert_close(loaded(ids, mtp=True).mtp_logits[0],
                               model(ids, mtp=True).mtp_logits[0])


def test_sharded_save_writes_an_index_and_loads(model, tmp_path):
    save_model(model, tmp_path / "ck", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    same_state(model, load_model(tmp_path / "ck"))


def test_bf16_save_keeps_the_correction_bias_fp32(model, tmp_path):
    save_model(model, tmp_path / "ck", dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert (f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype
                == torch.float32)
    loaded = load_model(tmp_path / "ck")
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.moe_layers()[0].gate.e_score_correction_bias.dtype == torch.float32
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (load_model(tmp_path / "ck", dtype=torch.float32).embed_tokens.weight.dtype
            == torch.float32)


def test_tied_embeddings_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny").replace(tie_word_embeddings=True,
                                                   num_nextn_predict_layers=0))
    save_model(model, tmp_path / "ck")
    assert "lm_head.weight" not in load_file(tmp_path / "ck" / "model.safetensors")
    loaded = load_model(tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    same_state(model, loaded)


def test_saving_over_a_checkpoint_replaces_it_and_a_failed_save_leaves_it_intact(model, tmp_path,
                                                                                 monkeypatch):
    target = tmp_path / "ck"
    save_model(model, target)
    before = load_file(target / "model.safetensors")
    with torch.no_grad():
        model.norm.weight.add_(1.0)
    save_model(model, target)  # overwrite
    assert (load_file(target / "model.safetensors")["model.norm.weight"] == model.norm.weight).all()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(Transformer(model.cfg), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary left behind
    after = load_file(target / "model.safetensors")
    assert (after["model.norm.weight"] == before["model.norm.weight"] + 1).all()


def rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_named(model, tmp_path):
    save_model(model, tmp_path)
    rewrite(tmp_path / "model.safetensors",
            lambda t: t.pop("model.layers.0.self_attn.q_b_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) "
                                              r"'model\.layers\.0\.self_attn\.q_b_proj\.weight'"):
        load_model(tmp_path)


def test_missing_expert_is_named(model, tmp_path):
    save_model(model, tmp_path)
    rewrite(tmp_path / "model.safetensors",
            lambda t: t.pop("model.layers.1.mlp.experts.5.up_proj.weight"))
    with pytest.raises(CheckpointError,
                       match=r"model\.layers\.1\.mlp\.experts\.5\.up_proj\.weight"):
        load_model(tmp_path)


def test_unexpected_tensor_is_named(model, tmp_path):
    save_model(model, tmp_path)
    rewrite(tmp_path / "model.safetensors",
            lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) "
                                              r"'model\.layers\.0\.mystery\.weight'"):
        load_model(tmp_path)


def test_fp8_scales_get_a_hint(model, tmp_path):
    save_model(model, tmp_path)
    rewrite(tmp_path / "model.safetensors",
            lambda t: t.update({"model.layers.0.self_attn.o_proj.weight_scale_inv": torch.ones(1)}))
    with pytest.raises(CheckpointError, match="de-quantised"):
        load_model(tmp_path)


def test_misshaped_tensor_is_named_with_both_shapes(model, tmp_path):
    save_model(model, tmp_path)
    rewrite(tmp_path / "model.safetensors",
            lambda t: t.update({"model.layers.0.self_attn.o_proj.weight": torch.zeros(64, 60)}))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.o_proj\.weight' "
                                              r"has shape \(64, 60\), "
                                              r"the config implies \(64, 64\)"):
        load_model(tmp_path)


def test_truncated_file_is_reported(model, tmp_path):
    save_model(model, tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        load_model(tmp_path)


def test_garbage_file_is_reported(model, tmp_path):
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)


def test_config_of_another_model_type_is_refused(model, tmp_path):
    save_model(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type must be one of .*'mistral'"):
        load_model(tmp_path)
    cfg.update(model_type="llama", rope_scaling=None, rope_parameters=None)  # a family nanoseek
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # runs, but not these tensors
    with pytest.raises(CheckpointError, match="unexpected tensor.*kv_a_proj_with_mqa"):
        load_model(tmp_path)


def test_invalid_hyper_parameter_is_named(model, tmp_path):
    save_model(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_group"] = 3  # 8 experts do not split into 3 groups
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError,
                       match=r"config\.json.*'n_routed_experts'.*divisible by n_group \(3\)"):
        load_model(tmp_path)


def test_broken_config_json_names_line(model, tmp_path):
    save_model(model, tmp_path)
    (tmp_path / "config.json").write_text('{\n  "model_type": "deepseek_v3",\n  oops\n}')
    with pytest.raises(CheckpointError, match="line 3"):
        load_model(tmp_path)


def test_pickle_is_never_loaded(tmp_path):
    get_preset("tiny").save(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even looked at")
    with pytest.raises(CheckpointError, match="only safetensors"):
        load_model(tmp_path)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nope")


def test_index_naming_a_missing_shard(model, tmp_path):
    save_model(model, tmp_path, max_shard_bytes=200_000)
    (tmp_path / "model-00002-of-{:05d}.safetensors".format(len(set(json.loads(
        (tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())))).unlink()
    with pytest.raises(CheckpointError, match="names shard model-00002"):
        load_model(tmp_path)


def test_tokenizer_files_travel_with_the_checkpoint(model, tmp_path):
    from nanoseek.tokenizer import Tokenizer, train_tokenizer

    tok = train_tokenizer((f"{a} plus {b} is {a + b}" for a in range(40) for b in range(40)),
                          vocab_size=300)
    save_model(model, tmp_path / "ck", tokenizer=tok)
    names = {p.name for p in (tmp_path / "ck").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= names
    again = Tokenizer.load(tmp_path / "ck")
    assert again.encode("12 plus 7 is 19") == tok.encode("12 plus 7 is 19")
    load_model(tmp_path / "ck")  # the extra files do not disturb loading
