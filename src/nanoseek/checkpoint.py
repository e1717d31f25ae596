"""Save and load models in the Hugging Face `deepseek_v3` layout.

A checkpoint directory holds config.json, model.safetensors (or shards plus
model.safetensors.index.json), generation_config.json and, when given, the tokenizer files. Keys are
HF's: experts one by one (`model.layers.N.mlp.experts.J.gate_proj.weight`), the MTP modules as
layers num_hidden_layers + k, so transformers, vLLM and SGLang read what nanoseek writes, and
nanoseek reads what they (and DeepSeek's releases, once de-quantised to bf16) write. Only
safetensors are read: no pickle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nanoseek.errors import UserError
from nanoseek.files import atomic_directory
from nanoseek.model.config import ConfigError, ModelConfig
from nanoseek.model.model import Transformer, rope_frequencies

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_EXPERTS = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_HF_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded; the message names the file and the key or field."""


# ---------------------------------------------------------------------------------------------
# key mapping: nanoseek module names <-> HF checkpoint names


def _hf_prefix(name: str, cfg: ModelConfig) -> str:
    if name.startswith("mtp."):
        k, rest = name[4:].split(".", 1)
        return f"model.layers.{cfg.num_hidden_layers + int(k)}.{rest}"
    if name.startswith("lm_head."):
        return name
    return "model." + name


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """nanoseek tensors under HF names, fused experts split into per-expert matrices."""
    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        hf = _hf_prefix(name, cfg)
        m = _EXPERTS.match(hf)
        if m is None:
            out[hf] = t
        elif m.group(2) == "gate_up_proj":
            I = cfg.moe_intermediate_size
            for j in range(cfg.n_routed_experts):
                out[f"{m.group(1)}.{j}.gate_proj.weight"] = t[j, :I]
                out[f"{m.group(1)}.{j}.up_proj.weight"] = t[j, I:]
        else:
            for j in range(cfg.n_routed_experts):
                out[f"{m.group(1)}.{j}.down_proj.weight"] = t[j]
    # the released checkpoints repeat the shared embedding and head inside each MTP layer, and
    # servers (vLLM, SGLang) load them from there: write them the same way
    for k in range(cfg.num_nextn_predict_layers):
        base = f"model.layers.{cfg.num_hidden_layers + k}"
        out[f"{base}.embed_tokens.weight"] = model.embed_tokens.weight
        out[f"{base}.shared_head.head.weight"] = model.lm_head.weight
    return {k: v.detach().contiguous() for k, v in out.items()}


def _mtp_duplicate(key: str, cfg: ModelConfig) -> bool:
    m = re.match(r"^model\.layers\.(\d+)\.(embed_tokens|shared_head\.head)\.weight$", key)
    return m is not None and int(m.group(1)) >= cfg.num_hidden_layers


def from_hf_state_dict(tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                       expected: dict[str, torch.Size],
                       source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF-named tensors -> nanoseek state dict; missing, unexpected and mis-shaped keys raise."""
    inv: dict[str, str] = {}  # HF name -> nanoseek name, for every non-expert tensor
    for name in expected:
        if not _EXPERTS.match(name):
            inv[_hf_prefix(name, cfg)] = name
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, t in tensors.items():
        if m := _HF_EXPERT.match(key):
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
        elif key in inv:
            out[inv[key]] = t
        elif _mtp_duplicate(key, cfg) or (key.endswith("rotary_emb.inv_freq")):
            continue
        elif ".shared_experts." in key and cfg.n_shared_experts == 0 and t.numel() == 0:
            continue  # transformers writes zero-width shared experts when n_shared_experts is 0
        else:
            unexpected.append(key)
    if cfg.tie_word_embeddings and "lm_head.weight" not in out and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    if unexpected:
        fp8 = any("scale_inv" in k for k in unexpected)
        hint = " (FP8 checkpoints must be de-quantised to bf16 first)" if fp8 else ""
        raise CheckpointError(f"{source}: unexpected tensor(s) {_few(unexpected)}{hint}")
    # fuse the per-expert matrices back into stacked [gate; up] and down weights
    I, E = cfg.moe_intermediate_size, cfg.n_routed_experts
    for hf_base, per_expert in experts.items():
        prefix = hf_base.removeprefix("model.")
        if hf_base.startswith("model.layers."):
            layer = int(hf_base.split(".")[2])
            if layer >= cfg.num_hidden_layers:
                prefix = f"mtp.{layer - cfg.num_hidden_layers}." + prefix.split(".", 2)[2]
        if f"{prefix}.gate_up_proj" not in expected:
            first = f"{hf_base}.0.gate_proj.weight"
            raise CheckpointError(f"{source}: unexpected tensor(s) {_few([first])}")
        missing = [f"{hf_base}.{j}.{p}.weight" for j in range(E)
                   for p in ("gate_proj", "up_proj", "down_proj") if p not in per_expert.get(j, {})]
        extra = [f"{hf_base}.{j}.*" for j in per_expert if j >= E]
        if missing:
            raise CheckpointError(f"{source}: missing tensor(s) {_few(missing)}")
        if extra:
            raise CheckpointError(f"{source}: unexpected tensor(s) {_few(extra)} "
                                  f"(config has n_routed_experts={E})")
        for j in range(E):
            for p, shape in (("gate_proj", (I, cfg.hidden_size)), ("up_proj", (I, cfg.hidden_size)),
                             ("down_proj", (cfg.hidden_size, I))):
                _check_shape(f"{hf_base}.{j}.{p}.weight", per_expert[j][p].shape,
                             torch.Size(shape), source)
        gate_up = [torch.cat([per_expert[j]["gate_proj"], per_expert[j]["up_proj"]])
                   for j in range(E)]
        out[f"{prefix}.gate_up_proj"] = torch.stack(gate_up)
        out[f"{prefix}.down_proj"] = torch.stack([per_expert[j]["down_proj"] for j in range(E)])
    missing = [_hf_prefix(n, cfg) for n in expected if n not in out]
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {_few(missing)}")
    for name, shape in expected.items():
        _check_shape(_hf_prefix(name, cfg), out[name].shape, shape, source)
    return out


def _check_shape(key: str, got: torch.Size, want: torch.Size, source: str) -> None:
    if got != want:
        raise CheckpointError(f"{source}: tensor '{key}' has shape {tuple(got)}, the config "
                              f"implies {tuple(want)}")


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in sorted(keys)[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------
# save


def save_model(model: Transformer, directory: str | Path, tokenizer: Any = None,
               max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint directory atomically (see atomic_directory)."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer, max_shard_bytes, dtype)
    return Path(directory)


def write_model_files(model: Transformer, directory: Path, tokenizer: Any = None,
                      max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype | None = None) -> None:
    """config.json, safetensors, generation_config.json and the tokenizer files into `directory`."""
    tensors = to_hf_state_dict(model)
    if dtype is not None:  # the correction bias stays fp32, as in every DeepSeek checkpoint
        tensors = {k: v if k.endswith("e_score_correction_bias") else v.to(dtype)
                   for k, v in tensors.items()}
    _write_safetensors(tensors, directory, max_shard_bytes)
    cfg_dict = model.cfg.to_hf_dict()
    dtype_name = str(_weights_dtype(tensors))[6:]  # "torch.bfloat16" -> "bfloat16"
    cfg_dict["torch_dtype"] = cfg_dict["dtype"] = dtype_name
    (directory / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": model.cfg.bos_token_id, "eos_token_id": model.cfg.eos_token_id,
           "do_sample": True, "temperature": 0.6, "top_p": 0.95}  # DeepSeek's advice for R1
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(directory)


def _weights_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype every tensor but the fp32 correction biases shares; float32 if they are mixed."""
    kinds = {t.dtype for k, t in tensors.items() if not k.endswith("e_score_correction_bias")}
    return kinds.pop() if len(kinds) == 1 else torch.float32


def _write_safetensors(tensors: dict[str, torch.Tensor], directory: Path,
                       max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        t = tensors[key]
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(_unshare(shards[0]), directory / SINGLE_NAME, metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(_unshare(shard), directory / name, metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (expert slices, tied or repeated weights)
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


# ---------------------------------------------------------------------------------------------
# load


def _shard_files(directory: Path) -> list[Path]:
    index = directory / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({directory / f for f in weight_map.values()})
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index}: names shard {f.name}, which does not exist")
        return files
    single = directory / SINGLE_NAME
    if single.exists():
        return [single]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise CheckpointError(f"{directory}: only safetensors are loaded (pickle files are never "
                              "read)")
    raise CheckpointError(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}")


def iter_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint directory, shard by shard; corrupt files raise
    CheckpointError."""
    for f in _shard_files(Path(directory)):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as sf:
                for key in sf.keys():
                    yield key, sf.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: corrupt or truncated safetensors file ({e})") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Transformer:
    """Read a checkpoint directory into a Transformer (eval mode); dtype None keeps the one
    saved."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    try:
        cfg = ModelConfig.load(directory / "config.json")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tensors = dict(iter_tensors(directory))
    has_mtp = any(re.match(rf"^model\.layers\.{cfg.num_hidden_layers + k}\.", key)
                  for key in tensors for k in range(cfg.num_nextn_predict_layers))
    if cfg.num_nextn_predict_layers and not has_mtp:
        # transformers saves no MTP weights even where the config names MTP layers: load
        # without them
        cfg = cfg.replace(num_nextn_predict_layers=0)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and cfg.tie_word_embeddings)}
    state = from_hf_state_dict(tensors, cfg, expected, source=str(directory))
    if dtype is None:
        dtype = _weights_dtype(state)
    model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.to(dtype)
    model.load_state_dict(state, strict=True)
    # non-persistent buffers are not in the file: rebuild them
    model.inv_freq = rope_frequencies(cfg)[0].to(device)
    for m in model.moe_layers():
        m.expert_load.zero_()
    return model.eval()
