"""The DeepSeek-V3 model: MLA + DeepSeekMoE + MTP, its config, and how to count it."""

from nanoseek.model.config import PRESETS, ConfigError, ModelConfig, get_preset, resolve_config

__all__ = ["PRESETS", "ConfigError", "ModelConfig", "get_preset", "resolve_config"]
