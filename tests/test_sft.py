"""`nanoseek sft`: chats in, a checkpoint out that has learned the assistant's turns."""

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
    # a reply the arithmetic model has never seen, among arithmetic chats; identical rows share a split, and
    # with seed 0 this one lands in train
    sums = [(i % 50, i % 7) for i in range(200)]
    rows = [{"messages": NAME}] * 40 + [{"messages": [
        {"role": "user", "content": f"Calculate {a} + {b}."},
        {"role": "assistant", "content": str(a + b), "reasoning_content": f"{a} + {b} = {a + b}"}]} for a, b in sums]
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sft"
    common = [str(tiny_chat_dir), "--chats", str(chats), "--out-dir", str(out), "--seq-len", "64", "--lr", "2e-3",
              "--micro-batch-size", "8", "--eval-every", "0", "--no-progress", "--val-fraction", "0.2", "--seed", "0"]
    assert main(["sft", *common, "--max-steps", "80", "--save-every", "40"]) == 0
    assert "loss on the assistant's turns only" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["main_loss"] < 0.5 * metrics[0]["main_loss"]
    engine = Engine.from_checkpoint(str(out / "checkpoints" / "step_000080"), device="cpu", dtype="float32",
                                    max_batch=1, max_seq_len=128)
    c = engine.generate([render_chat(NAME[:1])], SamplingParams(temperature=0, max_tokens=20))[0]
    assert c.text == "me\n</think>\n\nnanoseek" and c.finish_reason == "stop"  # reasoning, answer, then EOS
    # resume continues from the step-80 checkpoint with the prepared data, not a new copy
    assert main(["sft", *common, "--max-steps", "85", "--resume"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 85


def test_sft_errors(tiny_chat_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["sft", str(tiny_chat_dir), "--chats", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:1: no assistant message" in capsys.readouterr().err
    assert main(["sft", str(tiny_chat_dir), "--chats", str(bad), "--model", "tiny"]) == 2
    assert "takes the model and the tokenizer from CHECKPOINT" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help"])
def test_sft_help(flag, capsys):
    with pytest.raises(SystemExit):
        main(["sft", flag])
    assert "loss on the turn's reasoning" in capsys.readouterr().out


def test_student_is_a_new_model_in_the_teachers_tokens(tiny_chat_dir, tmp_path):
    """--student: distillation's SFT starts a fresh model of the given shape, with the teacher's tokenizer."""
    from nanoseek.checkpoint import load_model
    from nanoseek.tokenizer import Tokenizer

    chats = tmp_path / "t.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Calculate {a} + {b}."},
        {"role": "assistant", "content": str(a + b), "reasoning_content": f"{a} + {b} = {a + b}"}]}) + "\n"
        for a in range(20) for b in range(10)))
    out = tmp_path / "student"
    assert main(["sft", str(tiny_chat_dir), "--chats", str(chats), "--student", "tiny", "--out-dir", str(out),
                 "--seq-len", "64", "--max-steps", "20", "--eval-every", "0", "--no-progress", "--val-fraction", "0.3",
                 "--set", "num_hidden_layers=1"]) == 0
    ckpt = out / "checkpoints" / "step_000020"
    student, teacher = load_model(ckpt), load_model(tiny_chat_dir)
    assert student.cfg.num_hidden_layers == 1 < teacher.cfg.num_hidden_layers  # a smaller, new model
    assert Tokenizer.load(ckpt).encode("Calculate 3 + 4.") == Tokenizer.load(tiny_chat_dir).encode("Calculate 3 + 4.")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["main_loss"] < metrics[0]["main_loss"]


def test_distill_samples_the_teacher_then_trains_a_dense_student(tiny_chat_dir, tmp_path, capsys):
    """nanoseek distill: the teacher's samples its task scores correct, and only those, then a new dense
    student trained on them."""
    from nanoseek.checkpoint import load_model

    task = tmp_path / "short.py"  # a task the tiny teacher often passes: a one-character answer
    task.write_text("def prompts():\n"
                    "    for a in range(1, 9):\n"
                    "        for b in range(1, 9):\n"
                    "            yield f'Calculate {a} + {b}.', str(a + b)\n"
                    "def score(completion, reference):\n"
                    "    return float(len(completion.split('</think>')[-1].strip()) == 1)\n")
    out = tmp_path / "d"
    argv = ["distill", str(tiny_chat_dir), "--task", str(task), "--size", "64", "--k", "8", "--max-tokens", "40",
            "--student", "tiny", "--set", "first_k_dense_replace=2", "--set", "num_nextn_predict_layers=0",
            "--out-dir", str(out), "--seq-len", "32",
            "--micro-batch-size", "2", "--max-steps", "8", "--eval-every", "0", "--no-progress", "--val-fraction",
            "0.2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "kept" in printed and "prompts solved" in printed
    rows = [json.loads(line) for line in (out / "teacher_samples.jsonl").read_text().splitlines()]
    assert len(rows) >= 10 and all(r["score"] == 1.0 and len(r["messages"][1]["content"]) == 1 for r in rows)
    student = load_model(out / "checkpoints" / "step_000008")
    assert not student.moe_layers() and not student.mtp  # dense, as R1's students: every layer an MLP, no MTP
    # --resume reuses the samples rather than sampling again
    before = (out / "teacher_samples.jsonl").stat().st_mtime_ns
    assert main(argv + ["--resume", "--max-steps", "10"]) == 0
    assert "reusing the teacher's samples" in capsys.readouterr().out
    assert (out / "teacher_samples.jsonl").stat().st_mtime_ns == before
    assert (out / "checkpoints" / "step_000010").exists()
