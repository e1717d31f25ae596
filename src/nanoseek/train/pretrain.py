"""Pretraining, the way V3 was trained, on whatever the user has: one CPU process, or `torchrun` (DDP, or
FSDP2 with --fsdp) on CPU (gloo) or GPUs (NCCL). No launcher of our own.

One step: grad-accumulated micro-batches -> clip 1.0 -> AdamW (0.9, 0.95, wd 0.1 on matrices) -> the
aux-loss-free bias update with loads summed over micro-batches and ranks. Checkpoints are HF-layout model
directories plus the training state (optimizer, step, data position, RNG), written atomically; `--resume`
continues bit for bit on CPU. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from nanoseek.checkpoint import _unshare, load_model, write_model_files
from nanoseek.data import PackedLoader, read_meta
from nanoseek.errors import UserError
from nanoseek.files import atomic_directory
from nanoseek.model.config import resolve_config
from nanoseek.model.counting import flops_per_token
from nanoseek.model.model import MoE, Transformer, update_correction_bias


class TrainConfigError(UserError):
    """A training config that cannot run; the message names the key (and the file)."""


def opt(default: Any, help: str) -> Any:
    """A config field whose help text the CLI shows (`nanoseek train --help`)."""
    return field(default=default, metadata={"help": help})


@dataclass
class RunOptions:
    """What every training command has: its device, checkpoints kept, and what the person watching sees."""
    device: str = opt("auto", "auto (cuda if available) | cpu | cuda")
    keep_last: int = opt(2, "checkpoints kept")
    progress: bool = opt(True, "progress bar")
    wandb_project: str = opt("", "also log to this Weights & Biases project (if wandb is installed)")
    tensorboard: bool = opt(False, "also log to TensorBoard in out_dir/tensorboard (if installed)")


@dataclass
class TrainConfig(RunOptions):
    model: str = opt("tiny", "preset, config.json, or a checkpoint directory to start from its weights")
    data: str = opt("", "prepared data directory (train.bin, val.bin, meta.json) from `nanoseek data prepare`")
    tokenizer: str = opt("", "tokenizer directory: saved into checkpoints, used for sample generations")
    out_dir: str = opt("runs/pretrain", "run directory: checkpoints/, metrics.jsonl, plots")
    seq_len: int = opt(256, "tokens per training row")
    micro_batch_size: int = opt(8, "rows per rank per forward pass")
    batch_size: int = opt(0, "rows per optimizer step over all ranks (gradient accumulation makes up the rest); "
                             "0 = micro_batch_size x world size")
    batch_tokens: int = opt(0, "tokens per optimizer step over all ranks, instead of batch_size (a multiple of "
                               "seq_len); 0 = use batch_size")
    max_steps: int = opt(200, "optimizer steps")
    lr: float = opt(3e-3, "peak learning rate")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = opt(20, "linear warmup steps")
    schedule: str = opt("cosine", "after warmup: cosine | constant | wsd (stable, then linear decay over "
                                  "decay_fraction of the steps)")
    decay_fraction: float = opt(0.2, "wsd: share of the steps spent decaying")
    weight_decay: float = opt(0.1, "AdamW weight decay, matrices only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "gradient-norm clip (0 = off)")
    mtp_loss_weight_final: float | None = opt(None, "MTP lambda after mtp_switch_fraction of the steps "
                                                    "(V3: 0.3, then 0.1)")
    mtp_switch_fraction: float = opt(0.68, "when the MTP lambda switches (V3: after 10T of 14.8T tokens)")
    eval_every: int = opt(50, "validation loss every N steps and at the end (0 = never)")
    eval_batches: int = opt(8, "micro-batches per validation")
    save_every: int = opt(100, "checkpoint every N steps (the end is always saved; 0 = only the end)")
    sample_every: int = opt(0, "log a greedy sample every N steps (needs tokenizer; 0 = never)")
    seed: int = opt(0, "seed of the initial weights and the data order")
    compile: bool = opt(False, "torch.compile the model")
    fsdp: bool = opt(False, "under torchrun: shard parameters, gradients and optimizer state (FSDP2)")
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "model config overrides, e.g. n_group=1, aux_loss_alpha=0, or bias_update_speed (gamma: a bias "
                "moves at most gamma a step, so V3's 0.001 barely acts in a toy run of a few hundred steps; "
                "0.01 balances in ~100) (CLI: --set KEY=VALUE)"})

    def validate(self) -> None:
        rules = [("seq_len", self.seq_len > 0, "> 0"), ("micro_batch_size", self.micro_batch_size > 0, "> 0"),
                 ("batch_size", self.batch_size >= 0, ">= 0"), ("max_steps", self.max_steps > 0, "> 0"),
                 ("batch_tokens", self.batch_tokens >= 0 and self.batch_tokens % max(1, self.seq_len) == 0,
                  f"a multiple of seq_len ({self.seq_len})"),
                 ("lr", self.lr > 0, "> 0"), ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                 ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                 ("schedule", self.schedule in ("cosine", "constant", "wsd"), "cosine, constant or wsd"),
                 ("decay_fraction", 0 < self.decay_fraction <= 1, "in (0, 1]"),
                 ("grad_clip", self.grad_clip >= 0, ">= 0"), ("eval_every", self.eval_every >= 0, ">= 0"),
                 ("save_every", self.save_every >= 0, ">= 0"), ("keep_last", self.keep_last >= 1, ">= 1"),
                 ("data", bool(self.data), "a prepared data directory (nanoseek data prepare)")]
        for name, ok, rule in rules:
            if not ok:
                raise TrainConfigError(f"train config '{name}': {getattr(self, name)!r} is invalid; must be {rule}")


def load_train_config(path: str | Path | None, overrides: dict[str, Any], cls: type | None = None) -> Any:
    """A TOML (or YAML) file, then command-line overrides; unknown keys are errors, not silently dropped.
    cls: the config dataclass (TrainConfig, or GRPOConfig for `nanoseek grpo`)."""
    cls = cls or TrainConfig
    values: dict[str, Any] = {}
    if path:
        path = Path(path)
        import yaml

        try:
            text = path.read_text()
            values = (yaml.safe_load(text) or {}) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
        except FileNotFoundError:
            raise TrainConfigError(f"{path}: no such file") from None
        except (tomllib.TOMLDecodeError, yaml.YAMLError, ValueError) as e:
            raise TrainConfigError(f"{path}: {e}") from None
        if not isinstance(values, dict):
            raise TrainConfigError(f"{path}: expected a table of settings, got {type(values).__name__}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TrainConfigError(f"{path or 'train config'}: unknown key(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(fields))}")
    kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}
    for key, value in values.items():
        allowed = kinds[str(fields[key].type).split("[")[0].split(" ")[0]]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            if value is None and "None" in str(fields[key].type):
                continue
            raise TrainConfigError(f"{path or 'train config'}: '{key}' must be {allowed[-1].__name__}, "
                                   f"got {value!r}")
    cfg = cls(**values)
    cfg.validate()
    return cfg


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup, then constant / cosine / WSD (stable, then linear decay over the last decay_fraction)."""
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
# distributed set-up: whatever torchrun says, else one process


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    else:
        d = Dist()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{d.local_rank}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if d.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return d, dev


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world_size
    return x


# ---------------------------------------------------------------------------------------------
# checkpoints: <out_dir>/checkpoints/step_000100/ = HF model files + train_state.{json,safetensors}


def save_checkpoint(run: Path, step: int, model: Transformer, opt: torch.optim.Optimizer, state: dict[str, Any],
                    tokenizer: Any, keep_last: int, d: Dist, fsdp: bool,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Every rank calls this (FSDP gathers full tensors); rank 0 writes, the others wait for it. Optimizer
    moments are keyed by parameter name in safetensors, so no pickle is needed to resume. state goes to
    train_state.json (the data position included); extra: more safetensors files (name -> tensors), e.g.
    GRPO's reference model."""
    opts = StateDictOptions(full_state_dict=fsdp, cpu_offload=fsdp)
    model_state = get_model_state_dict(model, options=opts)
    opt_state = get_optimizer_state_dict(model, opt, options=opts)
    if d.main:
        _write_checkpoint(run, step, model, model_state, opt_state, state, tokenizer, keep_last, fsdp, extra)
    if d.world_size > 1:
        dist.barrier()


def _write_checkpoint(run: Path, step: int, model: Transformer, model_state: dict, opt_state: dict,
                      state: dict[str, Any], tokenizer: Any, keep_last: int, fsdp: bool,
                      extra: dict[str, dict[str, torch.Tensor]] | None) -> None:
    if fsdp:  # rank 0 now holds every tensor: rebuild a plain model around them to write the HF files
        with torch.device("meta"):
            plain = Transformer(model.cfg)
        plain.load_state_dict(model_state, assign=True)
        model = plain
    target = run / "checkpoints" / f"step_{step:06d}"
    with atomic_directory(target) as tmp:
        write_model_files(model, tmp, tokenizer)
        tensors = {f"{name}::{k}": torch.as_tensor(v).detach().cpu().clone()
                   for name, st in opt_state["state"].items() for k, v in st.items()}
        tensors["rng::torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng::cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, tmp / "train_state.safetensors")
        for name, tensors in (extra or {}).items():
            save_file(_unshare({k: v.detach().cpu().contiguous() for k, v in tensors.items()}), tmp / name)
        meta = dict(state, step=step, python_rng=_jsonable(random.getstate()))
        (tmp / "train_state.json").write_text(json.dumps(meta, indent=1))
    for old in sorted((run / "checkpoints").glob("step_*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_training_state(start: Path, model: Transformer, opt: torch.optim.Optimizer, fsdp: bool) -> dict[str, Any]:
    """Optimizer moments and RNG states of a checkpoint; returns its train_state.json."""
    tensors = load_file(start / "train_state.safetensors")
    osd = get_optimizer_state_dict(model, opt)  # the current param_groups, keyed by parameter name
    osd["state"] = {}
    for key, v in tensors.items():
        if not key.startswith("rng::"):
            name, k = key.split("::")
            osd["state"].setdefault(name, {})[k] = v
    set_optimizer_state_dict(model, opt, optim_state_dict=osd, options=StateDictOptions(full_state_dict=fsdp))
    torch.set_rng_state(tensors["rng::torch"])
    if "rng::cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng::cuda"])
    state = json.loads((start / "train_state.json").read_text())
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python_rng"]))
    return state


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, tuple | list) else x


def latest_checkpoint(run: Path) -> Path | None:
    done = [p for p in sorted((run / "checkpoints").glob("step_*")) if (p / "train_state.json").exists()]
    return done[-1] if done else None


# ---------------------------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [(n, p) for n, p in named if p.ndim >= 2]
    no_decay = [(n, p) for n, p in named if p.ndim < 2]
    groups = [{"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    # the fused kernel: one pass over each tensor instead of a dozen (5x faster than foreach on a CPU)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


class Stop:
    """SIGINT/SIGTERM ask the loop to save and exit after the current step; restore() puts the caller's
    handlers back. Ranks agree on the step they stop at (a signal may reach them a step apart)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, d: Dist, dev: torch.device) -> bool:
        if d.world_size == 1:
            return self.requested
        flag = torch.tensor(float(self.requested), device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(model: Transformer, loader: PackedLoader, batches: int, dev: torch.device, d: Dist) -> float:
    model.eval()
    total = torch.zeros((), device=dev)
    for _ in range(batches):
        x, y = loader.next_batch()
        total += model(x.to(dev), y.to(dev), mtp=False).main_loss.float()
    model.train()
    return all_mean(total / batches, d).item()


def train(cfg: TrainConfig, resume: bool = False) -> tuple[Transformer, dict[str, Any]]:
    """Run (or resume) pretraining; returns the trained model and the last metrics record."""
    meta = read_meta(cfg.data)  # a missing data directory is an error before anything is built
    d, dev = setup_distributed(cfg.device)
    run = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    start = latest_checkpoint(run) if resume else None
    weights = start or (Path(cfg.model) if (Path(cfg.model) / "config.json").exists() else None)
    mcfg = resolve_config(str(weights or cfg.model))
    if weights is None:  # a preset is a shape: its vocabulary follows the data unless set explicitly
        mcfg = mcfg.replace(**{"vocab_size": meta["vocab_size"], **cfg.extra})
    elif cfg.extra:  # loaded weights fix the architecture; only the training coefficients may change
        # (an override the weights already have is fine: the same flags resume a run that set them)
        fixed = sorted(k for k in set(cfg.extra) - {"bias_update_speed", "aux_loss_alpha", "mtp_loss_weight"}
                       if getattr(mcfg, k, None) != cfg.extra[k])
        if fixed:
            raise TrainConfigError(f"train config 'extra': {', '.join(fixed)} cannot change for weights loaded "
                                   f"from {weights}")
        mcfg = mcfg.replace(**cfg.extra)
    if cfg.seq_len > mcfg.max_position_embeddings:
        raise TrainConfigError(f"train config 'seq_len': {cfg.seq_len} is above the model's "
                               f"max_position_embeddings ({mcfg.max_position_embeddings})")
    if meta["vocab_size"] > mcfg.vocab_size:
        raise TrainConfigError(f"data '{cfg.data}' was tokenized with {meta['vocab_size']} tokens, more than the "
                               f"model's vocab_size {mcfg.vocab_size}")
    if weights is None:
        model = Transformer(mcfg).to(dev)
    else:
        model = load_model(weights, device=dev, dtype=torch.float32)
        for m in model.modules():  # every module reads the one config object (the MTP lambda schedule edits it)
            if hasattr(m, "cfg"):
                m.cfg = mcfg
    data = Path(cfg.data)
    tokenizer = None
    if cfg.tokenizer:
        from nanoseek.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(cfg.tokenizer)

    global_batch = cfg.batch_tokens // cfg.seq_len or cfg.batch_size or cfg.micro_batch_size * d.world_size
    if global_batch % (cfg.micro_batch_size * d.world_size):
        key = "batch_tokens" if cfg.batch_tokens else "batch_size"
        raise TrainConfigError(f"train config '{key}': {global_batch} rows is not a multiple of micro_batch_size x "
                               f"world size = {cfg.micro_batch_size * d.world_size}")
    accum = global_batch // (cfg.micro_batch_size * d.world_size)
    train_loader = PackedLoader(data / "train.bin", cfg.seq_len, cfg.micro_batch_size, rank=d.rank,
                                world_size=d.world_size, seed=cfg.seed)
    # no validation asked for (eval_every 0): the validation split may be too small to batch, and is not read
    val_loader = PackedLoader(data / "val.bin", cfg.seq_len, cfg.micro_batch_size, rank=d.rank,
                              world_size=d.world_size, seed=cfg.seed + 1) if cfg.eval_every else None

    model.train()
    wrapped: torch.nn.Module = model
    if d.world_size > 1:
        if cfg.fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in list(model.layers) + list(model.mtp):
                fully_shard(layer)
            fully_shard(model)
        else:
            # buffers (correction biases, load counters) are kept equal by the all-reduced update itself;
            # DDP's default broadcast would overwrite each rank's own load counts
            wrapped = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    opt = build_optimizer(model, cfg)
    fsdp = cfg.fsdp and d.world_size > 1

    step, tokens, elapsed = 0, 0, 0.0
    if start is not None:
        state = load_training_state(start, model, opt, fsdp)
        train_loader.load_state_dict(state["loader"])
        step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]

    metrics_path = run / "metrics.jsonl"
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        for stale in (run / "checkpoints").glob(".step_*"):  # temporaries of a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        (run / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        _truncate_metrics(metrics_path, step)
    from nanoseek.train.telemetry import Telemetry  # progress bar, metrics.jsonl, plots, wandb/tensorboard

    tel = Telemetry(run, cfg, d.main, total_steps=cfg.max_steps, start_step=step, device=dev)
    fpt = flops_per_token(mcfg, cfg.seq_len, include_mtp=mcfg.num_nextn_predict_layers > 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    n_main_moe = sum(isinstance(layer.mlp, MoE) for layer in model.layers)
    stop = Stop()
    lambda0 = mcfg.mtp_loss_weight
    val_start = val_loader.state_dict() if val_loader else None  # every evaluation reads the same batches
    record: dict[str, Any] = {}
    try:
        stopping = False
        while step < cfg.max_steps and not stopping:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            if cfg.mtp_loss_weight_final is not None:
                mcfg.mtp_loss_weight = (cfg.mtp_loss_weight_final if step >= cfg.mtp_switch_fraction * cfg.max_steps
                                        else lambda0)
            parts = torch.zeros(5, device=dev)  # loss, main, mtp, balance, mtp accuracy
            for micro in range(accum):
                x, y = train_loader.next_batch()
                x, y = x.to(dev), y.to(dev)
                sync = nullcontext() if micro == accum - 1 or not hasattr(forward, "no_sync") else forward.no_sync()
                with sync, autocast:
                    out = forward(x, y)
                    (out.loss / accum).backward()
                with torch.no_grad():
                    acc = ((out.mtp_logits[0].argmax(-1) == y[:, 1:]).float().mean()
                           if out.mtp_logits else torch.zeros((), device=dev))
                    parts += torch.stack([out.loss, out.main_loss, _z(out.mtp_loss, dev), _z(out.balance_loss, dev),
                                          acc]).detach().float() / accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else 1e9)
            opt.step()
            opt.zero_grad(set_to_none=True)
            max_vio = update_correction_bias(model)  # main layers' MoE first, then the MTP modules'
            vio = [] if max_vio is None else [round(v, 4) for v in max_vio.tolist()]
            step += 1
            tokens += global_batch * cfg.seq_len
            dt = time.perf_counter() - t0
            elapsed += dt
            loss, main_loss, mtp_loss, balance_loss, mtp_acc = all_mean(parts, d).tolist()  # one device sync
            record = {"step": step, "tokens": tokens, "loss": loss, "main_loss": main_loss, "mtp_loss": mtp_loss,
                      "balance_loss": balance_loss, "mtp_acc": mtp_acc,
                      "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": global_batch * cfg.seq_len / dt,
                      "elapsed_s": elapsed, "world_size": d.world_size,
                      "max_vio": vio[:n_main_moe], "max_vio_mtp": vio[n_main_moe:]}
            record["mfu"] = tel.mfu(record["tokens_per_s"] / d.world_size, fpt)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                val_loader.load_state_dict(val_start)
                record["val_loss"] = evaluate(model, val_loader, cfg.eval_batches, dev, d)
            if cfg.sample_every and tokenizer is not None and step % cfg.sample_every == 0 and d.main:
                record["sample"] = sample_text(model, tokenizer, dev)
            tel.log(record)
            stopping = stop.agreed(d, dev)
            last = step == cfg.max_steps or stopping
            if (cfg.save_every and step % cfg.save_every == 0) or last:
                save_checkpoint(run, step, model, opt, {"tokens": tokens, "elapsed_s": elapsed,
                                                        "loader": train_loader.state_dict()},
                                tokenizer, cfg.keep_last, d, fsdp)
    finally:
        stop.restore()
    finish(tel, d)
    return model, record


def finish(tel: Any, d: Dist) -> None:
    """The end of a run: plots and logs closed, the process group (under torchrun) taken down."""
    tel.close()
    if d.world_size > 1:
        dist.destroy_process_group()


def _z(x: torch.Tensor | None, dev: torch.device) -> torch.Tensor:
    return torch.zeros((), device=dev) if x is None else x


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (a killed run may have logged past it)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


@torch.no_grad()
def sample_text(model: Transformer, tokenizer: Any, dev: torch.device, max_new_tokens: int = 48) -> str:
    """A greedy continuation of BOS through the latent cache: a glimpse of what the model has learnt."""
    from nanoseek.model.model import KVCache

    was_training = model.training
    model.eval()
    cache = KVCache(model.cfg, 1, max_new_tokens + 1, device=dev)
    tok = torch.tensor([[tokenizer.bos_id]], device=dev)
    out = []
    for pos in range(max_new_tokens):
        tok = model(tok, cache=cache, start_pos=pos).logits[:, -1].argmax(-1, keepdim=True)
        if tok.item() == tokenizer.eos_id:
            break
        out.append(tok.item())
    model.train(was_training)
    return tokenizer.decode(out)
