"""Verifiable tasks and R1's rule-based rewards: what GRPO, rejection sampling and evaluation score.

- answers.py: a completion's final answer (`<answer>`, `\\boxed{}`, last number), checked against a
  reference as math (math-verify);
- task.py: `Task` (prompts with references, a scorer, how its answers compare) and `TaskError`;
- gym.py: reasoning-gym datasets as tasks, and as chat documents with worked reasoning traces;
- load.py: `load_task(spec)`: a reasoning-gym dataset, a benchmark JSONL file or a user's Python
  file;
- rewards.py: R1's rewards (accuracy, format, language consistency, overlong) and the two prompt
  templates (chat, r1-zero).
"""
