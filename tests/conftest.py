"""Shared fixtures: a tiny chat model trained for a few seconds, so that generation tests see a
model with real preferences (and an MTP module that drafts well), not near-uniform random logits."""

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory) -> Path:
    """A checkpoint directory (model + tokenizer) of `tiny` trained on R1-style arithmetic chats."""
    from nanoseek.data import prepare_corpus
    from nanoseek.files import write_jsonl
    from nanoseek.tasks.gym import gym_documents
    from nanoseek.tokenizer import train_tokenizer
    from nanoseek.train.pretrain import TrainConfig, train
    from nanoseek.train.runtime import latest_checkpoint

    root = tmp_path_factory.mktemp("tiny_chat")
    docs = list(gym_documents("basic_arithmetic", 600, seed=0,
                              config={"min_terms": 2, "max_terms": 2,
                                      "min_digits": 1, "max_digits": 2}))
    write_jsonl(iter(docs), root / "chats.jsonl")
    tok = train_tokenizer([d["text"] for d in docs], vocab_size=512)
    tok.save(root / "tok")
    prepare_corpus(str(root / "chats.jsonl"), tok, root / "data", val_fraction=0.1, seed=0,
                   field="text", progress=False)
    cfg = TrainConfig(model="tiny", data=str(root / "data"), tokenizer=str(root / "tok"),
                      out_dir=str(root / "run"), seq_len=128, micro_batch_size=8, max_steps=300,
                      lr=3e-3, warmup_steps=10, eval_every=0, save_every=0, progress=False, seed=0)
    torch.manual_seed(0)
    train(cfg)
    return latest_checkpoint(root / "run")
