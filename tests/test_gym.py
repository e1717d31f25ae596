"""reasoning-gym: its datasets as tasks scored by their own scorers, and as chat documents whose
worked reasoning traces end in the answer."""

import pytest

from nanoseek.data import read_documents
from nanoseek.files import DataError, write_jsonl
from nanoseek.tasks.gym import derive_trace, gym_documents
from nanoseek.tasks.load import load_task
from nanoseek.tasks.task import TaskError
from nanoseek.tokenizer import EOS, THINK_END, THINK_START


def test_gym_task_scores_with_the_datasets_own_scorer():
    t = load_task("gym:basic_arithmetic", size=5, seed=1, config={"min_terms": 2, "max_terms": 2})
    assert t.name == "gym:basic_arithmetic" and len(t.examples) == 5
    ex = t.examples[0]
    assert t.score(f"add them\n</think>\n\n{ex.reference}", ex) == 1.0
    assert t.score(f"add them\n</think>\n\n<answer>{ex.reference}</answer>", ex) == 1.0
    assert t.score("add them\n</think>\n\nno idea", ex) == 0.0
    # a list answer is compared as text, not reduced to its last number
    s = load_task("gym:number_sorting", size=1, seed=0)
    assert s.score(f"sorting</think>{s.examples[0].reference}", s.examples[0]) == 1.0


def test_gym_errors_name_the_dataset():
    with pytest.raises(TaskError, match="'no_such_task'"):
        load_task("gym:no_such_task", size=1)


def test_arithmetic_traces_are_correct():
    trace = derive_trace({"metadata": {"expression": "5 - 3 * 4 + 27 * 13"}})
    assert trace.splitlines() == ["3 * 4 = 12", "5 - 12 = -7", "27 * 10 + 27 * 3 = 270 + 81 = 351",
                                  "-7 + 351 = 344"]
    gcd = derive_trace({"metadata": {"source_dataset": "gcd", "numbers": [780, 462], "result": 6}})
    assert gcd.endswith("is 6.") and "780 = 1 * 462 + 318" in gcd
    assert derive_trace({"metadata": {}}) is None


def test_gym_documents_are_chat_documents_with_think_traces(tmp_path):
    rows = list(gym_documents("basic_arithmetic", size=20, seed=5))
    assert len(rows) == 20
    for r in rows:
        user, assistant = r["messages"]
        text = r["text"]
        assert text.count(THINK_START) == 1 and text.count(THINK_END) == 1 and text.endswith(EOS)
        assert (text.index(user["content"]) < text.index(THINK_START) < text.index(THINK_END)
                < text.rindex(r["answer"]))
        # the trace ends with the answer itself: it is a worked solution, not decoration
        last = assistant["reasoning_content"].splitlines()[-1]
        assert float(last.split("= ")[-1]) == pytest.approx(float(r["answer"]))
    again = gym_documents("basic_arithmetic", size=20, seed=5)
    assert [r["text"] for r in again] == [r["text"] for r in rows]
    assert write_jsonl(iter(rows), tmp_path / "g.jsonl") == 20
    assert [d.text for d in read_documents(str(tmp_path / "g.jsonl"))] == [r["text"] for r in rows]
    with pytest.raises(DataError, match="no_such_task"):
        list(gym_documents("no_such_task", size=2))
