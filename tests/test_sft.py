"""`nanoseek sft`: chats in, a checkpoint out that has learned the assistant's turns."""

import difflib
import json

import pytest

from nanoseek.cli import main

NAME = [{"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "nanoseek", "reasoning_content": "me"}]


def test_sft_teaches_a_reply_and_resumes(tiny_chat_dir, tmp_path, capsys):
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tokenizer import render_chat

    chats = tmp_path / "chats.jsonl"
    # a reply the arithmetic model has never seen, among arithmetic chats; identical rows share a
    # split, and with seed 0 this one lands in train
    sums = [(i % 50, i % 7) for i in range(200)]
    rows = [{"messages": NAME}] * 40 + [{"messages": _sum(a, b)} for a, b in sums]
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    common = [str(tiny_chat_dir), "--chats", str(chats), "--out-dir", str(out), "--seq-len", "64",
              "--lr", "2e-3", "--micro-batch-size", "8", "--eval-every", "0", "--no-progress",
              "--val-fraction", "0.2", "--seed", "0"]
    assert main(["sft", *common, "--max-steps", "80", "--save-every", "40"]) == 0
    assert "loss on the assistant's turns only" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["main_loss"] < 0.5 * metrics[0]["main_loss"]
    # the reply learned: its reasoning, </think>, answer and EOS, teacher-forced, far likelier than
    # before SFT and mostly each token's argmax (a property with margin, not one greedy string,
    # which float kernels can tip a character either way on another CPU)
    ckpt = out / "checkpoints" / "step_000080"
    before, after = _reply_fit(tiny_chat_dir), _reply_fit(ckpt)
    assert after["nll"] < 0.25 * before["nll"] and after["nll"] < 1.0, (before, after)
    assert after["argmax"] >= 0.8 > before["argmax"], (before, after)
    engine = Engine.from_checkpoint(str(ckpt), device="cpu", dtype="float32", max_batch=1,
                                    max_seq_len=128)
    c = engine.generate([render_chat(NAME[:1])], SamplingParams(temperature=0, max_tokens=20))[0]
    target = "me\n</think>\n\nnanoseek"
    assert difflib.SequenceMatcher(None, c.text, target).ratio() >= 0.8, c.text
    # resume continues from the step-80 checkpoint with the prepared data, not a new copy
    assert main(["sft", *common, "--max-steps", "85", "--resume"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 85


def _sum(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": f"Calculate {a} + {b}."},
            {"role": "assistant", "content": str(a + b),
             "reasoning_content": f"{a} + {b} = {a + b}"}]


def _reply_fit(checkpoint) -> dict[str, float]:
    """The assistant turn of NAME under teacher forcing: mean negative log-likelihood per token, and
    the share of its tokens that are the model's argmax."""
    import torch

    from nanoseek.checkpoint import load_model
    from nanoseek.data import chat_tokens
    from nanoseek.tokenizer import Tokenizer

    ids, mask = chat_tokens(Tokenizer.load(checkpoint), NAME)
    model = load_model(checkpoint).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0].float()
    target = torch.tensor(ids[1:])
    on = torch.tensor(mask[1:], dtype=torch.bool)  # the completion's tokens: the loss mask
    nll = torch.nn.functional.cross_entropy(logits[on], target[on])
    argmax = (logits[on].argmax(-1) == target[on]).float().mean()
    return {"nll": nll.item(), "argmax": argmax.item()}


def test_sft_errors(tiny_chat_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    argv = ["sft", str(tiny_chat_dir), "--chats", str(bad), "--out-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "bad.jsonl:1: no assistant message" in capsys.readouterr().err
    assert main(["sft", str(tiny_chat_dir), "--chats", str(bad), "--model", "tiny"]) == 2
    assert "takes the model and the tokenizer from CHECKPOINT" in capsys.readouterr().err
    argv = ["distill", str(tiny_chat_dir), "--task", "gym:basic_arithmetic", "--student", "tiny",
            "--temperature", "-1",
            "--out-dir", str(tmp_path / "d")]
    assert main(argv) == 2  # one line, not a traceback
    err = capsys.readouterr().err
    assert "temperature must be" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--help"])
def test_sft_help(flag, capsys):
    with pytest.raises(SystemExit):
        main(["sft", flag])
    assert "loss on the turn's reasoning" in capsys.readouterr().out


def test_student_is_a_new_model_in_the_teachers_tokens(tiny_chat_dir, tmp_path):
    """--student: distillation's SFT starts a fresh model of the given shape, with the teacher's
    tokenizer."""
    from nanoseek.checkpoint import load_model
    from nanoseek.tokenizer import Tokenizer

    chats = tmp_path / "t.jsonl"
    chats.write_text("".join(json.dumps({"messages": _sum(a, b)}) + "\n"
                             for a in range(20) for b in range(10)))
    out = tmp_path / "student"
    assert main(["sft", str(tiny_chat_dir), "--chats", str(chats), "--student", "tiny",
                 "--out-dir", str(out), "--seq-len", "64", "--max-steps", "20", "--eval-every", "0",
                 "--no-progress", "--val-fraction", "0.3", "--set", "num_hidden_layers=1"]) == 0
    ckpt = out / "checkpoints" / "step_000020"
    student, teacher = load_model(ckpt), load_model(tiny_chat_dir)
    assert student.cfg.num_hidden_layers == 1 < teacher.cfg.num_hidden_layers  # smaller, new
    text = "Calculate 3 + 4."
    assert Tokenizer.load(ckpt).encode(text) == Tokenizer.load(tiny_chat_dir).encode(text)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["main_loss"] < metrics[0]["main_loss"]


def test_distill_samples_the_teacher_then_trains_a_dense_student(tiny_chat_dir, tmp_path, capsys):
    """nanoseek distill: the teacher's samples its task scores correct, and only those, then a new
    dense student trained on them."""
    from nanoseek.checkpoint import load_model

    task = tmp_path / "short.py"  # a task the tiny teacher often passes: a one-character answer
    task.write_text("def prompts():\n"
                    "    for a in range(1, 9):\n"
                    "        for b in range(1, 9):\n"
                    "            yield f'Calculate {a} + {b}.', str(a + b)\n"
                    "def score(completion, reference):\n"
                    "    return float(len(completion.split('</think>')[-1].strip()) == 1)\n")
    out = tmp_path / "d"
    argv = ["distill", str(tiny_chat_dir), "--task", str(task), "--size", "64", "--k", "8",
            "--max-tokens", "40", "--student", "tiny", "--set", "first_k_dense_replace=2",
            "--set", "num_nextn_predict_layers=0", "--out-dir", str(out), "--seq-len", "32",
            "--micro-batch-size", "2", "--max-steps", "8", "--eval-every", "0", "--no-progress",
            "--val-fraction", "0.2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "prompts solved" in printed
    rows = [json.loads(line) for line in (out / "teacher_samples.jsonl").read_text().splitlines()]
    assert len(rows) >= 10
    assert all(r["score"] == 1.0 and len(r["messages"][1]["content"]) == 1 for r in rows)
    student = load_model(out / "checkpoints" / "step_000008")
    # dense, as R1's students: every layer an MLP, no MTP
    assert not student.moe_layers() and not student.mtp
    # --resume reuses the samples rather than sampling again
    before = (out / "teacher_samples.jsonl").stat().st_mtime_ns
    assert main(argv + ["--resume", "--max-steps", "10"]) == 0
    assert "reusing the teacher's samples" in capsys.readouterr().out
    assert (out / "teacher_samples.jsonl").stat().st_mtime_ns == before
    assert (out / "checkpoints" / "step_000010").exists()


def test_a_small_chat_set_still_holds_one_conversation_out(tiny_chat_dir, tmp_path):
    """At 0.05 a handful of conversations (a few dozen teacher samples in the pipeline's --quick
    run) can hash all into train, and an empty validation split is refused: the share is raised to
    the smallest that holds one out, with a note, rather than failing."""
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.sft import held_out_fraction, prepare_chats

    chats = tmp_path / "two.jsonl"
    chats.write_text("".join(json.dumps({"messages": _sum(a, a)}) + "\n" for a in range(2)))
    assert held_out_fraction(str(chats), 0, 0.05) > 0.05
    notes = []
    meta = prepare_chats(str(chats), Tokenizer.load(tiny_chat_dir), tmp_path / "data",
                         val_fraction=0.05, seed=0, progress=False, log=notes.append)
    assert meta["val_documents"] == 1 and meta["train_documents"] == 1
    assert len(notes) == 1 and "holding out" in notes[0]
    # a share that already holds one out is kept as given
    chats.write_text("".join(json.dumps({"messages": _sum(a, b)}) + "\n"
                             for a in range(20) for b in range(10)))
    assert held_out_fraction(str(chats), 0, 0.05) == 0.05
