"""GRPO's objective against hand computations: advantages, clipping on both sides, the k3 KL, both
averaging modes."""

import math

import pytest
import torch

from nanoseek.train.grpo import group_advantages, grpo_loss, k3_kl


def test_group_advantages_by_hand():
    # one group of 4 with rewards 1, 0, 0, 0: mean 0.25, unbiased std sqrt((0.75² + 3·0.25²) / 3) = 0.5
    a = group_advantages(torch.tensor([1.0, 0, 0, 0, 2, 2, 2, 2]), group_size=4, eps=0.0)
    assert a.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])  # equal rewards: no signal
    assert group_advantages(torch.tensor([1.0, 0]), 2, scale=False).tolist() == [0.5, -0.5]  # Dr. GRPO
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)


def inputs():
    """Two completions: A = +1 over 2 tokens (ratios 1.5, 0.9), A = -1 over 3 tokens (ratios 0.5, 1.0, 1.3)."""
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.0, 1.3]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return logp.requires_grad_(), old, torch.tensor([1.0, -1.0]), mask


def test_clipped_objective_both_averaging_modes_by_hand():
    logp, old, adv, mask = inputs()
    # eps_low 0.2, eps_high 0.28 (clip-higher): clipped ratios [1.28, 0.9] and [0.8, 1.0, 1.28]
    # A = +1: min(r, clip(r)) = [1.28, 0.9]          -> token losses [-1.28, -0.9]
    # A = -1: min(-r, -clip(r)) = [-0.8, -1.0, -1.3] -> token losses [0.8, 1.0, 1.3]
    loss, stats = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, level="sequence")
    assert loss.item() == pytest.approx(((-1.28 - 0.9) / 2 + (0.8 + 1.0 + 1.3) / 3) / 2)
    assert stats.clip_high == pytest.approx(1 / 5) and stats.clip_low == pytest.approx(1 / 5)
    assert stats.ratio == pytest.approx((1.5 + 0.9 + 0.5 + 1.0 + 1.3) / 5) and stats.kl == 0
    loss, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, level="token")
    assert loss.item() == pytest.approx((-1.28 - 0.9 + 0.8 + 1.0 + 1.3) / 5)
    # gradients flow only through unclipped tokens: d(-r A)/d logp = -r A
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0, -0.9 / 5, 0, 0, 1.0 / 5, 1.3 / 5])


def test_k3_kl_by_hand_and_in_the_loss():
    logp = torch.tensor([[0.0, 0.0]])
    ref = torch.tensor([[math.log(2), 0.0]])
    assert k3_kl(logp, ref).flatten().tolist() == pytest.approx([2 - math.log(2) - 1, 0.0])
    assert k3_kl(torch.tensor([0.0]), torch.tensor([-1e4])).tolist() == pytest.approx([math.exp(-20) + 20 - 1])
    assert torch.isfinite(k3_kl(torch.tensor([-1e4]), torch.tensor([0.0]))).all()  # clamped, not inf
    adv, mask = torch.tensor([0.0]), torch.ones(1, 2)
    loss, stats = grpo_loss(logp, logp, adv, mask, ref_logp=ref, beta=0.1, level="token")
    assert loss.item() == pytest.approx(0.1 * (1 - math.log(2)) / 2)
    assert stats.kl == pytest.approx((1 - math.log(2)) / 2)


def test_bad_arguments():
    logp, old, adv, mask = inputs()
    with pytest.raises(ValueError, match="level must be one of sequence, token"):
        grpo_loss(logp, old, adv, mask, level="batch")
    with pytest.raises(ValueError, match="needs the reference"):
        grpo_loss(logp, old, adv, mask, beta=0.01)
