"""Pretraining, the way V3 was trained, on whatever the user has: one CPU process, or `torchrun`
(DDP, or FSDP2 with --fsdp) on CPU (gloo) or GPUs (NCCL). No launcher of our own (train/runtime.py).

One step: grad-accumulated micro-batches -> clip 1.0 -> AdamW (0.9, 0.95, wd 0.1 on matrices) -> the
aux-loss-free bias update with loads summed over micro-batches and ranks. Checkpoints are HF-layout
model directories plus the training state (optimizer, step, data position, RNG), written atomically;
`--resume` continues bit for bit on CPU. SFT is this loop on chat data (train/sft.py).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanoseek import hardware
from nanoseek.checkpoint import load_model
from nanoseek.data import DocumentLoader, PackedLoader, read_meta
from nanoseek.model.config import ModelConfig, resolve_config
from nanoseek.model.counting import flops_per_token
from nanoseek.model.model import Documents, MoE, Transformer, update_correction_bias
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

Loader = PackedLoader | DocumentLoader


@dataclass
class TrainConfig(adamw_options(lr=3e-3, lr_help="peak learning rate", warmup_steps=20,
                                weight_decay=0.1, beta2=0.95), RunOptions):
    """Pretraining (and SFT): the model, its data, the batch, the schedule, when to validate and
    save."""
    model: str = opt("tiny", "preset, config.json, or a checkpoint directory to start from its "
                             "weights")
    data: str = opt("", "prepared data directory (train.bin, val.bin, meta.json) from "
                        "`nanoseek data prepare`")
    tokenizer: str = opt("", "tokenizer directory: saved into checkpoints, used for sample "
                             "generations")
    out_dir: str = opt("runs/pretrain", "run directory: checkpoints/, metrics.jsonl, plots")
    seq_len: int = opt(256, "tokens per training row")
    pack: str = opt("rows", "rows: the token stream cut into rows of seq_len (long documents, "
                            "plain text); documents: whole documents packed into the rows, "
                            "padded, none cut at a row's edge (chats: a turn is never learned "
                            "without its question)")
    attn_mask: str = opt("causal", "causal: a token attends to everything before it in its row; "
                                   "block_causal: only to its own document's tokens (documents "
                                   "end at the data's EOS token), as if each were a row of its "
                                   "own; on a CPU cheaper for rows of short documents")
    micro_batch_size: int = opt(8, "rows per rank per forward pass")
    batch_size: int = opt(0, "rows per optimizer step over all ranks (gradient accumulation makes "
                             "up the rest); 0 = micro_batch_size x world size")
    batch_tokens: int = opt(0, "tokens per optimizer step over all ranks, instead of batch_size (a "
                               "multiple of seq_len); 0 = use batch_size")
    max_steps: int = opt(200, "optimizer steps")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of the peak")
    schedule: str = opt("cosine", "after warmup: cosine | constant | wsd (stable, then linear "
                                  "decay over decay_fraction of the steps)")
    decay_fraction: float = opt(0.2, "wsd: share of the steps spent decaying")
    mtp_loss_weight_final: float | None = opt(None, "MTP lambda after mtp_switch_fraction of the "
                                                    "steps (V3: 0.3, then 0.1)")
    mtp_switch_fraction: float = opt(0.68, "when the MTP lambda switches (V3: after 10T of 14.8T "
                                           "tokens)")
    eval_every: int = opt(50, "validation loss every N steps and at the end (0 = never)")
    eval_batches: int = opt(8, "micro-batches per validation")
    save_every: int = opt(100, "checkpoint every N steps (the end is always saved; 0 = only the "
                               "end)")
    sample_every: int = opt(0, "log a greedy sample every N steps (needs tokenizer; 0 = never)")
    seed: int = opt(0, "seed of the initial weights and the data order")
    compile: bool = opt(False, "torch.compile each decoder block (regional; on a GPU faster after "
                                "a compile of seconds to a minute)")
    fsdp: bool = opt(False, "under torchrun: shard parameters, gradients and optimizer state "
                            "(FSDP2)")
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "model config overrides, e.g. n_group=1, aux_loss_alpha=0, or bias_update_speed "
                "(gamma: a bias moves at most gamma a step, so V3's 0.001 barely acts in a toy run "
                "of a few hundred steps; 0.01 balances in ~100) (CLI: --set KEY=VALUE)"})

    def validate(self) -> None:
        check(self, "train config", self.run_rules() + self.adamw_rules() + [
            ("seq_len", self.seq_len > 0, "> 0"),
            ("micro_batch_size", self.micro_batch_size > 0, "> 0"),
            ("pack", self.pack in ("rows", "documents"), "rows or documents"),
            ("attn_mask", self.attn_mask in ("causal", "block_causal"), "causal or block_causal"),
            ("batch_size", self.batch_size >= 0, ">= 0"), ("max_steps", self.max_steps > 0, "> 0"),
            ("batch_tokens",
             self.batch_tokens >= 0 and self.batch_tokens % max(1, self.seq_len) == 0,
             f"a multiple of seq_len ({self.seq_len})"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("schedule", self.schedule in ("cosine", "constant", "wsd"), "cosine, constant or wsd"),
            ("decay_fraction", 0 < self.decay_fraction <= 1, "in (0, 1]"),
            ("eval_every", self.eval_every >= 0, ">= 0"),
            ("save_every", self.save_every >= 0, ">= 0"),
            ("data", bool(self.data), "a prepared data directory (nanoseek data prepare)")])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup, then constant / cosine / WSD (stable, then linear decay over the last
    decay_fraction)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    decay_start = cfg.max_steps * (1 - cfg.decay_fraction)
    if step < decay_start:
        return cfg.lr
    return cfg.lr - (cfg.lr - floor) * (step - decay_start) / max(1.0, cfg.max_steps - decay_start)


# ---------------------------------------------------------------------------------------------
# set-up: the model, its batches, its parallel wrapper


def build_model(cfg: TrainConfig, meta: dict[str, Any], start: Path | None,
                dev: torch.device) -> Transformer:
    """A new model of a preset or config.json, or the weights of a checkpoint (the run's latest when
    resuming), with cfg.extra applied and checked against the data and seq_len."""
    weights = start or (Path(cfg.model) if (Path(cfg.model) / "config.json").exists() else None)
    mcfg = resolve_config(str(weights or cfg.model))
    if weights is None:  # a preset is a shape: its vocabulary follows the data unless set
        mcfg = mcfg.replace(**{"vocab_size": meta["vocab_size"], **cfg.extra})
    elif cfg.extra:
        mcfg = _coefficients_only(mcfg, cfg.extra, weights)
    if cfg.seq_len > mcfg.max_position_embeddings:
        raise TrainConfigError(f"train config 'seq_len': {cfg.seq_len} is above the model's "
                               f"max_position_embeddings ({mcfg.max_position_embeddings})")
    if meta["vocab_size"] > mcfg.vocab_size:
        raise TrainConfigError(f"data '{cfg.data}' was tokenized with {meta['vocab_size']} tokens, "
                               f"more than the model's vocab_size {mcfg.vocab_size}")
    if weights is None:
        return Transformer(mcfg).to(dev)
    model = load_model(weights, device=dev, dtype=torch.float32)
    for m in model.modules():  # every module reads one config (the MTP lambda schedule edits it)
        if hasattr(m, "cfg"):
            m.cfg = mcfg
    return model


def _coefficients_only(mcfg: ModelConfig, extra: dict[str, Any], weights: Path) -> ModelConfig:
    """Loaded weights fix the architecture; only the training coefficients may change (an override
    the weights already have is fine: the same flags resume a run that set them)."""
    changed = mcfg.replace(**extra)  # an unknown key is refused here, with the close matches
    coefficients = {"bias_update_speed", "aux_loss_alpha", "mtp_loss_weight"}
    fixed = sorted(k for k in set(extra) - coefficients if getattr(mcfg, k) != extra[k])
    if fixed:
        raise TrainConfigError(f"train config 'extra': {', '.join(fixed)} cannot change for "
                               f"weights loaded from {weights}")
    return changed


def _batch_shape(cfg: TrainConfig, world: World) -> tuple[int, int]:
    """(rows per optimizer step over all ranks, micro-batches per rank per step)."""
    per_pass = cfg.micro_batch_size * world.size
    global_batch = cfg.batch_tokens // cfg.seq_len or cfg.batch_size or per_pass
    if global_batch % per_pass:
        key = "batch_tokens" if cfg.batch_tokens else "batch_size"
        raise TrainConfigError(f"train config '{key}': {global_batch} rows is not a multiple of "
                               f"micro_batch_size x world size = {per_pass}")
    return global_batch, global_batch // per_pass


def _loaders(cfg: TrainConfig, world: World) -> tuple[Loader, Loader | None]:
    """This rank's training rows, and its validation rows unless no validation is asked for (then
    the validation split may be too small to batch, and is not read)."""
    data = Path(cfg.data)

    def loader(split: str, seed: int) -> Loader:
        if cfg.pack == "documents":
            return DocumentLoader(data / f"{split}.bin", cfg.seq_len, cfg.micro_batch_size,
                                  eos_id=read_meta(data)["eos_id"], rank=world.rank,
                                  world_size=world.size, seed=seed)
        return PackedLoader(data / f"{split}.bin", cfg.seq_len, cfg.micro_batch_size,
                            rank=world.rank, world_size=world.size, seed=seed)

    return loader("train", cfg.seed), loader("val", cfg.seed + 1) if cfg.eval_every else None


def _parallel(model: Transformer, cfg: TrainConfig, world: World) -> torch.nn.Module:
    """The module the loop calls: the model, under torchrun DDP's or FSDP2's, compiled if asked."""
    model.train()
    wrapped: torch.nn.Module = model
    if world.size > 1:
        if cfg.fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in list(model.layers) + list(model.mtp):
                fully_shard(layer)
            fully_shard(model)
        else:
            # buffers (correction biases, load counters) are kept equal by the all-reduced update
            # itself; DDP's default broadcast would overwrite each rank's own load counts
            wrapped = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    if cfg.compile:
        # regional: each decoder block compiles, not the whole model. The blocks share their code
        # and shapes, so one graph (two: dense and MoE) serves them all and compiling takes seconds
        # however deep the model; routing's data-dependent shapes stay inside a block; the fused
        # head and loss (model.LinearCrossEntropy) stay eager, as FSDP2's per-block wrapping wants
        for layer in [*model.layers, *model.mtp]:
            layer.compile(dynamic=False)
    return wrapped


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, resume: bool = False) -> tuple[Transformer, dict[str, Any]]:
    """Run (or resume) pretraining; returns the trained model and the last metrics record."""
    # set-up: data, ranks, run directory, model, loaders, optimizer
    meta = read_meta(cfg.data)  # a missing data directory is an error before anything is built
    world, dev = setup_distributed(cfg.device)
    run = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    start = start_run(cfg, world, resume, "train_config.json")
    model = build_model(cfg, meta, start, dev)
    tokenizer = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
    _, accum = _batch_shape(cfg, world)
    train_loader, val_loader = _loaders(cfg, world)
    eos = meta.get("eos_id") if cfg.attn_mask == "block_causal" else None
    if cfg.attn_mask == "block_causal" and eos is None:
        raise TrainConfigError(f"train config 'attn_mask': block_causal needs documents that end "
                               f"at an EOS token; data '{cfg.data}' names none (meta.json eos_id)")
    forward = _parallel(model, cfg, world)
    optim = build_optimizer(model, cfg)
    fsdp = cfg.fsdp and world.size > 1

    # resume: optimizer moments, RNG states and the data position of the latest checkpoint
    step, tokens, elapsed = 0, 0, 0.0
    if start is not None:
        state = load_training_state(start, model, optim, fsdp)
        train_loader.load_state_dict(state["loader"])
        step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]

    tel = Telemetry(run, cfg, world.main, total_steps=cfg.max_steps, start_step=step, device=dev)
    mcfg = model.cfg
    fpt = flops_per_token(mcfg, cfg.seq_len, include_mtp=mcfg.num_nextn_predict_layers > 0)
    n_main_moe = sum(isinstance(layer.mlp, MoE) for layer in model.layers)
    lambda0 = mcfg.mtp_loss_weight
    val_start = val_loader.state_dict() if val_loader else None  # each validation: same batches
    stop = Stop()
    record: dict[str, Any] = {}
    try:
        stopping = False
        while step < cfg.max_steps and not stopping:
            # step: the schedules, then accum micro-batches, one optimizer step, the bias update
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for g in optim.param_groups:
                g["lr"] = lr
            if cfg.mtp_loss_weight_final is not None:
                late = step >= cfg.mtp_switch_fraction * cfg.max_steps
                mcfg.mtp_loss_weight = cfg.mtp_loss_weight_final if late else lambda0
            parts, grad_norm = _step(forward, model, optim, train_loader, accum, cfg.grad_clip, dev,
                                     eos)
            max_vio = update_correction_bias(model)  # main layers' MoE first, then the MTP modules'
            vio = [] if max_vio is None else [round(v, 4) for v in max_vio.tolist()]
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt

            # log: the step's means over ranks (one device sync), validation, a sample
            loss, main_loss, mtp_loss, balance_loss, mtp_acc, seen = all_mean(parts, world).tolist()
            seen = round(seen * world.size)  # the step's tokens, pads included (its compute)
            tokens += seen
            record = {"step": step, "tokens": tokens, "loss": loss, "main_loss": main_loss,
                      "mtp_loss": mtp_loss, "balance_loss": balance_loss, "mtp_acc": mtp_acc,
                      "lr": lr, "grad_norm": float(grad_norm),
                      "tokens_per_s": seen / dt, "elapsed_s": elapsed,
                      "world_size": world.size,
                      "max_vio": vio[:n_main_moe], "max_vio_mtp": vio[n_main_moe:]}
            record["mfu"] = tel.mfu(record["tokens_per_s"] / world.size, fpt)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                val_loader.load_state_dict(val_start)
                record["val_loss"] = val_loss(model, val_loader, cfg.eval_batches, dev, world, eos)
            if cfg.sample_every and step % cfg.sample_every == 0 and tokenizer and world.main:
                record["sample"] = sample_text(model, tokenizer, dev)
            tel.log(record)

            # save, and stop: every save_every steps, at the end, and when a signal asks to stop
            stopping = stop.agreed(world, dev)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps or stopping:
                position = {"tokens": tokens, "elapsed_s": elapsed,
                            "loader": train_loader.state_dict()}
                save_checkpoint(run, step, model, optim, position, tokenizer, cfg.keep_last, world,
                                fsdp)
    finally:
        stop.restore()
    finish(tel, world)
    return model, record


def _step(forward: torch.nn.Module, model: Transformer, optim: torch.optim.Optimizer,
          loader: Loader, accum: int, grad_clip: float, dev: torch.device,
          eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over accum micro-batches (gradients all-reduced on the last only). Returns
    the step's (loss, main, MTP, balance, MTP accuracy, tokens read) on this rank and the gradient
    norm. With eos_id, attention stays inside the documents that it ends (attn_mask
    block_causal)."""
    # dtype rules: fp32 master weights and optimizer state; on a GPU the matmuls run in bf16 under
    # autocast (the experts' grouped GEMMs too: model.grouped_mm follows autocast), the router,
    # norms, softmax and losses in fp32; the CPU runs fp32 throughout (its bf16 is no faster)
    autocast = hardware.autocast(dev)
    parts = torch.zeros(6, device=dev)
    for micro in range(accum):
        x, y = loader.next_batch()
        x, y = x.to(dev), y.to(dev)
        last = micro == accum - 1
        sync = nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()
        with sync, autocast:
            out = forward(x, y, documents=_documents(x, eos_id))
            (out.loss / accum).backward()
        with torch.no_grad():
            acc = ((out.mtp_logits[0].argmax(-1) == y[:, 1:]).float().mean()
                   if out.mtp_logits else torch.zeros((), device=dev))
            parts[:5] += torch.stack([out.loss, out.main_loss, _z(out.mtp_loss, dev),
                                      _z(out.balance_loss, dev), acc]).detach().float() / accum
            parts[5] += x.numel()
    clip = grad_clip if grad_clip > 0 else 1e9
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optim.step()
    optim.zero_grad(set_to_none=True)
    return parts, grad_norm


def _documents(x: torch.Tensor, eos_id: int | None) -> torch.Tensor | None:
    return None if eos_id is None else Documents.starts(x, eos_id)


def _z(x: torch.Tensor | None, dev: torch.device) -> torch.Tensor:
    return torch.zeros((), device=dev) if x is None else x


# ---------------------------------------------------------------------------------------------
# eval: validation loss and a greedy sample


@torch.no_grad()
def val_loss(model: Transformer, loader: Loader, batches: int, dev: torch.device,
             world: World, eos_id: int | None = None) -> float:
    """The next-token loss (no MTP) over `batches` validation micro-batches, averaged over ranks."""
    model.eval()
    total = torch.zeros((), device=dev)
    for _ in range(batches):
        x, y = (t.to(dev) for t in loader.next_batch())
        with hardware.autocast(dev):
            total += model(x, y, mtp=False, documents=_documents(x, eos_id)).main_loss.float()
    model.train()
    return all_mean(total / batches, world).item()


@torch.no_grad()
def sample_text(model: Transformer, tokenizer: Any, dev: torch.device,
                max_new_tokens: int = 48) -> str:
    """A greedy continuation of BOS (of EOS for a tokenizer without one, such as Qwen2's: a packed
    corpus starts each document after an EOS) through the cache: a glimpse of what the model has
    learnt."""
    from nanoseek.model.model import KVCache

    was_training = model.training
    model.eval()
    cache = KVCache(model.cfg, 1, max_new_tokens + 1, device=dev)
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    tok = torch.tensor([[start]], device=dev)
    out = []
    for pos in range(max_new_tokens):
        tok = model(tok, cache=cache, start_pos=pos).logits[:, -1].argmax(-1, keepdim=True)
        if tok.item() == tokenizer.eos_id:
            break
        out.append(tok.item())
    model.train(was_training)
    return tokenizer.decode(out)
