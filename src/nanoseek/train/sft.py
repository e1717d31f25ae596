"""Supervised fine-tuning on chats, and R1's distillation: SFT of a new, smaller student on the
correct samples of a teacher (R1 §2.4).

The training loop is pretraining's (train.pretrain.train: resume, torchrun, telemetry); SFT differs
in its data. The chats are prepared once into a data directory whose loss mask covers the
assistant's turns only (data.prepare_corpus with chat=True), and a directory prepared from other
data is refused rather than trained on. Used by `nanoseek sft`, `nanoseek distill` and the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanoseek.data import prepare_corpus, read_chats, read_meta, split_position
from nanoseek.errors import UserError
from nanoseek.files import DataError
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tasks.task import Task
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.pretrain import TrainConfig, train
from nanoseek.train.runtime import load_train_config

# what `nanoseek sft` and `nanoseek distill` use where neither a flag nor a config file says: a
# fine-tune wants a lower learning rate and fewer steps than pretraining's defaults
# conversations are packed whole (a turn cut at a row's edge would be learned without its question)
SFT_DEFAULTS = {"lr": 1e-3, "warmup_steps": 10, "max_steps": 100, "out_dir": "runs/sft",
                "pack": "documents"}
DISTILL_DEFAULTS = {**SFT_DEFAULTS, "out_dir": "runs/distill"}


class DistillError(UserError):
    """The teacher's samples cannot make a training set."""


def sft_config(path: str | None, overrides: dict[str, Any], checkpoint: str,
               student: str | None = None, defaults: dict[str, Any] = SFT_DEFAULTS) -> TrainConfig:
    """The TrainConfig of an SFT run: CHECKPOINT's model (or a new model of the `student` shape:
    distillation) and CHECKPOINT's tokenizer, data in OUT_DIR/data unless overridden. Without a
    config file, `defaults` stand in for pretraining's."""
    overrides = dict(overrides)
    if not path:
        for key, value in defaults.items():
            if overrides.get(key) is None:
                overrides[key] = value
    overrides["model"] = student or checkpoint
    overrides["tokenizer"] = checkpoint
    out_dir = overrides.get("out_dir") or defaults["out_dir"]
    overrides["data"] = overrides.get("data") or str(Path(out_dir) / "data")
    return load_train_config(path, overrides, TrainConfig)


def held_out_fraction(chats: str, seed: int, wanted: float) -> float:
    """`wanted`, or, where at that share no conversation would be held out, the smallest share that
    holds out one: the split is a seeded hash of each conversation, so a small set (a few dozen
    teacher samples) can miss at 0.05, and an empty validation split is refused."""
    texts = {d.text for d in read_chats(chats)}
    first = min((split_position(t, seed) for t in texts), default=1.0)
    if not 0 < wanted < 1 or len(texts) < 2 or first < wanted:
        return wanted  # prepare_corpus names what is wrong with an invalid share or a single chat
    return math.nextafter(first, 1.0)  # the first conversation in hash order, and only it, held out


def prepare_chats(chats: str, tokenizer: Tokenizer, data_dir: str | Path, *, val_fraction: float,
                  seed: int = 0, progress: bool = True, reuse: bool = True,
                  log: Callable[[str], Any] = print) -> dict:
    """The meta of data_dir holding `chats` prepared for SFT: prepared now, or (reuse) kept when an
    earlier run prepared the same chats there, so that a resumed run trains on the same rows."""
    data = Path(data_dir)
    if reuse and (data / "meta.json").exists():
        meta = read_meta(data)
        if meta.get("source") != chats or not meta.get("chat"):
            raise DataError(f"{data} holds data prepared from {meta.get('source')!r}, not chats "
                            f"{chats!r}; remove it or pass --data")
        return meta
    try:
        fraction = held_out_fraction(chats, seed, val_fraction)
        if fraction != val_fraction:
            log(f"note: {val_fraction:g} of these chats would hold none out for validation; "
                f"holding out {fraction:.3g} instead")
        return prepare_corpus(chats, tokenizer, data, chat=True, val_fraction=fraction, seed=seed,
                              progress=progress)
    except UserError:
        raise
    except (OSError, ValueError) as e:  # an unreadable file, a row that is not JSON
        raise DataError(f"{chats}: {e}") from None


def sft(cfg: TrainConfig, chats: str, val_fraction: float = 0.05, resume: bool = False,
        log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Prepare `chats` into cfg.data (once), then train on them; returns the last metrics record."""
    meta = prepare_chats(chats, Tokenizer.load(cfg.tokenizer), cfg.data, val_fraction=val_fraction,
                         seed=cfg.seed, progress=cfg.progress, log=log)
    log(f"SFT data in {cfg.data}: {meta['train_documents']:,} conversations, "
        f"{meta['train_tokens']:,} tokens (loss on the assistant's turns only)")
    _, last = train(cfg, resume=resume)
    return last


def sample_teacher(engine: Any, task: Task, out: str | Path, k: int, params: SamplingParams,
                   shortest: bool = False, progress: bool = True) -> dict:
    """Rejection sampling (train.rejection) of `task` into the chat file `out`; its counts. Fewer
    than two kept samples make no training set (one to train on, one held out), and are refused."""
    from nanoseek.train.rejection import rejection_sample, write_samples

    counts = write_samples(rejection_sample(engine, task, k, params, shortest=shortest,
                                            progress=progress), task.name, str(out))
    if counts["kept"] < 2:
        raise DistillError(f"the teacher passed {counts['kept']} of {counts['samples']} samples: "
                           "too few to distill (train the teacher longer, or raise --k or --size)")
    return counts


def distill(teacher: str, load_task: Callable[[], Task], cfg: TrainConfig, *, k: int,
            params: SamplingParams, shortest: bool = False, val_fraction: float = 0.05,
            resume: bool = False, device: str | None = None,
            log: Callable[[str], Any] = print) -> dict[str, Any]:
    """R1's distillation: rejection-sample the teacher on a task into OUT_DIR/teacher_samples.jsonl,
    then SFT cfg's model (a new student, in the teacher's tokens) on them. load_task is called
    only when the teacher is sampled: a resumed run reuses its samples. Returns the last metrics
    record."""
    samples = Path(cfg.out_dir) / "teacher_samples.jsonl"
    if resume and samples.exists():
        log(f"reusing the teacher's samples in {samples}")
    else:
        from nanoseek.infer.engine import Engine

        task = load_task()
        try:
            engine = Engine.from_checkpoint(teacher, device=device, max_batch=64)
            counts = sample_teacher(engine, task, samples, k, params, shortest, cfg.progress)
        except UserError:
            raise
        except ValueError as e:  # a bad checkpoint, or a prompt + max_tokens past the context
            raise DistillError(f"teacher {teacher}: {e}") from None
        log(f"teacher {teacher}: kept {counts['kept']:,} of {counts['samples']:,} samples "
            f"({counts['prompts_solved']:,} of {counts['prompts']:,} prompts solved) -> {samples}")
    return sft(cfg, str(samples), val_fraction, resume, log)


__all__ = ["DISTILL_DEFAULTS", "SFT_DEFAULTS", "DistillError", "distill", "held_out_fraction",
           "prepare_chats", "sample_teacher", "sft", "sft_config"]
