"""ModelConfig: the hyper-parameters of a DeepSeek-V3 model, under Hugging Face's field names, and
of the dense students R1 was distilled into (Llama, Qwen2).

A config.json written from this dataclass is a valid `deepseek_v3` config (transformers, vLLM and
SGLang read it), and the config.json of a released DeepSeek-V3 / R1 checkpoint reads back into it.
model_type `llama` or `qwen2` makes it a dense grouped-query-attention model of that family instead
(Llama 3, SmolLM2, R1-Distill-Llama; Qwen2.5, R1-Distill-Qwen), whose config.json is that family's.
The few training knobs transformers has no field for (MTP loss weight, balance-loss alpha, bias
update speed) ride along as extra keys, which every reader ignores.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoseek.errors import UserError


class ConfigError(UserError):
    """A config that is not a valid deepseek_v3, llama or qwen2 config; the message names the
    field."""


# the families: DeepSeek-V3 (MLA + MoE + MTP), and R1's dense students (GQA + SwiGLU)
FAMILIES = {"deepseek_v3": "DeepseekV3ForCausalLM", "llama": "LlamaForCausalLM",
            "qwen2": "Qwen2ForCausalLM"}
# what a dense family's config.json holds (besides model_type, architectures, dtype)
_DENSE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                 "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
                 "initializer_range", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                 "pad_token_id", "attention_bias")


@dataclass
class ModelConfig:
    model_type: str = "deepseek_v3"  # or llama / qwen2: a dense GQA student
    # sizes
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense FFN width (first_k_dense_replace layers)
    moe_intermediate_size: int = 2048  # width of one expert
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int = 128  # MLA has no GQA; kept equal to the heads for transformers
    head_dim: int | None = None  # llama / qwen2: per-head width (None: hidden / heads)
    # MLA
    q_lora_rank: int | None = 1536  # None: a single q_proj (V2-Lite)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    attention_bias: bool = False
    # DeepSeekMoE
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    first_k_dense_replace: int = 3
    # MTP
    num_nextn_predict_layers: int = 1
    # positions
    max_position_embeddings: int = 163840
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"type": "yarn", "factor": 40, ...} or None
    rope_interleave: bool = True
    # misc
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.006  # V3's init std
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = None
    # training knobs (not read by transformers)
    mtp_loss_weight: float = 0.3  # lambda; V3 used 0.3 for the first 10T tokens, then 0.1
    aux_loss_alpha: float = 1e-4  # alpha of the sequence-wise balance loss
    bias_update_speed: float = 1e-3  # gamma of the aux-loss-free bias update

    def __post_init__(self) -> None:
        if self.model_type in FAMILIES and not self.is_mla:
            # a dense family has no latent, experts or MTP: those fields take their neutral values
            # (the defaults are V3's), so the rest of nanoseek reads one config type
            self.n_routed_experts, self.n_shared_experts = 0, 0
            self.first_k_dense_replace = self.num_hidden_layers
            self.num_nextn_predict_layers, self.q_lora_rank = 0, None
            self.rope_interleave = False  # Llama and Qwen2 rotate the two halves of a head
            if self.head_dim is None and self.num_attention_heads:
                self.head_dim = self.hidden_size // self.num_attention_heads
            self.v_head_dim = self.head_dim  # what the FLOP and cache counts read
        self.validate()

    # ---- derived sizes (the paper's names) ----
    @property
    def is_mla(self) -> bool:
        """DeepSeek's latent attention (else grouped-query attention)."""
        return self.model_type == "deepseek_v3"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def rope_dim(self) -> int:
        """The rotated width of a query or key head: MLA's decoupled rope part, a GQA head whole."""
        return self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def kv_cache_dim(self) -> int:
        """Numbers a cache holds per token and layer: MLA's latent c_kv and k_pe (576 for V3), or
        GQA's keys and values of every KV head."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_key_value_heads * self.head_dim

    @property
    def n_moe_layers(self) -> int:
        return max(0, self.num_hidden_layers - self.first_k_dense_replace)

    def is_moe_layer(self, layer_id: int) -> bool:
        # MTP blocks sit at index num_hidden_layers and follow the same rule (they are MoE in V3)
        return self.n_routed_experts > 0 and layer_id >= self.first_k_dense_replace

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim^-0.5, times mscale^2 when YaRN is on (V3: 0.1352 for head dim 192)."""
        scale = self.qk_head_dim**-0.5
        rs = self.rope_scaling
        if self.is_mla and rs is not None and rs.get("mscale_all_dim"):
            factor = float(rs["factor"])
            if factor > 1:
                mscale = 0.1 * float(rs["mscale_all_dim"]) * math.log(factor) + 1.0
                scale *= mscale * mscale
        return scale

    # ---- validation ----
    def validate(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config field '{name}': {msg} (got {getattr(self, name)!r})")

        need(self.model_type in FAMILIES, "model_type", f"must be one of {', '.join(FAMILIES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
                 "must be a positive integer")
        for name in ("qk_nope_head_dim", "n_routed_experts", "n_shared_experts",
                     "first_k_dense_replace", "num_nextn_predict_layers", "intermediate_size",
                     "moe_intermediate_size"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name,
                 "must be an integer >= 0")
        need(self.q_lora_rank is None
             or (isinstance(self.q_lora_rank, int) and self.q_lora_rank > 0),
             "q_lora_rank", "must be a positive integer or null")
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
             "must be even (RoPE rotates pairs)")
        if self.is_mla:
            need(self.num_key_value_heads == self.num_attention_heads, "num_key_value_heads",
                 f"MLA has one latent shared by all heads; must equal num_attention_heads "
                 f"({self.num_attention_heads})")
        else:
            need(isinstance(self.num_key_value_heads, int) and self.num_key_value_heads > 0
                 and self.num_attention_heads % self.num_key_value_heads == 0,
                 "num_key_value_heads",
                 f"must divide num_attention_heads ({self.num_attention_heads})")
            need(isinstance(self.head_dim, int) and self.head_dim > 0 and self.head_dim % 2 == 0,
                 "head_dim", "must be a positive even integer (RoPE rotates pairs)")
            need(self.intermediate_size > 0, "intermediate_size", "must be positive")
        need(self.hidden_act == "silu", "hidden_act", "only 'silu' (SwiGLU experts) is supported")
        need(self.scoring_func in ("sigmoid", "softmax"), "scoring_func",
             "must be 'sigmoid' (V3) or 'softmax' (V2)")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        need(self.initializer_range > 0, "initializer_range", "must be > 0")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.mtp_loss_weight >= 0, "mtp_loss_weight", "must be >= 0")
        need(self.aux_loss_alpha >= 0, "aux_loss_alpha", "must be >= 0")
        need(self.bias_update_speed >= 0, "bias_update_speed", "must be >= 0")
        if self.first_k_dense_replace > 0 or self.n_routed_experts == 0:
            need(self.intermediate_size > 0, "intermediate_size",
                 "dense layers need a positive width")
        need(self.n_routed_experts > 0 or self.first_k_dense_replace >= self.num_hidden_layers,
             "first_k_dense_replace",
             "with n_routed_experts 0 every layer is dense: set it to num_hidden_layers")
        if self.n_routed_experts > 0 and self.first_k_dense_replace <= self.num_hidden_layers:
            need(self.moe_intermediate_size > 0, "moe_intermediate_size",
                 "must be positive with routed experts")
            has_moe = (self.first_k_dense_replace < self.num_hidden_layers
                       or self.num_nextn_predict_layers > 0)  # MTP blocks follow the MoE rule
            # both are row strides of the experts' grouped GEMM (torch.nn.functional.grouped_mm),
            # which takes strides of whole 16-byte units: 8 bf16 elements (4 fp32 ones)
            for name in ("hidden_size", "moe_intermediate_size") if has_moe else ():
                need(getattr(self, name) % 8 == 0, name, "must be a multiple of 8 with routed "
                     "experts (their grouped GEMM takes rows of whole 16-byte units)")
            need(isinstance(self.n_group, int) and self.n_group >= 1, "n_group",
                 "must be an integer >= 1")
            need(self.n_routed_experts % self.n_group == 0, "n_routed_experts",
                 f"must be divisible by n_group ({self.n_group})")
            need(isinstance(self.topk_group, int) and 1 <= self.topk_group <= self.n_group,
                 "topk_group", f"must be in [1, n_group={self.n_group}]")
            per_group = self.n_routed_experts // self.n_group
            need(self.n_group == 1 or per_group >= 2, "n_group",
                 "groups are scored by their top-2 experts, so each needs at least 2 experts")
            need(1 <= self.num_experts_per_tok <= self.topk_group * per_group,
                 "num_experts_per_tok",
                 "must be in [1, topk_group * experts per group = "
                 f"{self.topk_group * per_group}]")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            need(isinstance(rs, dict), "rope_scaling", "must be an object or null")
            kind = rs.get("type", rs.get("rope_type"))
            kinds = ("yarn", "default") if self.is_mla else ("llama3", "default")
            need(kind in kinds, "rope_scaling",
                 f"only {kinds[0]!r} rope scaling is supported for {self.model_type}")
            if kind == "llama3":
                for key in ("factor", "low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings"):
                    if key not in rs:
                        raise ConfigError(f"config field 'rope_scaling.{key}': required for "
                                          "llama3")
            if kind == "yarn":
                for key in ("factor", "original_max_position_embeddings"):
                    if key not in rs:
                        raise ConfigError(f"config field 'rope_scaling.{key}': required for yarn")
                if not float(rs["factor"]) >= 1:
                    raise ConfigError(f"config field 'rope_scaling.factor': must be >= 1 "
                                      f"(got {rs['factor']})")

    # ---- config.json ----
    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json dict: HF field names plus the model_type/architectures identifying it."""
        if not self.is_mla:
            return self._dense_hf_dict()
        d = dataclasses.asdict(self)
        d.pop("head_dim")  # transformers' deepseek_v3 head_dim is the rotary dim, written below
        d["model_type"] = "deepseek_v3"
        d["architectures"] = ["DeepseekV3ForCausalLM"]
        d["num_mtp_layers"] = self.num_nextn_predict_layers  # transformers >= 5 name
        d["head_dim"] = self.qk_rope_head_dim  # what transformers writes (rotary dim)
        d["qk_head_dim"] = self.qk_head_dim
        d["torch_dtype"] = d["dtype"] = "float32"
        # transformers >= 5 reads rope_parameters; vLLM, SGLang and transformers 4.x read
        # rope_theta + rope_scaling: write both so every reader sees the same positions.
        rp: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        kind = None
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
        if kind == "yarn":
            rs = {k: v for k, v in self.rope_scaling.items() if k not in ("type", "rope_type")}
            d["rope_scaling"] = {"type": "yarn", **rs}
            rp.update(rs, rope_type="yarn")
        else:
            d["rope_scaling"] = None
        d["rope_parameters"] = rp
        return d

    def _dense_hf_dict(self) -> dict[str, Any]:
        """A llama / qwen2 config.json: the family's fields only."""
        d = {k: getattr(self, k) for k in _DENSE_FIELDS}
        d["rope_scaling"] = (None if self.rope_scaling is None else
                             {"rope_type": self.rope_scaling.get("type", "llama3"),
                              **{k: v for k, v in self.rope_scaling.items() if k != "type"}})
        d.update(model_type=self.model_type, architectures=[FAMILIES[self.model_type]],
                 mlp_bias=False, torch_dtype="float32", dtype="float32")
        rp: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if d["rope_scaling"] is not None:
            rp.update(d["rope_scaling"])
        d["rope_parameters"] = rp  # transformers >= 5 reads this, older readers the two above
        if self.model_type == "qwen2":
            d.pop("attention_bias")  # Qwen2 always has q/k/v biases and no o bias
            d.update(use_sliding_window=False, sliding_window=None,
                     max_window_layers=self.num_hidden_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> ModelConfig:
        family = d.get("model_type")
        if family not in FAMILIES:
            raise ConfigError(f"{source}: model_type must be one of {', '.join(FAMILIES)} "
                              f"(got {family!r})")
        d = dict(d)
        if family == "deepseek_v3":
            d.pop("head_dim", None)  # the rotary dim there, which qk_rope_head_dim already says
        else:  # what nanoseek's dense blocks cannot run is refused, never ignored
            for key, bad in (("mlp_bias", True), ("use_sliding_window", True)):
                if d.get(key) == bad:
                    raise ConfigError(f"{source}: {key} {bad} is not supported")
            if d.get("hidden_act", "silu") != "silu":
                raise ConfigError(f"{source}: hidden_act must be 'silu' "
                                  f"(got {d.get('hidden_act')!r})")
            for key in ("n_routed_experts", "num_nextn_predict_layers", "q_lora_rank"):
                d.pop(key, None)  # not fields of these families
        # transformers >= 5 folds rope_theta and rope_scaling into rope_parameters
        rp = d.pop("rope_parameters", None)
        if isinstance(rp, dict):
            d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
            if rp.get("rope_type", "default") != "default" and not d.get("rope_scaling"):
                rest = {k: v for k, v in rp.items() if k not in ("rope_type", "rope_theta")}
                d["rope_scaling"] = {"type": rp["rope_type"], **rest}
        if isinstance(d.get("rope_scaling"), dict):
            rs = dict(d["rope_scaling"])
            kind = rs.pop("rope_type", None) or rs.pop("type", None) or "default"
            d["rope_scaling"] = None if kind == "default" else {"type": kind, **rs}
        if "num_mtp_layers" in d and "num_nextn_predict_layers" not in d:
            d["num_nextn_predict_layers"] = d["num_mtp_layers"]
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = d["eos_token_id"][0] if d["eos_token_id"] else None
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        # keys V3 released configs carry that a None in the file means "the default"
        for k in ("n_group", "topk_group", "num_experts_per_tok", "first_k_dense_replace",
                  "n_shared_experts", "n_routed_experts", "num_key_value_heads", "v_head_dim"):
            if k in kwargs and kwargs[k] is None:
                if k == "num_key_value_heads":
                    kwargs[k] = kwargs.get("num_attention_heads", cls.num_attention_heads)
                elif k in ("n_group", "topk_group"):
                    kwargs[k] = 1
                elif k in ("n_shared_experts", "n_routed_experts", "first_k_dense_replace"):
                    kwargs[k] = 0
                else:
                    kwargs.pop(k)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except TypeError as e:  # a field of the wrong type that the checks above did not catch
            raise ConfigError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno} column {e.colno}: "
                              f"invalid JSON ({e.msg})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: must hold a JSON object")
        return cls.from_dict(d, source=str(path))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated); a key that is no field is refused, with the
        fields it may be a misspelling of."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise ConfigError(f"config field '{key}': no such field{hint}")
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Presets. The small ones are nanoseek's own; the last two are the published shapes, for
# counting and cost estimates only (never instantiated in tests).

_YARN_V3 = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}

PRESETS: dict[str, ModelConfig] = {}


def _preset(name: str, **kw: Any) -> None:
    PRESETS[name] = ModelConfig(**kw)


# tests: every mechanism present (q LoRA, YaRN, groups, shared experts, dense + MoE layers, MTP),
# < 1M params
_preset("tiny",
        vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
        first_k_dense_replace=1, num_nextn_predict_layers=1,
        max_position_embeddings=1024,
        rope_scaling={**_YARN_V3, "factor": 4.0, "original_max_position_embeddings": 256})
# trains on 2 CPU cores in minutes
_preset("cpu-small",
        vocab_size=4096, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_nextn_predict_layers=1,
        max_position_embeddings=2048, rope_scaling=None)
# one GPU, hours: ~110M active of 293M total parameters
_preset("gpu-100m",
        vocab_size=32768, hidden_size=768, intermediate_size=2048, moe_intermediate_size=256,
        num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
        q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        n_routed_experts=32, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_nextn_predict_layers=1,
        max_position_embeddings=4096, rope_scaling=None)
# DeepSeek-V2-Lite (15.7B total, 2.4B active without the embedding): softmax routing, no q LoRA,
# no MTP
_preset("deepseek-v2-lite",
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16,
        q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1,
        routed_scaling_factor=1.0, norm_topk_prob=False,
        scoring_func="softmax", topk_method="greedy",
        first_k_dense_replace=1, num_nextn_predict_layers=0,
        max_position_embeddings=163840, initializer_range=0.02,
        bos_token_id=100000, eos_token_id=100001,
        rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                      "beta_fast": 32.0, "beta_slow": 1.0,
                      "mscale": 0.707, "mscale_all_dim": 0.707})
# DeepSeek-V3 / R1 (671B total, 37B active, + an 11.6B MTP module; 14B with its embedding and
# head copies)
_preset("deepseek-v3", rope_scaling=dict(_YARN_V3))
# R1's students (their published config.json): Qwen2.5-Math-1.5B and Llama-3.1-8B, for counting
_preset("r1-distill-qwen-1.5b", model_type="qwen2",
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151643, initializer_range=0.02)
_preset("r1-distill-llama-8b", model_type="llama",
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001, initializer_range=0.02)


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def resolve_config(spec: str) -> ModelConfig:
    """A preset name, a config.json path, or a checkpoint directory -> ModelConfig."""
    if spec in PRESETS:
        return get_preset(spec)
    p = Path(spec)
    if p.is_dir() or p.suffix == ".json" or p.exists():
        return ModelConfig.load(p)
    raise ConfigError(f"{spec!r} is neither a preset ({', '.join(PRESETS)}) "
                      "nor a config.json or checkpoint directory")


__all__ = ["ConfigError", "ModelConfig", "PRESETS", "get_preset", "resolve_config"]
