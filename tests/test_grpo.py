"""GRPO's objective against hand computations: advantages, clipping on both sides, the k3 KL, both
averaging modes."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nanoseek.train.grpo import group_advantages, grpo_loss, k3_kl


def test_group_advantages_by_hand():
    # one group of 4 with rewards 1, 0, 0, 0: mean 0.25, unbiased std
    # sqrt((0.75² + 3·0.25²) / 3) = 0.5
    a = group_advantages(torch.tensor([1.0, 0, 0, 0, 2, 2, 2, 2]), group_size=4, eps=0.0)
    # equal rewards: no signal
    assert a.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])
    # Dr. GRPO
    assert group_advantages(torch.tensor([1.0, 0]), 2, scale=False).tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)


def inputs():
    """Two completions: A = +1 over 2 tokens (ratios 1.5, 0.9), A = -1 over 3 tokens (ratios 0.5,
    1.0, 1.3)."""
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
    assert float(stats.clip_high) == pytest.approx(1 / 5)
    assert float(stats.clip_low) == pytest.approx(1 / 5)
    assert float(stats.ratio) == pytest.approx((1.5 + 0.9 + 0.5 + 1.0 + 1.3) / 5)
    assert float(stats.kl) == 0
    loss, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, level="token")
    assert loss.item() == pytest.approx((-1.28 - 0.9 + 0.8 + 1.0 + 1.3) / 5)
    # gradients flow only through unclipped tokens: d(-r A)/d logp = -r A
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0, -0.9 / 5, 0, 0, 1.0 / 5, 1.3 / 5])


def test_k3_kl_by_hand_and_in_the_loss():
    logp = torch.tensor([[0.0, 0.0]])
    ref = torch.tensor([[math.log(2), 0.0]])
    assert k3_kl(logp, ref).flatten().tolist() == pytest.approx([2 - math.log(2) - 1, 0.0])
    assert k3_kl(torch.tensor([0.0]), torch.tensor([-1e4])).tolist() == pytest.approx(
        [math.exp(-20) + 20 - 1])
    # clamped, not inf
    assert torch.isfinite(k3_kl(torch.tensor([-1e4]), torch.tensor([0.0]))).all()
    adv, mask = torch.tensor([0.0]), torch.ones(1, 2)
    loss, stats = grpo_loss(logp, logp, adv, mask, ref_logp=ref, beta=0.1, level="token")
    assert loss.item() == pytest.approx(0.1 * (1 - math.log(2)) / 2)
    assert float(stats.kl) == pytest.approx((1 - math.log(2)) / 2)


def test_log_probs_with_shared_prompts_equal_each_sequence_run_whole():
    """token_logprobs runs each distinct prompt once and its completions against its latents: the
    same log-probs, entropies and gradients as running every prompt + completion as one sequence."""
    from nanoseek.model.config import PRESETS
    from nanoseek.model.model import Transformer
    from nanoseek.train.grpo import token_logprobs

    torch.manual_seed(0)
    model = Transformer(PRESETS["tiny"])
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(7, 300, (k,), generator=g).tolist() for k in (9, 4, 13)]
    P = [prompts[i // 3] for i in range(9)]  # groups of 3
    C = [torch.randint(7, 300, (k,), generator=g).tolist() for k in (5, 1, 8, 3, 3, 6, 1, 2, 7)]
    logp, mask, ent = token_logprobs(model, P, C, torch.device("cpu"), entropy=True)
    (logp * mask).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert mask.sum() == sum(map(len, C)) and logp.shape == (9, 8)
    total = 0
    for i, (p, c) in enumerate(zip(P, C)):
        full = model(torch.tensor([p + c])).logits[0].log_softmax(-1)[len(p) - 1: -1]  # predicts c
        ref = full.gather(1, torch.tensor(c)[:, None])[:, 0]
        # other kernels, other summation order
        torch.testing.assert_close(logp[i, : len(c)], ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ent[i, : len(c)], -(full.exp() * full).sum(-1).detach(),
                                   rtol=1e-4, atol=1e-5)
        total = total + ref.sum()
    total.backward()
    assert grads.keys() == {k for k, p in model.named_parameters() if p.grad is not None}
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("family", ["deepseek_v3", "llama"])
def test_log_probs_under_bf16_autocast_as_a_gpu_update_runs(family):
    """The update's forward under bf16 autocast (what it runs in on a GPU; here on the CPU): the
    prompt-sharing cache takes the mixed dtypes (a GQA model's bf16 values beside fp32 keys), the
    log-probs stay fp32 and near fp32's, and gradients reach the fp32 weights."""
    from nanoseek.model.config import PRESETS, ModelConfig
    from nanoseek.model.model import Transformer
    from nanoseek.train.grpo import token_logprobs

    torch.manual_seed(0)
    cfg = PRESETS["tiny"] if family == "deepseek_v3" else ModelConfig(
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(1)
    P = [torch.randint(7, 300, (9,), generator=g).tolist()] * 2
    C = [torch.randint(7, 300, (k,), generator=g).tolist() for k in (5, 3)]
    want, _, _ = token_logprobs(model, P, C, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, mask, _ = token_logprobs(model, P, C, torch.device("cpu"))
    assert logp.dtype == torch.float32
    assert ((logp - want).abs() * mask).max() < 0.1
    (logp * mask).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if not n.startswith("mtp.")]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


@pytest.mark.parametrize("level,mu", [("sequence", 1), ("token", 2)])
def test_leaving_out_zero_advantage_completions_changes_no_update(level, mu):
    """With beta 0, completions of groups whose rewards are all equal add nothing to the gradient,
    so the update leaves them out: the parameters after it equal those of the update that ran them
    all, also when every group is flat (the optimizer still steps, as on a zero gradient)."""
    from nanoseek.model.config import PRESETS
    from nanoseek.model.model import Transformer
    from nanoseek.tasks.rewards import Reward
    from nanoseek.train.grpo import GRPOConfig, Rollout, TokenLogprobs, _update
    from nanoseek.train.runtime import setup_distributed

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(7, 300, (k,), generator=g).tolist() for k in (9, 4, 13)]
    P = [prompts[i // 3] for i in range(9)]
    C = [torch.randint(7, 300, (k,), generator=g).tolist() for k in (5, 1, 8, 3, 3, 6, 1, 2, 7)]
    world, dev = setup_distributed("cpu")
    # groups (varied, flat, varied): 24 of the 36 tokens run; then every group flat: none
    for totals, ran in (([1, 0, 1, 0.5, 0.5, 0.5, 0, 0, 1.1], 24 / 36),
                        ([1, 1, 1, 0, 0, 0, 2, 2, 2], 0.0)):
        batch = Rollout(P, C, [Reward(0, 0, 0, 0, t) for t in totals], ["stop"] * 9, 3)
        after, records = [], []
        for full in (True, False):
            torch.manual_seed(0)
            model = Transformer(PRESETS["tiny"])
            cfg = GRPOConfig(model="x", group_size=3, micro_batch_size=2, loss_level=level, mu=mu,
                             grad_clip=0, lr=1.0, train_zero_advantage=full)
            # plain SGD with decay: the step is the gradient itself (Adam's first step would hide
            # its scale)
            sgd = torch.optim.SGD(model.parameters(), weight_decay=0.01)
            records.append(_update(TokenLogprobs(model), model, None, sgd, batch, cfg, 0, dev,
                                   world))
            after.append(dict(model.named_parameters()))
        assert records[0]["trained_fraction"] == 1
        assert records[1]["trained_fraction"] == pytest.approx(ran)
        for k, p in after[0].items():
            torch.testing.assert_close(after[1][k], p, rtol=1e-5, atol=1e-7, msg=k)
        assert records[1]["loss"] == pytest.approx(records[0]["loss"], abs=1e-6)
        assert records[1]["clip_low"] == pytest.approx(records[0]["clip_low"], abs=1e-6)


def test_bad_arguments():
    logp, old, adv, mask = inputs()
    with pytest.raises(ValueError, match="level must be one of sequence, token"):
        grpo_loss(logp, old, adv, mask, level="batch")
    with pytest.raises(ValueError, match="needs the reference"):
        grpo_loss(logp, old, adv, mask, beta=0.01)


# ---------------------------------------------------------------------------------------------
# the loop, on the tiny chat model of conftest.py

# a trivially learnable task: the final answer is one character (about 1 in 5 of the tiny model's
# sampled answers at the start)
ONE_CHAR_TASK = '''
import random
def prompts():
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        yield {"prompt": f"Calculate {a} + {b}.", "reference": str(a + b)}
def score(completion, reference):
    return float(len(completion.split("</think>")[-1].strip()) == 1)
'''


def grpo_config(tmp_path, model, **kw):
    from nanoseek.train.grpo import GRPOConfig

    task = tmp_path / "one_char.py"
    task.write_text(ONE_CHAR_TASK)
    base = dict(model=str(model), task=str(task), task_size=200, held_out=40, steps=20,
                prompts_per_step=8, group_size=8, max_tokens=32, lr=3e-4, eval_every=10,
                save_every=0, progress=False, out_dir=str(tmp_path / "run"))
    return GRPOConfig(**{**base, **kw})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rollout_dtype", ["auto", "bfloat16"])
def test_grpo_raises_the_reward_of_a_learnable_task(tiny_chat_dir, tmp_path, rollout_dtype):
    """With bfloat16, rollouts run on a bf16 copy of the fp32 policy refreshed after every update,
    as on a GPU: were it not refreshed, the rollouts' accuracy would stay the starting model's."""
    from nanoseek.train.grpo import train_grpo

    cfg = grpo_config(tmp_path, tiny_chat_dir, rollout_dtype=rollout_dtype)
    _, last = train_grpo(cfg)
    rows = [r for r in metrics(tmp_path / "run") if "reward" in r]
    first = rows[0]["accuracy"]  # step 1's rollouts come from the starting model
    final = sum(r["accuracy"] for r in rows[-4:]) / 4
    assert first < 0.4 and final > first + 0.4, (first, final)
    held = [r["eval_accuracy"] for r in metrics(tmp_path / "run") if "eval_accuracy" in r]
    assert len(held) == 3 and held[-1] > held[0] + 0.3  # steps 0, 10, 20, greedy on unseen prompts
    for key in ("reward_format", "reward_language", "reward_overlong", "response_len",
                "response_len_max", "kl", "clip_low", "clip_high", "entropy", "grad_norm",
                "rollout_tokens_per_s", "train_tokens_per_s", "samples_per_s"):
        assert key in last and math.isfinite(last[key]), key
    assert (tmp_path / "run" / "rewards.png").exists()
    assert (tmp_path / "run" / "response_length.png").exists()
    assert (tmp_path / "run" / "checkpoints" / "step_000020" / "model.safetensors").exists()


def test_grpo_options_run_and_log(tiny_chat_dir, tmp_path):
    """KL to a reference that is refreshed, mu = 2 inner steps, token-level averaging, clip-higher
    and dynamic sampling: the numbers they log are what they should be."""
    from nanoseek.train.grpo import train_grpo

    # groups of 4, so that some have no variance (all right or all wrong) for dynamic sampling to
    # drop
    cfg = grpo_config(tmp_path, tiny_chat_dir, steps=4, beta=0.05, ref_refresh=2, mu=2,
                      loss_level="token", eps_high=0.28, dynamic_sampling=True, eval_every=0,
                      micro_batch_size=24, group_size=4, max_resample=8)
    train_grpo(cfg)
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["kl"] > 0  # mu = 2: the second step's policy has moved away from the reference
    # dynamic sampling refilled the batch with varied groups
    assert all(r["groups"] == 8 for r in rows)
    assert any(r["groups_dropped"] > 0 for r in rows)
    assert all(0 <= r["clip_low"] <= 1 and 0 <= r["clip_high"] <= 1 for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "step_000004" / "reference.safetensors").exists()


def test_grpo_resumes_exactly_after_a_kill(tiny_chat_dir, tmp_path):
    """SIGKILL after the step-3 checkpoint, then --resume: the same completions, losses and final
    weights as a run that was never interrupted."""
    from safetensors.torch import load_file

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "nanoseek", "grpo", str(tiny_chat_dir),
                "--task", str(tmp_path / "one_char.py"), "--task-size", "200", "--held-out", "40",
                "--steps", "6", "--prompts-per-step", "4", "--group-size", "4",
                "--max-tokens", "24", "--lr", "3e-4", "--eval-every", "0", "--save-every", "3",
                "--no-progress", "--out-dir", str(out)]

    grpo_config(tmp_path, tiny_chat_dir)  # writes the task file
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "straight"), check=True, env=env, capture_output=True)
    p = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoints" / "step_000003" / "train_state.json"
    deadline = time.time() + 120
    while not state.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert state.exists()
    subprocess.run(cmd(tmp_path / "killed") + ["--resume"], check=True, env=env,
                   capture_output=True)
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "killed")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("reward", "response_len", "loss", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    wa = load_file(tmp_path / "straight" / "checkpoints" / "step_000006" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "checkpoints" / "step_000006" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grpo_on_a_converted_models_own_chat_format(chatml_student_dir, tmp_path):
    """A student in a foreign chat format (conftest: ChatML whose prompt does not open the think
    block; R1's tags written by the model as text): rollouts are prompted in its template, and
    its R1-format completions earn the format reward; a completion the prompt's format would
    call well-formed (no opening tag) earns none."""
    from nanoseek.infer.engine import Engine
    from nanoseek.tasks.load import user_task
    from nanoseek.train.grpo import rollout, train_grpo

    cfg = grpo_config(tmp_path, chatml_student_dir, steps=2, prompts_per_step=4, group_size=4,
                      max_tokens=24, eval_every=2, format_weight=1.0, temperature=0.6,
                      task=str(tmp_path / "sums.py"), task_size=60, held_out=8)
    # sums of digits, as the student was taught
    (tmp_path / "sums.py").write_text(
        "def prompts():\n    for a in range(10):\n        for b in range(6):\n"
        "            yield f'Calculate {a} + {b}.', str(a + b)\n"
        "def score(completion, reference):\n"
        "    return float(completion.split('</think>')[-1].strip() == reference)\n")
    engine = Engine.from_checkpoint(str(chatml_student_dir), max_batch=16, max_seq_len=96,
                                    speculative=False)
    task = user_task(tmp_path / "sums.py", 8)
    batch = rollout(engine, task, task.examples[:4], [0, 1, 2, 3], cfg)
    for i, ids in enumerate(batch.prompt_ids):
        user = [{"role": "user", "content": task.examples[i // 4].prompt}]
        assert ids == engine.tok.encode_chat(user) and engine.tok.decode(ids).endswith(
            "<|im_start|>assistant\n")
    texts = [engine.tok.decode(c, skip_special_tokens=True) for c in batch.completion_ids]
    formed = [r.format for r in batch.rewards]
    assert sum(formed) >= 10 and all(f == float(t.lstrip().startswith("<think>"))
                                     for f, t in zip(formed, texts) if "</think>" in t)
    _, last = train_grpo(cfg)
    rows = [r for r in metrics(tmp_path / "run") if "reward" in r]
    assert len(rows) == 2 and all(r["reward_format"] >= 0.6 for r in rows)
    assert math.isfinite(last["loss"])


def test_grpo_cli_errors_are_clear(tiny_chat_dir, tmp_path, capsys):
    from nanoseek.cli import main

    bad = tmp_path / "bad.py"
    bad.write_text("def prompts():\n    yield {'prompt': 'x', 'reference': '1'}\n")
    argv = ["grpo", str(tiny_chat_dir), "--task", str(bad), "--out-dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "must define score()" in capsys.readouterr().err
    assert main(["grpo", str(tiny_chat_dir), "--group-size", "1"]) == 2
    assert "'group_size': 1 is invalid; must be >= 2" in capsys.readouterr().err
    assert main(["grpo", str(tmp_path), "--task", str(bad)]) == 2
    assert "is not a checkpoint directory" in capsys.readouterr().err


def test_grpo_into_an_earlier_run_is_refused(tiny_chat_dir, tmp_path):
    from nanoseek.train.grpo import train_grpo
    from nanoseek.train.runtime import TrainConfigError

    cfg = grpo_config(tmp_path, tiny_chat_dir)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0, "eval_accuracy": 0.1}\n')
    with pytest.raises(TrainConfigError, match="holds an earlier run.*--resume.*--overwrite"):
        train_grpo(cfg)


def test_torchrun_two_ranks_match_one_process(tiny_chat_dir, tmp_path):
    """Two gloo ranks, each rolling out half the prompts, against one process: the same completions
    (a prompt's seed is its place in the stream), gradients and weights."""
    from safetensors.torch import load_file

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed")
    grpo_config(tmp_path, tiny_chat_dir)  # writes the task file
    args = ["grpo", str(tiny_chat_dir), "--task", str(tmp_path / "one_char.py"), "--task-size",
            "100", "--held-out", "10", "--steps", "3", "--prompts-per-step", "4", "--group-size",
            "4", "--max-tokens", "24", "--micro-batch-size", "2", "--loss-level", "token",
            "--eval-every", "0", "--no-progress"]
    # (micro-batches of 2: the ranks run unequal numbers of them; token level: their token counts
    # differ)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "nanoseek", *args, "--out-dir", str(tmp_path / "one")],
                   check=True, env=env, capture_output=True)
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "nanoseek",
                        *args, "--out-dir", str(tmp_path / "two")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [x["world_size"] for x in b] == [2, 2, 2]
    for x, y in zip(a, b):
        assert (x["response_len"], x["accuracy"]) == (y["response_len"], y["accuracy"])
        # a float32 mean of two means vs of all
        assert x["reward"] == pytest.approx(y["reward"], rel=1e-6)
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-5 * max(1.0, x["grad_norm"])
    wa = load_file(tmp_path / "one" / "checkpoints" / "step_000003" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "checkpoints" / "step_000003" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
