"""Tasks from reasoning-gym, benchmark JSONL files and user files; their scorers and how their
answers compare; clear errors; reasoning-gym's chat documents with worked traces."""

import json
import textwrap

import pytest

from nanoseek.tasks.load import load_task
from nanoseek.tasks.task import Task, TaskError, final_text


def test_jsonl_formats(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Tom has 3 + 4 apples.", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},  # GSM8K
        {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "answer": "\\frac{3}{4}"},  # MATH
        {"prompt": "2 * 21?", "answer": 42},
    ]) + "\n\n")
    t = load_task(str(f))
    assert [e.reference for e in t.examples] == ["7", "\\frac{3}{4}", "42"]
    assert t.score("</think>The answer is 7.", t.examples[0]) == 1.0
    assert t.score("</think>\\boxed{0.75}", t.examples[1]) == 1.0
    assert t.score("</think>\\boxed{0.7}", t.examples[1]) == 0.0
    assert len(load_task(str(f), size=2).examples) == 2


@pytest.mark.parametrize("line,needle", [
    ("not json", ":2: malformed JSON"),
    ("[1, 2]", ":2: expected a JSON object, got list"),
    ('{"answer": "1"}', ":2: needs a non-empty 'question'"),
    ('{"problem": "x"}', ":2: needs an 'answer'"),
    ('{"question": "x", "answer": "no marker"}',
     ":2: a GSM8K 'answer' must end with '#### <number>'"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok", "answer": 1}\n' + line + "\n")
    with pytest.raises(TaskError, match=needle.replace("*", r"\*").replace("'", "'")) as e:
        load_task(str(f))
    assert str(f) in str(e.value)


USER = """
def prompts():
    for i in range(6):
        yield {"prompt": f"Say {i}.", "reference": i}

def score(completion, reference):
    return float(completion.rsplit("</think>", 1)[-1].strip() == str(reference))
"""


def test_user_task_file(tmp_path):
    f = tmp_path / "say.py"
    f.write_text(USER)
    t = load_task(str(f), size=4)
    assert [e.prompt for e in t.examples] == ["Say 0.", "Say 1.", "Say 2.", "Say 3."]
    assert t.score("ok</think>3", t.examples[3]) == 1.0
    assert t.score("ok</think>2", t.examples[3]) == 0.0
    train, test = t.split(1, seed=0)
    assert len(train.examples) == 3 and len(test.examples) == 1
    assert test.examples[0] not in train.examples


@pytest.mark.parametrize("source,needle", [
    ("def prompts(:\n    pass\n", r"say\.py:1: syntax error"),
    ("import no_such_module_here\n", r"say\.py:1: importing the task raised ModuleNotFoundError"),
    ("def prompts():\n    return []\n", r"must define score\(\)"),
    ("def score(c, r):\n    return 1\n", r"must define prompts\(\)"),
    ("def prompts():\n    return [42]\n\ndef score(c, r):\n    return 1\n",
     r"prompts\(\) item 0 must be"),
    ("def prompts():\n    return []\n\ndef score(c, r):\n    return 1\n",
     r"prompts\(\) gave no examples"),
    ("def prompts():\n    raise KeyError('x')\n\ndef score(c, r):\n    return 1\n",
     r"prompts\(\) raised KeyError"),
])
def test_user_task_errors_are_clear(tmp_path, source, needle):
    f = tmp_path / "say.py"
    f.write_text(source)
    with pytest.raises(TaskError, match=needle):
        load_task(str(f))


def test_a_scorer_that_misbehaves_is_named(tmp_path):
    f = tmp_path / "say.py"
    f.write_text(textwrap.dedent("""
        def prompts():
            return [("q", "r")]

        def score(completion, reference):
            if completion == "high":
                return 2.0
            return "yes" if completion == "text" else 1 / 0
    """))
    t = load_task(str(f))
    with pytest.raises(TaskError,
                       match=r"task say: score\(\) must return a number in \[0, 1\], got 2.0"):
        t.score("high", t.examples[0])
    with pytest.raises(TaskError, match="got 'yes'"):
        t.score("text", t.examples[0])
    with pytest.raises(TaskError,
                       match=r"say\.py:8: score\(\) raised ZeroDivisionError: division by zero"):
        t.score("other", t.examples[0])


def test_unknown_specs_and_misplaced_configs():
    with pytest.raises(TaskError, match="use skills, skills:held-out, gym:NAME"):
        load_task("arithmetic")
    with pytest.raises(TaskError, match="unknown keys"):
        load_task("skills", config={"skilz": 1})
    # the held-out set, whole or a seeded part of it
    whole, part = load_task("skills:held-out"), load_task("skills:held-out", size=30, seed=1)
    assert len(whole.examples) > 400 and len(part.examples) == 30
    assert {e.prompt for e in part.examples} <= {e.prompt for e in whole.examples}
    with pytest.raises(TaskError, match="config applies to skills and to reasoning-gym tasks"):
        load_task("x.jsonl", config={"a": 1})
    with pytest.raises(TaskError, match="no such task file"):
        load_task("/nonexistent/x.py")


def test_a_task_says_how_its_answers_compare(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"prompt": "half?", "answer": "0.5"}) + "\n"
                 + json.dumps({"prompt": "twice 2?", "answer": 4}) + "\n")
    math, gym = load_task(str(f)), load_task("gym:number_sorting", size=2, seed=0)
    assert (math.answers, gym.answers) == ("math", "text")
    # math: the extracted answer, equal as math; text: the final text, equal once stripped
    assert math.answer("so</think>it is \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert math.same("\\frac{1}{2}", "0.5") and not gym.same("\\frac{1}{2}", "0.5")
    assert gym.answer("r</think> <answer> 1, 2, 3 </answer>") == "1, 2, 3"
    assert gym.same(" 1, 2, 3", "1, 2, 3 ") and gym.answer("r</think>  ") is None
    assert all(t.answers == "math" for t in math.split(1))  # a split keeps the comparison
    with pytest.raises(TaskError, match="task t: answers must be one of text, math, got 'numbers'"):
        Task("t", [], final_text, answers="numbers")


def test_final_text():
    assert final_text("r</think> <answer> 1, 2, 3 </answer>") == "1, 2, 3"
    assert final_text("r</think>so \\boxed{x+1}") == "x+1"
    assert final_text("r</think>\n  plain words  ") == "plain words"
    assert isinstance(load_task("gym:basic_arithmetic", size=1), Task)
