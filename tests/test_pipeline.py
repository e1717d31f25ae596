"""nanoseek pipeline --quick: every stage of the R1 recipe runs, the report is written, the best
model is exported with its model card and loads in transformers, and a rerun resumes instead of
starting over."""

import json
import re

import numpy as np
import pytest

from nanoseek.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    assert main(["pipeline", "--quick", "--out-dir", str(out / "run"), "--export",
                 str(out / "model"), "--quiet"]) == 0
    return out


def test_every_stage_runs_and_the_report_says_what_they_did(quick_run):
    run = quick_run / "run"
    stages = ["corpus", "pretrain", "r1_zero", "cold_start_sft", "r1", "rejection_sampling",
              "student_base", "distill", "student_grpo"]
    for s in stages:
        assert (run / s / "done.json").exists(), s
    # the base's loss is on the assistant's turns only: its data carries the chat mask, which
    # covers part of the tokens, not all
    from nanoseek.data import read_meta

    meta = read_meta(run / "corpus" / "data")
    assert meta["chat"]
    mask = np.fromfile(run / "corpus" / "data" / "train.mask", dtype=np.uint8)
    assert len(mask) == meta["train_tokens"] and 0.3 < mask.mean() < 0.95
    report = (run / "report.md").read_text()
    models = ["zero_start", "base", "r1_zero", "cold_start_sft", "r1", "student_base", "distilled",
              "student_grpo"]
    table = report.split("## Models on held-out prompts")[1].split("## Skills on held-out")[0]
    rows = re.findall(rf"^\| ({'|'.join(models)}) \|", table, re.M)
    assert rows == models
    for s in stages:
        # its cost row
        assert re.search(rf"^\| {s} \| \d+ \| [\d.]+ \| [\d.]+ \|$", report, re.M), s
    # the skills, by model, on the held-out phrasings
    skills = report.split("## Skills on held-out phrasings")[1].split("## What it shows")[0]
    assert re.findall(rf"^\| ({'|'.join(models)})(?: \(shipped\))? \|", skills, re.M) == models
    for col in ("arithmetic", "3-digit ×", "compare", "sort", "letters", "honest out of scope",
                "honest, DeepThink off"):
        assert col in skills.splitlines()[4], col
    summary = json.loads((run / "report.json").read_text())
    # the shipped model is the best of all by the held-out measure
    best = summary["best"]
    evals = summary["evals"]
    assert best != "zero_start" and f"| {best} (shipped) |" in skills
    assert all(evals[best]["measure"] >= e["measure"] for m, e in evals.items()
               if m not in ("zero_start", "best"))
    for name, e in evals.items():
        assert 0 <= e["pass@1"] <= 1 and 0 <= e["pass"]["2"] <= 1, name
        assert set(e["skills"]) == {"arithmetic", "3-digit ×", "compare", "sort", "letters",
                                    "out_of_scope"} or e["prompts"] < 24, name
        assert 0 <= e["thinking_off"].get("out_of_scope", 0) <= 1
    assert [b["budget"] for b in summary["evals"]["best"]["budgets"]] == [8, 32]
    # the student trained by GRPO got the compute distillation used (it stops at the first step
    # past it)
    st = summary["stages"]
    distillation = st["distill"]["seconds"] + st["rejection_sampling"]["seconds"]
    assert st["student_grpo"]["seconds"] >= distillation
    for png in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (run / png).exists(), png
    assert (run / "r1_zero" / "response_length.png").exists()


def test_the_best_model_is_exported_and_loads_in_transformers(quick_run):
    transformers = pytest.importorskip("transformers")
    import torch

    model_dir = quick_run / "model"
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for part in ("## Models on held-out prompts", "## Held-out scores", "## What it cannot do",
                 "## Speed"):
        assert part in card, part
    assert re.search(r"^\d+ tokens/s decoding one conversation", card, re.M)
    assert "![" not in card and not list(model_dir.glob("train_state*"))
    assert sum(f.stat().st_size for f in model_dir.iterdir()) < 25e6
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    from nanoseek.checkpoint import load_model

    ours = load_model(model_dir).eval()
    ids = torch.tensor([[0, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids).logits, atol=1e-4)


def test_a_rerun_resumes_finished_stages(quick_run, capsys):
    report = quick_run / "run" / "report.json"
    first = json.loads(report.read_text())["wall_s"]
    assert main(["pipeline", "--quick", "--out-dir", str(quick_run / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("done before") >= 18  # every stage and evaluation
    # the report still says what the stages took, not the seconds of a rerun that did nothing
    assert json.loads(report.read_text())["wall_s"] == pytest.approx(first) and first > 1


def test_another_seed_is_another_run_and_never_resumes_this_one(quick_run, tmp_path, capsys):
    """--seed draws every stage's documents anew (not the held-out prompts); an out-dir made with
    another preset or seed is refused, not silently resumed."""
    import dataclasses

    from nanoseek.pipeline import EVAL_SEED, PRESETS, Pipeline

    quick = PRESETS["quick"]
    one = Pipeline(tmp_path / "one", dataclasses.replace(quick, seed=1), log=lambda *_: None)
    zero = Pipeline(tmp_path / "zero", quick, log=lambda *_: None)
    assert one.documents(20, one.seed(0)) != zero.documents(20, zero.seed(0))
    assert EVAL_SEED not in {p.seed(k) for p in (one, zero) for k in range(4)}
    assert main(["pipeline", "--quick", "--seed", "1", "--out-dir", str(quick_run / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another preset" in err and "seed" in err and "--out-dir" in err
    assert main(["pipeline", "--seed", "-1", "--out-dir", str(tmp_path / "x")]) == 2


def test_the_gpu_preset_refuses_to_start_without_a_gpu(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["pipeline", "--preset", "gpu-100m", "--out-dir", str(tmp_path / "run")]) == 2
    assert "needs a GPU" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_shipped_model_is_the_default_and_loads_in_transformers(monkeypatch):
    transformers = pytest.importorskip("transformers")
    import torch

    from nanoseek.checkpoint import load_model
    from nanoseek.infer.bundled import BUNDLED, default_checkpoint

    monkeypatch.delenv("NANOSEEK_DEFAULT_MODEL", raising=False)
    path, trained = default_checkpoint()
    assert trained and path == BUNDLED
    assert sum(f.stat().st_size for f in path.iterdir()) < 25e6
    card = (path / "README.md").read_text()
    assert "nanoseek pipeline report" in card and "| r1 |" in card
    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ours = load_model(path).eval()
    ids = torch.tensor([[0, 5, 9, 12, 40, 7]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids).logits, atol=1e-4)


def test_the_shipped_card_invites_only_what_the_model_answers_right():
    """The model card's "Try" list: each message is one of pipeline.EXAMPLES, and the shipped model
    answers it right at temperature 0 with DeepThink on and off."""
    from nanoseek.infer.bundled import BUNDLED
    from nanoseek.infer.engine import Engine
    from nanoseek.pipeline import EXAMPLES, answered_right

    card = (BUNDLED / "README.md").read_text()
    tries = re.findall(r"`([^`]+)`", card.split("Try (")[1].split("\n")[0])
    answers = dict(EXAMPLES)
    assert len(tries) >= 4 and all(t in answers for t in tries), tries
    engine = Engine.from_checkpoint(str(BUNDLED), device="cpu", max_batch=16, max_seq_len=1024)
    assert all(answered_right(engine, [(t, answers[t]) for t in tries])), tries


def test_the_gpu_100m_preset_fits_its_task_and_keeps_its_checkpoints():
    """gpu-100m needs a GPU, so CI checks what would break it there: its harder task gives worked
    documents whose answers fit max_tokens and whose text fits seq_len, and the student is a valid
    dense model far smaller than the teacher."""
    from nanoseek.model.config import get_preset
    from nanoseek.model.counting import count_params
    from nanoseek.pipeline import PRESETS
    from nanoseek.tasks.gym import gym_documents
    from nanoseek.tokenizer import train_tokenizer

    p = PRESETS["gpu-100m"]
    docs = list(gym_documents(p.task.removeprefix("gym:"), 400, seed=0, config=p.task_config))
    assert len(docs) == 400 and all(d["messages"][1]["reasoning_content"] for d in docs)
    questions = [d["messages"][0]["content"] for d in docs]
    assert any("*" in q and "(" in q for q in questions)
    # fewer merges than 60K docs give
    tok = train_tokenizer([d["text"] for d in docs], vocab_size=p.vocab)
    answers = [len(tok.encode(d["text"].split("<｜Assistant｜>", 1)[1])) for d in docs]
    assert max(len(tok.encode(d["text"])) for d in docs) <= p.seq_len
    assert max(answers) <= p.max_tokens
    assert max(p.budgets) <= p.max_tokens
    teacher = get_preset(p.teacher).replace(vocab_size=p.vocab)
    student = teacher.replace(**p.student)
    student.validate()
    assert student.first_k_dense_replace == student.num_hidden_layers
    assert not student.num_nextn_predict_layers
    assert count_params(student).total < count_params(teacher).active / 2


def test_the_default_preset_fits_the_held_out_problems_and_describes_its_models():
    """The default preset makes the shipped model: nearly every held-out problem's worked answer
    fits max_tokens, nearly every training document fits seq_len, and the size the model gives
    for itself is true of the teacher and the student it may ship."""
    from nanoseek.model.config import get_preset
    from nanoseek.model.counting import count_params
    from nanoseek.pipeline import PRESETS
    from nanoseek.tasks.chats import skill_documents
    from nanoseek.tasks.heldout import load
    from nanoseek.tasks.skills import solve
    from nanoseek.tokenizer import render_completion, train_tokenizer

    p = PRESETS["default"]
    docs = list(skill_documents(2000, seed=0, config=p.task_config))
    tok = train_tokenizer([d["text"] for d in docs], vocab_size=p.vocab, split_digits=True)
    lengths = sorted(len(tok.encode(d["text"])) for d in docs)
    assert lengths[int(0.99 * len(lengths))] <= p.seq_len
    # the worked answers fit max_tokens, all but the longest (two products of three-digit
    # numbers, about 550 tokens: cut, they count as wrong)
    rows = [r for r in load() if r["skill"] != "out_of_scope"]
    long = [r["prompt"] for r in rows
            if len(tok.encode(render_completion(*solve(r["skill"], r["instance"])))) > p.max_tokens]
    assert len(long) <= 0.01 * len(rows), long
    assert max(p.budgets) <= p.max_tokens
    words = {"about a million parameters": (0.5e6, 2e6)}
    low, high = words[p.task_config["size"]]
    teacher = get_preset(p.teacher).replace(vocab_size=p.vocab, **p.teacher_shape)
    student = teacher.replace(**p.student)
    for cfg in (teacher, student):
        cfg.validate()
        assert low <= count_params(cfg).total <= high
    assert count_params(student).total < count_params(teacher).total


def test_the_cold_start_asks_more_outside_the_skills_than_pretraining(tmp_path):
    """Only the cold start teaches the honest reply with DeepThink off, so its chats hold
    cold_out_of_scope messages outside the skills (pretraining keeps the mix's share)."""
    from nanoseek.pipeline import PRESETS, Pipeline

    p = PRESETS["default"]
    pipe = Pipeline(tmp_path, p, progress=False)

    def share(docs):
        return sum(d["task"] == "out_of_scope" for d in docs) / len(docs)

    cold = pipe.documents(800, seed=1, thinking_off=p.thinking_off,
                          out_of_scope=p.cold_out_of_scope)
    assert abs(share(cold) - p.cold_out_of_scope) < 0.05
    assert abs(share(pipe.documents(800, seed=0)) - 0.1) < 0.04
