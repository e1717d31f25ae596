"""Constrained decoding: the tiny model's answers are JSON of the schema, every time (greedy and
sampled, thinking or not, batched beside free rows, speculating or not), and what a grammar does
not touch is unchanged."""

import json

import pytest

from nanoseek.checkpoint import load_model
from nanoseek.infer.engine import Engine
from nanoseek.infer.grammar import GrammarError, close_reasoning, json_grammar
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tokenizer import Tokenizer, render_chat

SUM = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0,
                                                   "maximum": 999},
                                        "sure": {"type": "boolean"}},
       "required": ["answer", "sure"], "additionalProperties": False}


@pytest.fixture(scope="module")
def chat(tiny_chat_dir):
    return load_model(tiny_chat_dir), Tokenizer.load(tiny_chat_dir)


def engine(chat, **kw):
    model, tok = chat
    return Engine(model, tok, max_seq_len=256, **kw)


def ask(q, thinking):
    return render_chat([{"role": "user", "content": f"Calculate {q}. Answer in JSON."}],
                       thinking=thinking)


def check(answer: str) -> None:
    value = json.loads(answer)
    assert set(value) == {"answer", "sure"} and isinstance(value["sure"], bool), value
    assert isinstance(value["answer"], int) and 0 <= value["answer"] <= 999, value


def test_answers_are_json_of_the_schema_every_time(chat):
    grammar = json_grammar(SUM)
    prompts = [ask(q, thinking) for q in ("12 + 7", "40 - 3", "8 + 8")
               for thinking in (False, True)]
    greedy = {}
    for spec in (False, True):
        e = engine(chat, max_batch=8, speculative=spec)
        greedy[spec] = e.generate(prompts, SamplingParams(max_tokens=120, temperature=0,
                                                          grammar=grammar))
        sampled = e.generate(prompts, SamplingParams(max_tokens=120, temperature=1.0, seed=7, n=2,
                                                     grammar=grammar))
        for c in greedy[spec] + sampled:
            assert c.finish_reason == "stop", (c.reasoning_content, c.content)
            check(c.content)
    # speculation drafts under the same grammar: the same tokens
    assert [c.token_ids for c in greedy[True]] == [c.token_ids for c in greedy[False]]


def test_a_held_sample_about_to_stop_in_its_reasoning_closes_it():
    """EOS inside the reasoning would leave no answer to hold: its weight goes to </think>, and
    so does that of a foreign model's other stop tokens."""
    import torch

    logits = torch.tensor([[0.0, 3.0, 0.0, 1.0], [0.0, 3.0, 0.0, 1.0]])
    for stops in ([1], [0, 1]):
        out = close_reasoning(logits, [0], stop_ids=stops, think_end_id=3)
        assert (out[0, stops] == float("-inf")).all() and out[0].argmax() == 3
        assert torch.isclose(out[0].exp().sum(), logits[0].exp().sum())  # the same mass, moved
        assert out[0, 2] == 0.0
    assert torch.equal(out[1], logits[1]) and torch.equal(logits[0], torch.tensor(
        [0.0, 3.0, 0.0, 1.0]))


def test_a_free_row_beside_held_ones_is_unchanged(chat):
    prompts = [ask("12 + 7", True)] * 3
    free = SamplingParams(max_tokens=40, temperature=0)
    alone = engine(chat).generate(prompts[:1], free)[0]
    held = SamplingParams(max_tokens=40, temperature=0, grammar=json_grammar(SUM))
    mixed = engine(chat, max_batch=3).generate(prompts, [held, free, held])
    assert mixed[1].token_ids == alone.token_ids
    # the reasoning is free: held rows reason as the free one does, up to </think>
    think_end = chat[1].think_end_id
    upto = alone.token_ids.index(think_end) + 1
    assert mixed[0].token_ids[:upto] == alone.token_ids[:upto]


def test_any_object_and_bad_schemas(chat):
    """Any object: the tiny model, which never saw JSON, writes one long key, so only a bounded
    schema can promise a complete object within a token budget; what it writes is the start of an
    object all the same."""
    e = engine(chat)
    c = e.generate([ask("2 + 2", False)], SamplingParams(max_tokens=40, temperature=0,
                                                         grammar=json_grammar()))[0]
    assert c.content.lstrip().startswith('{"')  # (json.loads allows the blank line before)
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.content), dict)
    with pytest.raises(GrammarError, match="does not compile"):
        e.generate([ask("2 + 2", False)], SamplingParams(grammar=json_grammar({"type": "bogus"})))


def test_the_shipped_model_answers_json_of_the_schema_every_time():
    """The model nanoseek ships, asked its own kinds of questions in JSON mode, greedy and sampled,
    with DeepThink on and off: every answer parses and fits the schema (max_tokens leaves room for
    its longest reasoning)."""
    from nanoseek.infer.bundled import BUNDLED

    e = Engine.from_checkpoint(str(BUNDLED), max_seq_len=1024, max_batch=16, speculative=False)
    questions = ["What is 23 + 45?", "Which is bigger, 58 or 85?", "How many o's are in balloon?",
                 "Who are you?"]
    prompts = [render_chat([{"role": "user", "content": q}], thinking=t)
               for q in questions for t in (False, True)]
    grammar = json_grammar(SUM)
    for params in (SamplingParams(max_tokens=700, temperature=0, grammar=grammar),
                   SamplingParams(max_tokens=700, temperature=0.6, seed=1, n=2, grammar=grammar)):
        for c in e.generate(prompts, params):
            assert c.finish_reason == "stop", (c.reasoning_content, c.content)
            check(c.content)
