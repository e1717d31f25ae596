"""The DeepSeek-V3 model.

- config.py: `ModelConfig` (Hugging Face's field names), the presets, config.json;
- model.py: MLA with its latent KV cache, DeepSeekMoE with auxiliary-loss-free balancing, MTP;
- counting.py: parameters, FLOPs per token and KV-cache bytes, counted from a config.
"""

from nanoseek.model.config import PRESETS, ConfigError, ModelConfig, get_preset, resolve_config

__all__ = ["PRESETS", "ConfigError", "ModelConfig", "get_preset", "resolve_config"]
