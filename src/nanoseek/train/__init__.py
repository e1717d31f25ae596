"""Training: pretraining (pretrain.py; SFT and distillation are the same loop on chats,
sft.py), GRPO (grpo.py), rejection sampling for distillation data (rejection.py), on one runtime
(runtime.py: torchrun, optimizer, stop signals, checkpoints, the run directory) and one telemetry
(telemetry.py)."""
