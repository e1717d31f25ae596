"""Verifiable tasks and R1's rule-based rewards: what GRPO, rejection sampling and evaluation score."""
