"""Training: pretraining now; SFT, GRPO and distillation build on the same loop."""
