"""The reward parts on a table of completions, and their weighted total."""

import pytest

from nanoseek.tasks.rewards import (
    R1_ZERO_TEMPLATE,
    RewardConfig,
    format_reward,
    language_consistency,
    overlong_penalty,
    render_prompt,
    reward,
    split,
)

CHAT = [  # completion (the prompt ended with "<think>\n"), well-formed?
    ("2 + 3 = 5\n</think>\n\n5", True),
    ("2 + 3 = 5</think>", False),  # no answer
    ("</think>\n\n5", False),  # empty reasoning
    ("a</think>b</think>c", False),  # two closings
    ("a\n<think>b</think>c", False),  # a second think block
    ("just an answer", False),  # no think block at all
    ("a</think><answer>5</answer>", False),  # answer tags belong to the r1-zero template
]
R1_ZERO = [
    ("<think> 2 + 3 = 5 </think> <answer> 5 </answer>", True),
    ("<think>a</think>\n<answer>5</answer>\n", True),
    ("<think>a</think> 5", False),  # no answer tags
    ("<think></think> <answer>5</answer>", False),  # empty think
    ("<think>a</think> <answer>5</answer> extra text", False),  # text after the answer
    ("<think>a <think>b</think> <answer>5</answer>", False),  # nested think
    ("<answer>5</answer>", False),
]


@pytest.mark.parametrize("completion,ok", CHAT)
def test_chat_format(completion, ok):
    assert format_reward(completion, "chat") == float(ok)


@pytest.mark.parametrize("completion,ok", R1_ZERO)
def test_r1_zero_format(completion, ok):
    assert format_reward(completion, "r1-zero") == float(ok)


# a converted model's chat whose template does not open the think block: R1's format, the model
# writing `<think>` itself as text
OPENED_BY_MODEL = [
    ("<think>\n2 + 3 = 5\n</think>\n\n5", True),
    ("\n <think>a</think>b", True),  # whitespace before the tag
    ("2 + 3 = 5\n</think>\n\n5", False),  # the block was never opened
    ("I think 5. <think>a</think>b", False),  # text before the block
    ("<think>a<think>b</think>c", False),  # opened twice
    ("<think></think>\n\n5", False),  # empty reasoning
    ("<think>a</think>", False),  # no answer
]


@pytest.mark.parametrize("completion,ok", OPENED_BY_MODEL)
def test_chat_format_when_the_model_opens_the_block(completion, ok):
    assert format_reward(completion, "chat", opened=False) == float(ok)
    total = reward(completion, 0.0, RewardConfig(format=1.0), opened=False).total
    assert total == float(ok)
    # after a prompt that opened it, any <think> in the completion is a second block
    if "<think>" in completion:
        assert format_reward(completion, "chat") == 0.0


def test_rollout_prompts_in_the_models_own_format(tiny_chat_dir, chatml_student_dir):
    """R1's turn for nanoseek's own tokenizer (the same text as without it); a converted model's
    own template (and its BOS, none here, before R1-Zero's text)."""
    from nanoseek.tokenizer import BOS, Tokenizer, render_chat

    q = "What is 2 + 3?"
    own = Tokenizer.load(tiny_chat_dir)
    for template in ("chat", "r1-zero"):
        assert render_prompt(q, template, own) == render_prompt(q, template)
    assert render_prompt(q, "chat") == render_chat([{"role": "user", "content": q}])
    assert render_prompt(q, "r1-zero").startswith(BOS)
    tok = Tokenizer.load(chatml_student_dir)
    assert render_prompt(q, "chat", tok) == (
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?"
        "<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(q, "r1-zero", tok) == R1_ZERO_TEMPLATE.format(prompt=q)


def test_split_gives_reasoning_and_answer():
    assert split("think hard\n</think>\n\nfive", "chat") == ("think hard", "five")
    assert split("<think> a </think> <answer> b </answer>", "r1-zero") == ("a", "b")
    assert "User: What is 2+2?. Assistant:" in R1_ZERO_TEMPLATE.format(prompt="What is 2+2?")


def test_language_consistency_counts_letters_in_the_prompts_script():
    assert language_consistency("first add, then carry", "What is 2 + 3?") == 1.0
    assert language_consistency("abcd 数学", "What is 2 + 3?") == pytest.approx(4 / 6)
    assert language_consistency("先加后进位", "二加三是多少") == 1.0
    # no letters in the reasoning: nothing drifted
    assert language_consistency("123 + 4", "What?") == 1.0


@pytest.mark.parametrize("n,expect", [(0, 0.0), (80, 0.0), (90, -0.5), (100, -1.0), (101, -1.0)])
def test_overlong_penalty_ramps_over_the_buffer(n, expect):
    assert overlong_penalty(n, max_tokens=100, buffer=20) == pytest.approx(expect)


def test_total_weights_each_part_and_keeps_them_apart():
    cfg = RewardConfig(format=0.1, language=0.2, overlong=0.5, max_tokens=100, overlong_buffer=20)
    r = reward("add\n</think>\n\n5", 1.0, cfg, prompt="What is 2 + 3?", n_tokens=90)
    assert (r.accuracy, r.format, r.language, r.overlong) == (1.0, 1.0, 1.0, -0.5)
    assert r.total == pytest.approx(1.0 + 0.1 + 0.2 - 0.25)
    # defaults: accuracy + a small format term, nothing else
    bare = reward("5", 0.0, RewardConfig())
    assert bare.to_dict() == {"accuracy": 0.0, "format": 0.0, "language": 0.0, "overlong": 0.0,
                              "total": 0.0}


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="template must be one of chat, r1-zero"):
        RewardConfig(template="zero")
    with pytest.raises(ValueError, match="overlong_buffer <= max_tokens"):
        RewardConfig(overlong=1, max_tokens=10, overlong_buffer=20)
