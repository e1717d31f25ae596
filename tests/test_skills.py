"""The shipped model's skills: worked traces that are true line by line, checkers, phrasings, the
self-description, and a held-out set that training never touches."""

import random
import re

import pytest

from nanoseek.tasks import persona
from nanoseek.tasks.chats import heldout_task, skill_documents, skills_task
from nanoseek.tasks.heldout import held_out_keys, load, normal
from nanoseek.tasks.phrasing import (
    COMPARATIVE,
    COMPARE,
    COMPARE_SHAPES,
    LETTERS,
    SORT,
    SUPERLATIVE,
    frames,
    grammar,
    phrase,
)
from nanoseek.tasks.skills import (
    SKILLS,
    arithmetic_trace,
    canonical,
    check,
    column_add,
    column_sub,
    key,
    parse,
    random_expression,
    random_instance,
    random_product,
    show,
    solve,
    times_digit,
    value,
)
from nanoseek.tokenizer import EOS, THINK_END


def _py(side: str) -> int:
    side = side.removeprefix("so ").replace("×", "*")
    return eval(side, {})  # the trace's own arithmetic, checked by Python


def test_every_equation_in_an_arithmetic_trace_is_true():
    rng = random.Random(0)
    for _ in range(400):
        e = random_expression(rng) if rng.random() < 0.7 else random_product(rng)
        trace, answer = arithmetic_trace(e)
        assert int(answer) == value(parse(e))
        lines = trace.splitlines()
        assert lines[0] == show(parse(e)) and lines[-1] == f"= {answer}"
        for line in lines:
            head, _, cols = line.partition(": ")
            for part in re.split(r"; |, so ", cols if cols else line):
                part = re.sub(r"^[^:]*: borrow, ", "", part)  # the borrowed column's equation
                carried = re.fullmatch(r"(.+) = (\d+), \+ (\d+) = (\d+)", part.split(" → ")[0])
                if carried:  # a digit's product, then its carry added
                    product, carry, total = map(int, carried.groups()[1:])
                    assert _py(carried[1]) == product and product + carry == total, (e, part)
                    continue
                sides = [s for s in part.split(" → ")[0].split(" = ") if s]
                if len(sides) > 1:  # every side of every equation has the same value
                    assert len({_py(s) for s in sides}) == 1, (e, line, part)
            if cols:  # a column operation: what its digits spell is its result
                written = cols.split(" → ")[-1].split(",")[0].split(" = ")[-1]
                assert int(written) == _py(head), (e, line)
            if line.startswith("= "):  # what is left of the expression keeps its value
                assert _py(line[2:]) == value(parse(e))


def test_a_column_states_its_digits_before_it_borrows_or_carries():
    assert column_sub(674, 39) == ("674 - 39: 4 - 9: borrow, 14 - 9 = 5 → 5; 7 - 3 - 1 = 3 → 35; "
                                   "6 → 635")
    assert column_add(486, 759) == ("486 + 759: 6 + 9 = 15 → 5; 8 + 5 = 13, + 1 = 14 → 45; "
                                    "4 + 7 = 11, + 1 = 12 → 1245")
    assert times_digit(347, 8) == ("347 × 8: 7 × 8 = 56 → 6; 4 × 8 = 32, + 5 = 37 → 76; "
                                   "3 × 8 = 24, + 3 = 27 → 2776")


def test_a_three_digit_product_is_worked_digit_by_digit():
    trace, answer = arithmetic_trace("347 * 268")
    assert answer == "92996"
    assert trace.splitlines() == [
        "347 × 268",
        "347 × 268 = 347 × 8 + 347 × 60 + 347 × 200",
        "347 × 8: 7 × 8 = 56 → 6; 4 × 8 = 32, + 5 = 37 → 76; 3 × 8 = 24, + 3 = 27 → 2776",
        "347 × 6: 7 × 6 = 42 → 2; 4 × 6 = 24, + 4 = 28 → 82; 3 × 6 = 18, + 2 = 20 → 2082, "
        "so 347 × 60 = 20820",
        "2776 + 20820: 6 + 0 = 6 → 6; 7 + 2 = 9 → 96; 7 + 8 = 15 → 596; 2 + 0 = 2, + 1 = 3 → 3596; "
        "2 → 23596",
        "347 × 2: 7 × 2 = 14 → 4; 4 × 2 = 8, + 1 = 9 → 94; 3 × 2 = 6 → 694, so 347 × 200 = 69400",
        "23596 + 69400: 6 + 0 = 6 → 6; 9 + 0 = 9 → 96; 5 + 4 = 9 → 996; 3 + 9 = 12 → 2996; "
        "2 + 6 = 8, + 1 = 9 → 92996",
        "= 92996"]
    # a negative intermediate result goes through a sign rule, then whole-number columns
    trace, answer = arithmetic_trace("28 - 347 + 5")
    assert answer == "-314" and "28 - 347 = -(347 - 28)" in trace


def test_parse_and_show_round_trip_with_the_parentheses_the_tree_needs():
    for e in ["(1 + 2) * 3", "1 + 2 * 3", "10 - (4 - 3)", "10 - 4 - 3", "2 * (3 * 4)", "7"]:
        assert show(parse(e), times="*") == e
        assert canonical(e.replace("*", "×").replace(" ", "")) == e
    with pytest.raises(ValueError):
        parse("2 / 3")


def test_compare_sort_and_letters_traces_reach_the_right_answer():
    rng = random.Random(1)
    for _ in range(300):
        for skill in ("compare", "sort", "letters"):
            inst = random_instance(skill, rng)
            trace, answer = solve(skill, inst)
            if skill == "compare":
                best = max(inst["numbers"]) if inst["largest"] else min(inst["numbers"])
                assert answer == str(best) and trace.endswith(f": {best}")
            elif skill == "sort":
                want = sorted(inst["numbers"], reverse=not inst["ascending"])
                assert answer == ", ".join(map(str, want)) and trace.endswith(answer)
            else:
                n = inst["word"].count(inst["letter"])
                assert answer == str(n) and trace.count("(") == n
    assert solve("compare", {"numbers": [347, 362], "largest": True})[0].splitlines() == \
        ["largest of 347, 362", "347 vs 362: 3 = 3, 4 < 6 → 362", "largest: 362"]
    assert solve("letters", {"word": "strawberry", "letter": "r"}) == \
        ("s t r (1) a w b e r (2) r (3) y\nr: 3", "3")


def test_checkers_read_the_last_line_of_the_answer():
    arith = {"expression": "12 * 3"}
    assert check("arithmetic", arith, f"12 × 3 = 36\n{THINK_END}\n\n36") == 1.0
    assert check("arithmetic", arith, f"12 × 3 = 36\n{THINK_END}\n\n35") == 0.0
    assert check("arithmetic", arith, "12 × 3 = 36\n= 36\n\n36") == 1.0  # DeepThink off
    assert check("arithmetic", arith, f"36\n{THINK_END}\n\nI can't say") == 0.0
    srt = {"numbers": [5, 40, 3], "ascending": True}
    assert check("sort", srt, f"...{THINK_END}\n\n3, 5, 40") == 1.0
    assert check("sort", srt, f"...{THINK_END}\n\n3, 40, 5") == 0.0
    assert check("sort", srt, f"...{THINK_END}\n\n3, 5") == 0.0
    assert check("compare", {"numbers": [9, 10], "largest": True}, f"{THINK_END}10") == 1.0


def test_prompts_come_in_many_phrasings_that_keep_the_problem():
    rng = random.Random(2)
    for skill in SKILLS:
        prompts = set()
        for _ in range(300):
            inst = random_instance(skill, rng)
            p = phrase(skill, inst, rng)
            prompts.add(p)
            numbers = (re.findall(r"\d+", inst["expression"]) if skill == "arithmetic"
                       else [str(x) for x in inst.get("numbers", [])])
            assert sorted(re.findall(r"\d+", p)) == sorted(numbers), (skill, inst, p)
            if skill == "letters":
                assert inst["word"] in p.lower()
        assert len(prompts) > 280, skill
        assert any(p.isupper() for p in prompts) and any(p.islower() for p in prompts)
        assert any(p[-1].isalnum() for p in prompts) and any(p.endswith("?") for p in prompts)
    asked = " ".join(phrase("arithmetic", {"expression": e}, rng).lower()
                     for e in ["3 + 4", "3 - 4", "3 * 4", "(3 + 4) * 5"] * 200)
    for w in ("plus", "minus", "times", "multiplied by", "add 3 and 4", "what's", "how much is",
              "=?", "please", "can you", "×", "*", " x ", "(3+4)*5"):
        assert w in asked, w


def test_frames_made_of_parts_keep_the_direction_they_are_filed_under():
    assert grammar(["!sort {l} {dir}", "{dir}: {l}"], dir=["up", "down"]) == \
        ["!sort {l} up", "!sort {l} down", "up: {l}", "down: {l}"]
    for largest in (True, False):
        made = grammar(COMPARE_SHAPES, sup=SUPERLATIVE[largest], cmp=COMPARATIVE[largest])
        assert set(made) <= set(COMPARE[largest]) and len(made) > 100
        other = SUPERLATIVE[not largest] + COMPARATIVE[not largest]
        for f in made:
            assert not any(re.search(rf"\b{w}\b", f) for w in other), f
    for ascending in (True, False):
        assert len(set(SORT[ascending]) - set(SORT[not ascending])) > 200
    assert "How many times does the letter {l} show up in {w}?" in LETTERS


def test_the_held_out_set_is_apart_from_every_generator():
    rows = load()
    skills = {r["skill"] for r in rows}
    assert skills == {*SKILLS, "out_of_scope"}
    assert sum(r.get("bucket") == "3-digit ×" for r in rows) >= 50
    # its frames are none of the training frames
    train_frames = {k: {normal(f) for f in fs} for k, fs in frames().items()}
    for r in rows:
        if r["skill"] != "out_of_scope":
            assert normal(r["frame"]) not in train_frames[r["skill"]], r["frame"]
            assert solve(r["skill"], r["instance"])[1] == r["reference"]
    # and a large draw of training data holds none of its instances, words or messages
    held = held_out_keys()
    messages = {normal(r["prompt"]) for r in rows}
    held_words = {r["instance"]["word"] for r in rows if r["skill"] == "letters"}
    train = skills_task(6000, seed=3, config={"out_of_scope": 0.3})
    for ex in train.examples:
        assert normal(ex.prompt) not in messages, ex.prompt
        e = ex.entry
        if e["skill"] != "out_of_scope":
            assert key(e["skill"], e["instance"]) not in held
            assert e["instance"].get("word") not in held_words
    # the persona's own lists hold none of its messages either
    for text in persona.GREETINGS + persona.IDENTITY + persona.FOREIGN:
        assert normal(text) not in messages, text


def test_the_self_description_is_honest_and_the_rule_checks_it():
    for kind in persona.THOUGHTS:
        reasoning, answer = persona.reply(kind)
        assert persona.honest(answer) and persona.honest(f"{reasoning}\n{THINK_END}\n\n{answer}")
        assert "nanoseek" in answer and "arithmetic" in answer
    assert not persona.honest("I'm nanoseek, I can do arithmetic. The answer is 3.")
    assert not persona.honest("Paris")
    assert not persona.honest(f"I'm nanoseek and I do arithmetic\n{THINK_END}\n\n4")
    with pytest.raises(KeyError):
        persona.reply("poem")


def test_documents_mix_skills_and_the_general_set_with_thinking_on_and_off():
    docs = list(skill_documents(600, seed=4, config={"thinking_off": 0.3, "out_of_scope": 0.2}))
    tasks = {d["task"] for d in docs}
    assert tasks == {*SKILLS, "out_of_scope"}
    off = [d for d in docs if not d["messages"][1]["reasoning_content"]]
    assert 100 < len(off) < 260
    for d in docs:
        user, assistant = d["messages"]
        assert d["text"].endswith(EOS) and d["text"].count(THINK_END) == 1
        assert assistant["content"].splitlines()[-1] == d["answer"]
        if d["task"] == "out_of_scope":
            assert persona.honest(assistant["content"])
        elif not assistant["reasoning_content"]:  # DeepThink off: the working, then the answer
            working, answer = assistant["content"].rsplit("\n\n", 1)
            assert answer == d["answer"] and working.strip() and THINK_END not in working
    # pretraining documents keep thinking on
    assert all(d["messages"][1]["reasoning_content"] for d in skill_documents(200, seed=5))
    with pytest.raises(ValueError, match="unknown keys"):
        list(skill_documents(1, config={"skilz": {}}))


def test_the_skills_task_scores_each_skill_by_its_checker():
    task = skills_task(200, seed=6, config={"out_of_scope": 0.2})
    assert {e.entry["skill"] for e in task.examples} == {*SKILLS, "out_of_scope"}
    for ex in task.examples:
        if ex.entry["skill"] == "out_of_scope":
            good = persona.reply(ex.entry["kind"])[1]
            assert task.score(f"hm\n{THINK_END}\n\n{good}", ex) == 1.0
            assert task.score(f"hm\n{THINK_END}\n\n42", ex) == 0.0
        else:
            trace, answer = solve(ex.entry["skill"], ex.entry["instance"])
            assert task.score(f"{trace}\n{THINK_END}\n\n{answer}", ex) == 1.0
            assert task.score(f"{trace}\n{THINK_END}\n\n{persona.describe()}", ex) == 0.0
    held = heldout_task()
    assert len(held.examples) == len(load())
