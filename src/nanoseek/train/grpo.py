"""GRPO (DeepSeekMath §4.1, R1 §2.2.1): its objective, with the variants that matter at small
scale.

For a group of G completions of one prompt with rewards r_1..r_G, every token of completion i gets
the advantage A_i = (r_i - mean r) / (std r + eps) (Dr. GRPO: without the division). The loss
maximises

    min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) - beta * KL,   rho = pi_theta / pi_old,

per token, with KL by the k3 estimator pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (unbiased, >= 0),
its log-ratio clamped to +-20 as verl does, so one wild token cannot make it inf. A separate, higher
eps_high is DAPO's clip-higher. Averaging: `sequence` (GRPO: each completion's token mean, then the
mean over completions) or `token` (DAPO: all tokens of the batch weigh the same, so long answers are
not diluted).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from nanoseek import hardware
from nanoseek.checkpoint import load_model
from nanoseek.infer.engine import Engine, leaves_reasoning_open
from nanoseek.infer.sampling import SamplingParams, item_seed
from nanoseek.model.model import Transformer, update_correction_bias
from nanoseek.tasks.load import load_task
from nanoseek.tasks.rewards import TEMPLATES, Reward, RewardConfig, render_prompt, reward
from nanoseek.tasks.task import Example, Task
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.runtime import (
    RunOptions,
    Stop,
    TrainConfigError,
    World,
    adamw_options,
    all_mean,
    build_optimizer,
    check,
    finish,
    load_training_state,
    opt,
    save_checkpoint,
    setup_distributed,
    start_run,
)
from nanoseek.train.telemetry import Telemetry

LEVELS = ("sequence", "token")
KL_CLAMP = 20.0


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> Tensor:
    """(B*G,) rewards, groups contiguous -> (B*G,) advantages; a group whose rewards are all equal
    gets 0."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    a = r - r.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        std = r.std(dim=1, keepdim=True, unbiased=True)
        a = a / torch.where(std > 0, std + eps, 1.0)  # equal rewards: 0, never 0/0
    return a.view(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate: exp(x) - x - 1, x = log pi_ref - log pi_theta."""
    x = (ref_logp - logp).clamp(-KL_CLAMP, KL_CLAMP)
    return x.exp() - x - 1


@dataclass
class LossStats:
    """0-d tensors, left on the device: reading them (.item()) would stall a GPU every
    micro-batch."""

    loss: Tensor
    policy_loss: Tensor
    kl: Tensor  # mean per-token k3 KL (0 when beta is 0 and no reference is kept)
    clip_low: Tensor  # fraction of tokens whose ratio was clipped below (negative advantage)
    clip_high: Tensor  # ... and above (positive advantage)
    ratio: Tensor  # mean pi_theta / pi_old


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
              ref_logp: Tensor | None = None, beta: float = 0.0, eps_low: float = 0.2,
              eps_high: float = 0.2, level: str = "sequence") -> tuple[Tensor, LossStats]:
    """The loss to minimise. logp, old_logp, ref_logp, mask: (N, T) per completion token (mask 1 on
    the completion's tokens, 0 on padding); advantages: (N,)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if beta and ref_logp is None:
        raise ValueError("beta > 0 needs the reference model's log-probs (ref_logp)")
    mask = mask.to(logp.dtype)
    ratio = (logp - old_logp).exp()
    adv = advantages[:, None].to(logp.dtype)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if beta:
        per_token = per_token + beta * kl

    def average(x: Tensor) -> Tensor:
        if level == "token":
            return (x * mask).sum() / mask.sum().clamp(min=1)
        return ((x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()

    loss = average(per_token)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = LossStats(
            loss=loss.detach(), policy_loss=average(-torch.min(ratio * adv, clipped * adv)),
            kl=(kl * mask).sum() / n,
            clip_low=(((ratio < 1 - eps_low) & (adv < 0)) * mask).sum() / n,
            clip_high=(((ratio > 1 + eps_high) & (adv > 0)) * mask).sum() / n,
            ratio=(ratio * mask).sum() / n)
    return loss, stats


# ---------------------------------------------------------------------------------------------
# The loop: rollouts by the engine, rewards by the task, updates by the objective above


@dataclass
class GRPOConfig(adamw_options(lr=5e-5, lr_help="learning rate (constant after warmup); RL wants "
                                                "it well below pretraining's",
                               warmup_steps=0, weight_decay=0.0, beta2=0.99), RunOptions):
    model: str = opt("", "checkpoint directory to start from (a base model for R1-Zero, an SFT "
                         "model for R1)")
    task: str = opt("gym:basic_arithmetic", "gym:NAME (reasoning-gym), FILE.jsonl "
                                            "(GSM8K/MATH/prompt+answer) or FILE.py (your prompts() "
                                            "and score())")
    task_config: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "reasoning-gym options of a gym: task, a JSON object such as {\"min_terms\": 2}"})
    task_size: int = opt(2000, "examples drawn from the task (train + held-out)")
    task_seed: int = opt(0, "seed of a gym: task's examples and of the held-out split")
    held_out: int = opt(100, "examples kept out of training for the held-out accuracy")
    out_dir: str = opt("runs/grpo", "run directory: checkpoints/, metrics.jsonl, plots")
    steps: int = opt(50, "rollout batches (one or more optimizer steps each, see mu)")
    max_seconds: float = opt(0.0, "also stop once the run has trained this long (0 = no limit): a "
                                  "compute budget")
    prompts_per_step: int = opt(16, "prompts per rollout batch (over all ranks)")
    group_size: int = opt(8, "completions sampled per prompt (G)")
    max_tokens: int = opt(128, "tokens per completion, reasoning included")
    temperature: float = opt(1.0, "rollout sampling temperature")
    top_p: float = opt(1.0, "rollout nucleus sampling")
    mu: int = opt(1, "optimizer steps per rollout batch; old-policy log-probs are fixed before the "
                     "first")
    micro_batch_size: int = opt(32, "completions per forward/backward")
    beta: float = opt(0.0, "KL coefficient to the reference model (0: no reference model is kept)")
    ref_refresh: int = opt(0, "copy the policy into the reference every N steps (0 = never)")
    eps_low: float = opt(0.2, "lower clip of the ratio: 1 - eps_low")
    eps_high: float = opt(0.2, "upper clip: 1 + eps_high (DAPO's clip-higher: 0.28)")
    loss_level: str = opt("sequence", "sequence (GRPO: mean over each completion's tokens, then "
                                      "over completions) or token (DAPO: every token of the batch "
                                      "weighs the same)")
    scale_rewards: bool = opt(True, "divide advantages by the group's reward std (off: Dr. GRPO)")
    dynamic_sampling: bool = opt(False, "DAPO: drop groups whose rewards are all equal and sample "
                                        "more prompts")
    max_resample: int = opt(3, "dynamic sampling: extra rounds of prompts per step at most")
    train_zero_advantage: bool = opt(False, "also run completions whose advantage is 0 through "
                                            "the update: with beta 0 their gradient is exactly 0, "
                                            "so by default they are left out (ratio, entropy and "
                                            "expert loads then count the tokens that ran)")
    rollout_dtype: str = opt("auto", "dtype of the rollout engine's copy of the policy: auto "
                                     "(bfloat16 on a GPU, where its decode steps run as CUDA "
                                     "graphs; on a CPU the float32 policy itself), float32 or "
                                     "bfloat16")
    template: str = opt("chat", "chat (R1: the prompt opens <think>; a converted model's own chat "
                                "template, R1's think tags as text) or r1-zero (the R1-Zero text "
                                "template)")
    format_weight: float = opt(0.1, "weight of the format reward")
    language_weight: float = opt(0.0, "weight of R1's language-consistency reward")
    overlong_weight: float = opt(0.0, "weight of DAPO's overlong penalty")
    overlong_buffer: int = opt(0, "tokens before max_tokens over which the overlong penalty ramps "
                                  "to -1")
    eval_every: int = opt(10, "held-out accuracy (greedy) every N steps and at the start and end "
                              "(0 = never)")
    save_every: int = opt(10, "checkpoint every N steps (the end is always saved)")
    seed: int = opt(0, "seed of the prompt order and of the rollouts")

    def validate(self) -> None:
        check(self, "grpo config", [("model", bool(self.model), "a checkpoint directory")]
              + self.run_rules() + self.adamw_rules() + [
            ("steps", self.steps > 0, "> 0"),
            ("prompts_per_step", self.prompts_per_step > 0, "> 0"),
            ("group_size", self.group_size >= 2,
             ">= 2 (advantages compare completions of a prompt)"),
            ("max_tokens", self.max_tokens > 0, "> 0"),
            ("temperature", self.temperature > 0, "> 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("mu", self.mu >= 1, ">= 1"), ("micro_batch_size", self.micro_batch_size > 0, "> 0"),
            ("beta", self.beta >= 0, ">= 0"), ("ref_refresh", self.ref_refresh >= 0, ">= 0"),
            ("eps_low", 0 <= self.eps_low < 1, "in [0, 1)"),
            ("eps_high", self.eps_high >= 0, ">= 0"),
            ("loss_level", self.loss_level in LEVELS, " or ".join(LEVELS)),
            ("template", self.template in TEMPLATES, " or ".join(TEMPLATES)),
            ("rollout_dtype", self.rollout_dtype in ("auto", "float32", "bfloat16"),
             "auto, float32 or bfloat16"),
            ("held_out", 0 < self.held_out < self.task_size,
             f"in [1, task_size - 1 = {self.task_size - 1}]"),
            ("max_resample", self.max_resample >= 0, ">= 0"),
            ("max_seconds", self.max_seconds >= 0, ">= 0"),
            ("eval_every", self.eval_every >= 0, ">= 0"),
            ("save_every", self.save_every >= 0, ">= 0"),
            ("overlong_buffer", 0 <= self.overlong_buffer <= self.max_tokens,
             "in [0, max_tokens]")])

    def rewards(self) -> RewardConfig:
        return RewardConfig(template=self.template, format=self.format_weight,
                            language=self.language_weight, overlong=self.overlong_weight,
                            max_tokens=self.max_tokens, overlong_buffer=self.overlong_buffer)


@dataclass
class Rollout:
    """One rollout batch, flattened: completion i belongs to group i // group_size."""
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rewards: list[Reward]
    finish: list[str]
    groups: int


def rollout(engine: Engine, task: Task, examples: list[Example], seeds: list[int],
            cfg: GRPOConfig) -> Rollout:
    """group_size completions of each example, sampled with its seed, and their rewards."""
    params = [SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_tokens=cfg.max_tokens, seed=seed) for seed in seeds]
    done = engine.generate([render_prompt(e.prompt, cfg.template, engine.tok) for e in examples],
                           params)
    rcfg = cfg.rewards()
    out = Rollout([], [], [], [], len(examples))
    for j, c in enumerate(done):
        ex = examples[j // cfg.group_size]
        out.prompt_ids.append(c.prompt_token_ids)
        out.completion_ids.append(c.token_ids)
        # the format asked of it: does the prompt open the think block, or must the model?
        opened = leaves_reasoning_open(c.prompt_token_ids, engine.tok)
        out.rewards.append(reward(c.text, task.score(c.text, ex), rcfg, ex.prompt,
                                  len(c.token_ids), opened))
        out.finish.append(c.finish_reason)
    return out


class PromptStream:
    """This rank's share of the training prompts, epoch-shuffled in an order fixed by the seed. Each
    prompt's sampling seed is its place in the stream, so the completions do not depend on the world
    size, on what else is in the batch, or on whether the run was resumed (cursor: the place the
    next batch starts at, kept in checkpoints)."""

    def __init__(self, engine: Engine, task: Task, cfg: GRPOConfig, world: World, cursor: int):
        self.engine, self.task, self.cfg, self.world, self.cursor = engine, task, cfg, world, cursor
        self.order = _prompt_order(len(task.examples), cfg.seed)

    def next(self, k: int) -> Rollout:
        """Roll out this rank's k prompts of the next k x world size."""
        first = self.cursor + self.world.rank * k
        places = list(range(first, first + k))
        self.cursor += k * self.world.size
        return rollout(self.engine, self.task, [self.task.examples[self.order(p)] for p in places],
                       [item_seed(self.cfg.seed, p) for p in places], self.cfg)


def _prompt_order(n: int, seed: int) -> Callable[[int], int]:
    """Position -> example index: a fresh shuffle of the n examples each epoch, fixed by the seed
    (so a resumed run draws the same prompts from its saved cursor)."""
    perms: dict[int, list[int]] = {}

    def at(position: int) -> int:
        epoch = position // n
        if epoch not in perms:
            perms[epoch] = list(range(n))
            random.Random(item_seed(seed, epoch)).shuffle(perms[epoch])
        return perms[epoch][position % n]
    return at


class _PromptKV:
    """Duck-types the KVCache interface for a training forward: update() is out of place, so
    gradients flow through the cached latents. Holds one (rows, max_len, rank + rope) tensor per
    layer."""

    def __init__(self, layers: list[Tensor], max_len: int):
        self.layers, self.max_len = layers, max_len

    def update(self, layer_id: int, positions: Tensor, kv: Tensor, kv_len: int) -> Tensor:
        index = positions[..., None].expand(-1, -1, kv.shape[-1])
        # the layer's dtype: under autocast a GQA model's values come out bf16, its keys fp32
        new = self.layers[layer_id].scatter(1, index, kv.to(self.layers[layer_id].dtype))
        self.layers[layer_id] = new
        return new[:, :kv_len]


def _padded(rows: list[list[int]], width: int) -> Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def token_logprobs(model: Transformer, prompts: list[list[int]], completions: list[list[int]],
                   device: torch.device,
                   entropy: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """log pi(token) of every completion token (N, T) with its mask, right-padded to the longest
    completion, and optionally the policy's entropy at those positions.

    A group's completions share their prompt, so each distinct prompt runs once (as the engine's
    prefill shares it among n samples): its latents are gathered into the rows of its completions,
    which then run at their offsets attending to them, and gradients reach the prompt through the
    gather. With G = 8 and prompts twice as long as the answers, that is about 2.5x fewer tokens
    than prompt + completion per row. (The expert loads that aux-loss-free balancing sees count
    each prompt token once, not once a sample.)
    """
    cfg = model.cfg
    T = max(len(c) for c in completions)
    distinct: dict[tuple[int, ...], int] = {}
    which = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts],
                         device=device)
    uniq = [list(p) for p in distinct]
    plen = torch.tensor([len(p) for p in prompts], device=device)
    P = max(len(p) for p in uniq)
    L = int((plen + T).max())
    width = cfg.kv_cache_dim
    dtype = model.embed_tokens.weight.dtype
    kv = _PromptKV([torch.zeros(len(uniq), L, width, dtype=dtype, device=device)
                    for _ in range(cfg.num_hidden_layers)], L)
    out = model(_padded(uniq, P).to(device), cache=kv, absorb=False)
    ulen = torch.tensor([len(p) for p in uniq], device=device)
    # the prompt's last position predicts completion token 0
    logits = out.logits[torch.arange(len(uniq), device=device), ulen - 1][which][:, None]
    if T > 1:  # completion tokens 0..T-2 predict tokens 1..T-1, at positions len(prompt)..
        kv.layers = [t[which] for t in kv.layers]
        rest = model(_padded([c[:-1] for c in completions], T - 1).to(device), cache=kv,
                     start_pos=plen, absorb=False).logits
        logits = torch.cat([logits, rest], dim=1)
    targets = _padded(completions, T).to(device)
    lengths = torch.tensor([len(c) for c in completions], device=device)
    mask = torch.arange(T, device=device)[None] < lengths[:, None]
    logp_all = logits.float().log_softmax(dim=-1)
    logp = logp_all.gather(2, targets[..., None]).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, mask.float(), ent


class TokenLogprobs(torch.nn.Module):
    """The policy's token_logprobs as one module call: DDP allows one forward per backward, and
    token_logprobs runs the model twice (prompts, then completions)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, prompts: list[list[int]], completions: list[list[int]], entropy: bool = False
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        device = self.model.embed_tokens.weight.device
        return token_logprobs(self.model, prompts, completions, device, entropy)


def train_grpo(cfg: GRPOConfig, resume: bool = False) -> tuple[Transformer, dict[str, Any]]:
    """Run (or resume) GRPO; returns the trained model and the last metrics record."""
    # set-up: ranks, task, run directory, policy (and reference), engine, optimizer
    cfg.validate()
    world, dev = setup_distributed(cfg.device)
    if cfg.prompts_per_step % world.size:
        raise TrainConfigError(f"grpo config 'prompts_per_step': {cfg.prompts_per_step} is not a "
                               f"multiple of the world size {world.size}")
    run = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    train_task, test_task = _tasks(cfg)
    start = start_run(cfg, world, resume, "grpo_config.json")
    model, ref, tok = _models(cfg, start, dev)
    per_rank = cfg.prompts_per_step // world.size
    rollout_model = _rollout_model(model, cfg, dev)
    engine = _engine(rollout_model, tok, train_task.examples + test_task.examples, per_rank, cfg)
    policy = _policy(model, world)
    optim = build_optimizer(model, cfg)

    # resume: optimizer moments, RNG states, the prompt stream's place, the reference
    step, cursor, elapsed, samples = 0, 0, 0.0, 0
    if start is not None:
        state = load_training_state(start, model, optim, fsdp=False)
        step, cursor, elapsed, samples = (state[k] for k in ("step", "cursor", "elapsed_s",
                                                             "samples"))
        if ref is not None and cfg.ref_refresh:
            ref.load_state_dict(load_file(start / "reference.safetensors"))
        _refresh(rollout_model, model)
    tel = Telemetry(run, cfg, world.main, total_steps=cfg.steps, start_step=step, device=dev,
                    bar={"reward": "reward", "acc": "accuracy", "len": "response_len"})
    stream = PromptStream(engine, train_task, cfg, world, cursor)
    stop = Stop()
    record: dict[str, Any] = {}
    try:
        if cfg.eval_every and step == 0:  # eval: the starting model's held-out accuracy
            tel.log({"step": 0, "eval_accuracy": held_out_accuracy(engine, test_task, cfg)},
                    advance=False)
        while step < cfg.steps and not (cfg.max_seconds and elapsed >= cfg.max_seconds):
            # step: a rollout batch (flat groups replaced, with dynamic sampling), mu updates on it
            t0 = time.perf_counter()
            batch, dropped = stream.next(per_rank), 0
            if cfg.dynamic_sampling:
                batch, dropped = _keep_varied(batch, cfg, stream.next)
            t_roll = time.perf_counter() - t0
            record = _update(policy, model, ref, optim, batch, cfg, step, dev, world)
            _refresh(rollout_model, model)
            if ref is not None and cfg.ref_refresh and (step + 1) % cfg.ref_refresh == 0:
                ref.load_state_dict(model.state_dict())
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            n_done = len(batch.completion_ids)
            samples += n_done * world.size

            # log: the batch's rewards and lengths over ranks, its speeds, the held-out accuracy
            generated = sum(len(c) for c in batch.completion_ids) * world.size
            record.update({"step": step, **_rollout_stats(batch, dev, world),
                           "groups_dropped": dropped, "samples": samples, "rollout_s": t_roll,
                           "train_s": dt - t_roll, "rollout_tokens_per_s": generated / t_roll,
                           "samples_per_s": n_done * world.size / dt, "elapsed_s": elapsed,
                           "world_size": world.size})
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                record["eval_accuracy"] = held_out_accuracy(engine, test_task, cfg)
            tel.log(record)

            # save, and stop: at the end, on a signal, or out of time (ranks agree: clocks differ)
            stopping = stop.agreed(world, dev)
            out_of_time = bool(cfg.max_seconds) and all_mean(
                torch.tensor([elapsed], device=dev), world).item() >= cfg.max_seconds
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stopping \
                    or out_of_time:
                keep_ref = ref is not None and cfg.ref_refresh
                extra = {"reference.safetensors": ref.state_dict()} if keep_ref else {}
                position = {"cursor": stream.cursor, "elapsed_s": elapsed, "samples": samples}
                save_checkpoint(run, step, model, optim, position, tok, cfg.keep_last, world, False,
                                extra)
            if stopping or out_of_time:
                break
    finally:
        stop.restore()
    finish(tel, world)
    return model, record


def _tasks(cfg: GRPOConfig) -> tuple[Task, Task]:
    """The task's examples, split into training and held-out ones."""
    if not (Path(cfg.model) / "config.json").exists():
        raise TrainConfigError(f"grpo config 'model': {cfg.model} is not a checkpoint directory "
                               "(no config.json)")
    task = load_task(cfg.task, cfg.task_size, cfg.task_seed, cfg.task_config or None)
    if len(task.examples) <= cfg.held_out:
        raise TrainConfigError(f"grpo config 'held_out': {cfg.held_out} leaves no training "
                               f"examples of the {len(task.examples)} that task {task.name} has")
    return task.split(cfg.held_out, cfg.task_seed)


def _models(cfg: GRPOConfig, start: Path | None,
            dev: torch.device) -> tuple[Transformer, Transformer | None, Tokenizer]:
    """The policy (the starting checkpoint, or the run's latest), the frozen reference when beta > 0
    (the starting model, or the policy at the last refresh), and the tokenizer."""
    weights = start or Path(cfg.model)
    model = load_model(weights, device=dev, dtype=torch.float32)
    tok = Tokenizer.load(weights)
    ref = None
    if cfg.beta > 0:
        ref = load_model(Path(cfg.model), device=dev, dtype=torch.float32)
        ref.eval().requires_grad_(False)
    return model, ref, tok


def _rollout_model(model: Transformer, cfg: GRPOConfig, dev: torch.device) -> Transformer:
    """The weights rollouts run on: the policy itself where they share its dtype (fp32 on a CPU),
    else a copy in rollout_dtype (bf16 on a GPU: half the bytes a decode step reads, and the dtype
    whose steps run as CUDA graphs), refreshed after every update by _refresh."""
    dtype = (hardware.compute_dtype(dev) if cfg.rollout_dtype == "auto"
             else getattr(torch, cfg.rollout_dtype))
    if dtype == model.embed_tokens.weight.dtype:
        return model
    return copy.deepcopy(model).to(dtype).eval().requires_grad_(False)  # routing buffers stay fp32


@torch.no_grad()
def _refresh(rollout_model: Transformer, model: Transformer) -> None:
    """The rollout copy takes the policy's new weights and correction biases (one device copy)."""
    if rollout_model is not model:
        for dst, src in zip(rollout_model.state_dict().values(), model.state_dict().values()):
            dst.copy_(src)


def _engine(model: Transformer, tok: Tokenizer, examples: list[Example], per_rank: int,
            cfg: GRPOConfig) -> Engine:
    """The rollout engine over the rollout weights, sized for the longest prompt; on a GPU in bf16
    its decode steps are CUDA graphs (Engine's compile)."""
    longest = max(len(tok.encode(render_prompt(e.prompt, cfg.template, tok))) for e in examples)
    graphs = model.embed_tokens.weight.is_cuda and model.embed_tokens.weight.dtype == torch.bfloat16
    return Engine(model, tok, max_batch=min(per_rank * cfg.group_size, 256),
                  max_seq_len=longest + cfg.max_tokens, speculative=False,
                  max_prefill_tokens=max(4096, longest * 64), compile=graphs)


def _policy(model: Transformer, world: World) -> torch.nn.Module:
    """The module each update calls: the model's token log-probs, under torchrun in DDP."""
    model.train()
    # the MTP modules are pretraining's (and speculation's): RL's loss never reaches them, and DDP
    # wants every trained parameter to get a gradient
    model.mtp.requires_grad_(False)
    policy: torch.nn.Module = TokenLogprobs(model)
    if world.size > 1:
        policy = torch.nn.parallel.DistributedDataParallel(policy, broadcast_buffers=False)
    return policy


def _rollout_stats(batch: Rollout, dev: torch.device, world: World) -> dict[str, Any]:
    """The batch's reward parts, accuracy, lengths and truncations, as means over all ranks."""
    n = len(batch.completion_ids)
    lens = [len(c) for c in batch.completion_ids]
    parts = [sum(getattr(r, k) for r in batch.rewards) / n
             for k in ("total", "accuracy", "format", "language", "overlong")]
    truncated = sum(f == "length" for f in batch.finish) / n
    stats = torch.tensor([*parts, sum(lens) / n, truncated], device=dev)
    reward_mean, acc, fmt, lang, over, mean_len, truncated = all_mean(stats, world).tolist()
    return {"reward": reward_mean, "accuracy": acc, "reward_format": fmt, "reward_language": lang,
            "reward_overlong": over, "response_len": mean_len, "response_len_max": max(lens),
            "truncated": truncated, "groups": batch.groups}


def _keep_varied(batch: Rollout, cfg: GRPOConfig,
                 more: Callable[[int], Rollout]) -> tuple[Rollout, int]:
    """DAPO's dynamic sampling: groups whose rewards are all equal have zero advantage and teach
    nothing; drop them and roll out more prompts (more(k)) until the batch has as many groups as
    asked, or max_resample rounds have run. Returns the batch and the number of groups dropped."""
    want, dropped = batch.groups, 0
    kept = Rollout([], [], [], [], 0)
    for r in range(cfg.max_resample + 1):
        G = cfg.group_size
        for g in range(batch.groups):
            sl = slice(g * G, (g + 1) * G)
            totals = {x.total for x in batch.rewards[sl]}
            if len(totals) == 1 or kept.groups == want:
                dropped += len(totals) == 1
                continue
            for name in ("prompt_ids", "completion_ids", "rewards", "finish"):
                getattr(kept, name).extend(getattr(batch, name)[sl])
            kept.groups += 1
        if kept.groups == want or r == cfg.max_resample:
            break
        batch = more(want - kept.groups)
    if kept.groups == 0:  # nothing varied at all: the last batch (zero loss, its stats still count)
        return batch, dropped
    return kept, dropped


# ---------------------------------------------------------------------------------------------
# the update: mu optimizer steps on one rollout batch


def _plan(adv: list[float], cfg: GRPOConfig, dev: torch.device,
          world: World) -> list[tuple[list[int], float]]:
    """The update's micro-batches: (completion indices, weight of their statistics).

    With beta = 0 a completion whose advantage is 0 (every completion of a group with equal rewards)
    adds exactly 0 to the loss and to the gradient, whatever its ratio: min(rho * 0, clip(rho) * 0)
    = 0. Such completions are left out (unless cfg.train_zero_advantage); the loss keeps its
    denominators (all completions, or all tokens), so the gradient is the same up to float
    summation order. Under torchrun every rank must run as many backward passes as the others (each
    ends in a gradient all-reduce): a rank with fewer micro-batches runs completion 0 as a stand-in
    with weight 0 (its gradient and load are not counted)."""
    n = len(adv)
    run = list(range(n)) if cfg.beta or cfg.train_zero_advantage else [i for i in range(n)
                                                                       if adv[i] != 0]
    mb = cfg.micro_batch_size
    parts = [(run[i: i + mb], 1.0) for i in range(0, len(run), mb)]
    want = len(parts)
    if world.size > 1:
        m = torch.tensor([want], device=dev)
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
        want = int(m.item())
    while len(parts) < want:
        parts.append(([0], 0.0))  # completion 0's gradient is scaled by 0 (or is 0: nothing ran)
    return parts


@contextmanager
def _load_kept(model: Transformer) -> Iterator[None]:
    """The MoE layers' routed-load counters as they were before the block (the bias update must not
    see it)."""
    loads = [m.expert_load.clone() for m in model.moe_layers()]
    try:
        yield
    finally:
        for m, load in zip(model.moe_layers(), loads):
            m.expert_load.copy_(load)


def _pick(rows: list, idx: list[int]) -> list:
    return [rows[i] for i in idx]


def _fixed_logprobs(model: Transformer, ref: Transformer | None, batch: Rollout,
                    parts: list[tuple[list[int], float]], cfg: GRPOConfig, dev: torch.device
                    ) -> tuple[list[Tensor | None] | None, list[Tensor] | None]:
    """Each micro-batch's log-probs that stay fixed over the mu steps: pi_old's (only when mu > 1:
    with one step pi_old is the policy itself; a stand-in's: none, it weighs 0) and pi_ref's."""
    P, C = batch.prompt_ids, batch.completion_ids
    old = refs = None
    if cfg.mu > 1:
        # routed load is counted by training forwards only
        with torch.no_grad(), _load_kept(model), hardware.autocast(dev):
            old = [token_logprobs(model, _pick(P, idx), _pick(C, idx), dev)[0] if w else None
                   for idx, w in parts]
    if ref is not None:
        with torch.no_grad(), hardware.autocast(dev):
            refs = [token_logprobs(ref, _pick(P, idx), _pick(C, idx), dev)[0] for idx, _ in parts]
    return old, refs


def _update(policy: torch.nn.Module, model: Transformer, ref: Transformer | None,
            optim: torch.optim.Optimizer, batch: Rollout, cfg: GRPOConfig, step: int,
            dev: torch.device, world: World) -> dict[str, Any]:
    """mu optimizer steps on one rollout batch; returns the loss statistics of the last."""
    totals = torch.tensor([r.total for r in batch.rewards])
    adv_cpu = group_advantages(totals, cfg.group_size, scale=cfg.scale_rewards)
    adv = adv_cpu.to(dev)
    P, C = batch.prompt_ids, batch.completion_ids
    parts = _plan(adv_cpu.tolist(), cfg, dev, world)
    ran = [i for idx, w in parts if w for i in idx]
    # The batch's means are over every rank's completions (sequence) or tokens (token), so a rank
    # weighs its sums by world size / the global count: DDP's gradient average then gives the
    # global mean, the same as one process would (ranks may differ in tokens, and with dynamic
    # sampling in completions).
    counts = torch.tensor([len(C), sum(map(len, C)), sum(len(C[i]) for i in ran)], device=dev,
                          dtype=torch.float64)
    if world.size > 1:
        torch.distributed.all_reduce(counts)
    n_seqs, n_tokens, ran_tokens = (x / world.size for x in counts.tolist())  # per-rank means
    old, refs = _fixed_logprobs(model, ref, batch, parts, cfg, dev)
    t0 = time.perf_counter()
    for it in range(cfg.mu):
        warm = (step * cfg.mu + it + 1) / cfg.warmup_steps if cfg.warmup_steps else 1.0
        lr = cfg.lr * min(1.0, warm)
        for g in optim.param_groups:
            g["lr"] = lr
        # loss, policy loss, kl, clip low, clip high (means over all tokens: a left-out token has 0
        # of each), then ratio and entropy (means over the tokens that ran)
        acc = torch.zeros(7, device=dev)
        for j, (idx, weight) in enumerate(parts):
            last = j == len(parts) - 1
            sync = nullcontext() if last or not hasattr(policy, "no_sync") else policy.no_sync()
            with sync:
                # a stand-in is not load
                with nullcontext() if weight else _load_kept(model), hardware.autocast(dev):
                    logp, mask, ent = policy(_pick(P, idx), _pick(C, idx), entropy=True)
                old_logp = logp.detach() if old is None or old[j] is None else old[j]
                loss, st = grpo_loss(logp, old_logp, adv[torch.tensor(idx, device=dev)], mask,
                                     None if refs is None else refs[j], cfg.beta, cfg.eps_low,
                                     cfg.eps_high, cfg.loss_level)
                # each micro-batch's share of the batch mean: by completions (sequence) or tokens
                # (tensors: no host sync per micro-batch; the step's statistics are read once)
                k = weight * mask.sum()
                share = weight * len(idx) / n_seqs if cfg.loss_level == "sequence" else k / n_tokens
                (loss * share).backward()
            ran_n = max(ran_tokens, 1e-9)
            acc += torch.stack([st.loss * share, st.policy_loss * share, st.kl * k / n_tokens,
                                st.clip_low * k / n_tokens, st.clip_high * k / n_tokens,
                                st.ratio * k / ran_n,
                                weight * (ent * mask).sum() / ran_n]).float()
        for p in model.parameters():  # nothing ran: the optimizer still steps (momentum, decay)
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else 1e9
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optim.step()
        optim.zero_grad(set_to_none=True)
        update_correction_bias(model)
    dt = time.perf_counter() - t0
    loss, policy_loss, kl, clip_low, clip_high, ratio, entropy = all_mean(acc, world).tolist()
    # each distinct prompt of a micro-batch that ran runs once
    prompt_tokens = sum(len(p) for idx, w in parts if w for p in {tuple(P[i]) for i in idx})
    trained = cfg.mu * (sum(len(C[i]) for i in ran) + prompt_tokens) * world.size
    return {"loss": loss, "policy_loss": policy_loss, "kl": kl, "clip_low": clip_low,
            "clip_high": clip_high, "ratio": ratio if ran_tokens else None,
            "entropy": entropy if ran_tokens else None, "lr": lr, "grad_norm": float(grad_norm),
            "trained_fraction": ran_tokens / n_tokens, "train_tokens_per_s": trained / dt}


def held_out_accuracy(engine: Engine, task: Task, cfg: GRPOConfig) -> float:
    """Greedy pass@1 on the held-out examples, the answer checked by the task (format not
    required)."""
    done = engine.generate([render_prompt(e.prompt, cfg.template, engine.tok)
                            for e in task.examples],
                           SamplingParams(temperature=0, max_tokens=cfg.max_tokens))
    return sum(task.score(c.text, e) for c, e in zip(done, task.examples)) / len(task.examples)
