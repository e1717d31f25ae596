"""R1's evaluation numbers from k sampled answers per prompt.

R1's convention: sample k answers per prompt at temperature 0.6, top-p 0.95, rather than decode
greedily (greedy decoding repeats itself on reasoning models), and report
- pass@1: the share of correct samples among the k, averaged over prompts;
- cons@k: whether the majority answer of the k samples is correct (answers that are equal as math
  vote together);
- pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. (2021), for n samples,
  c correct.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k)/C(n, k) as a product: no huge binomials
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> str | None:
    """The answer most samples agree on (`same` decides agreement, e.g. equal as math); ties go to
    the answer seen first; None when no sample gave an answer."""
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if same(a, g[0]):
                g.append(a)
                break
        else:
            groups.append([a])
    return max(groups, key=len)[0] if groups else None  # max keeps the first of equal lengths
