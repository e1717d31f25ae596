"""The sampler on its own (engine-level sampling is in test_engine.py)."""

import pytest
import torch

from nanoseek.infer.sampling import SamplingParams, filter_probs, sample, uniform


def test_sampling_follows_the_distribution():
    """Inverting the cumulative distribution at a uniform draw picks token i with probability
    p_i."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    params = [SamplingParams(temperature=1.0)]
    draws = torch.tensor([int(sample(probs.log()[None], params, [uniform(0, i)])[0])
                          for i in range(4000)])
    freq = torch.bincount(draws, minlength=4) / 4000
    assert (freq - probs).abs().max() < 0.03, freq
    # top_p 0.7 keeps the first two tokens only, renormalised
    params = [SamplingParams(top_p=0.7)]
    draws = torch.tensor([int(sample(probs.log()[None], params, [uniform(1, i)])[0])
                          for i in range(2000)])
    freq = torch.bincount(draws, minlength=4) / 2000
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.5 / 0.8) < 0.04


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("top_p", 1.5), ("top_k", -1), ("min_p", 2.0),
    ("repetition_penalty", 0.0), ("presence_penalty", 3.0), ("n", 0),
    ("max_tokens", 0), ("top_logprobs", 21), ("stop", ["ok", ""])])
def test_out_of_range_parameters_are_named(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field} must be"):
        SamplingParams(**{field: value})


def test_a_single_stop_string_is_one_stop():
    assert SamplingParams(stop="###").stop == ("###",)


def test_top_k_and_min_p_keep_what_they_should():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).log_softmax(-1)
    p = filter_probs(logits, [SamplingParams(top_k=2)])
    assert (p[0, :2] > 0).all() and (p[0, 2:] == 0).all()
    # e^-1 = 0.37 of the top survives, e^-2 does not
    p = filter_probs(logits, [SamplingParams(min_p=0.3)])
    assert (p[0, :2] > 0).all() and (p[0, 2:] == 0).all()


@pytest.mark.parametrize("field, value, allowed", [
    ("top_k", 2.5, "an integer"), ("seed", "x", "an integer"), ("n", True, "an integer"),
    ("temperature", "0.5", "a number"), ("logprobs", 1, "true or false"),
    ("stop_token_ids", [1.5], "token ids")])
def test_wrong_types_are_refused_before_any_work(field, value, allowed):
    with pytest.raises(ValueError, match=f"SamplingParams.{field} must be .*{allowed}"):
        SamplingParams(**{field: value})


def test_top_p_one_keeps_every_token_beside_a_top_p_row():
    """A row with top_p = 1 next to one with top_p < 1 keeps its whole distribution (no rounding
    losses)."""
    logits = torch.randn(2, 50_000, generator=torch.Generator().manual_seed(0)) * 4
    p = filter_probs(logits, [SamplingParams(top_p=1.0), SamplingParams(top_p=0.5)])
    assert (p[0] > 0).all() and (p[1] == 0).any()


def test_the_uniform_stream_is_uniform_and_independent_of_everything_but_seed_and_position():
    u = torch.tensor([uniform(7, i) for i in range(20_000)])
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    hist = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert (hist - 0.1).abs().max() < 0.01
    # neighbouring seeds and positions are not correlated
    v = torch.tensor([uniform(8, i) for i in range(20_000)])
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1]) < 0.03
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]) < 0.03
    assert uniform(7, 3) == uniform(7, 3) != uniform(7, 4)


def test_a_zero_probability_token_is_never_drawn():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    drawn = {int(sample(logits, [SamplingParams()], [u])[0])
             for u in (0.0, 0.25, 0.4999, 0.5, 0.75, 0.999999)}
    assert drawn == {0, 2}
