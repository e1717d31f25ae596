"""GRPO (DeepSeekMath §4.1, R1 §2.2.1): its objective, with the variants that matter at small scale.

For a group of G completions of one prompt with rewards r_1..r_G, every token of completion i gets the
advantage A_i = (r_i - mean r) / (std r + eps) (Dr. GRPO: without the division). The loss maximises

    min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) - beta * KL,   rho = pi_theta / pi_old per token,

with KL per token by the k3 estimator pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (unbiased, >= 0), its
log-ratio clamped to +-20 as verl does, so one wild token cannot make it inf. A separate, higher eps_high
is DAPO's clip-higher. Averaging: `sequence` (GRPO: each completion's token mean, then the mean over
completions) or `token` (DAPO: all tokens of the batch weigh the same, so long answers are not diluted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LEVELS = ("sequence", "token")
KL_CLAMP = 20.0


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """(B*G,) rewards, groups contiguous -> (B*G,) advantages; a group whose rewards are all equal gets 0."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    a = r - r.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        std = r.std(dim=1, keepdim=True, unbiased=True)
        a = a / torch.where(std > 0, std + eps, 1.0)  # equal rewards: 0, never 0/0
    return a.view(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate: exp(x) - x - 1 with x = log pi_ref - log pi_theta."""
    x = (ref_logp - logp).clamp(-KL_CLAMP, KL_CLAMP)
    return x.exp() - x - 1


@dataclass
class LossStats:
    loss: float
    policy_loss: float
    kl: float  # mean per-token k3 KL (0 when beta is 0 and no reference is kept)
    clip_low: float  # fraction of tokens whose ratio was clipped below (negative advantage)
    clip_high: float  # ... and above (positive advantage)
    ratio: float  # mean pi_theta / pi_old


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, ref_logp: Tensor | None = None,
              beta: float = 0.0, eps_low: float = 0.2, eps_high: float = 0.2,
              level: str = "sequence") -> tuple[Tensor, LossStats]:
    """The loss to minimise. logp, old_logp, ref_logp, mask: (N, T) per completion token (mask 1 on the
    completion's tokens, 0 on padding); advantages: (N,)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if beta and ref_logp is None:
        raise ValueError("beta > 0 needs the reference model's log-probs (ref_logp)")
    mask = mask.to(logp.dtype)
    ratio = (logp - old_logp).exp()
    adv = advantages[:, None].to(logp.dtype)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl

    def average(x: Tensor) -> Tensor:
        if level == "token":
            return (x * mask).sum() / mask.sum().clamp(min=1)
        return ((x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()

    loss = average(per_token)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = LossStats(
            loss=loss.item(), policy_loss=average(-torch.min(ratio * adv, clipped * adv)).item(),
            kl=((kl * mask).sum() / n).item(),
            clip_low=(((ratio < 1 - eps_low) & (adv < 0)) * mask).sum().div(n).item(),
            clip_high=(((ratio > 1 + eps_high) & (adv > 0)) * mask).sum().div(n).item(),
            ratio=((ratio * mask).sum() / n).item())
    return loss, stats
