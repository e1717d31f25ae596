"""nanoseek: DeepSeek-V3 / R1 end to end in readable PyTorch."""

__version__ = "0.1.0"
