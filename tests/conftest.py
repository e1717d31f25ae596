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


# A converted model's chat format: ChatML as SmolLM2's template writes it, which does not open a
# think block, so a model taught R1's format writes `<think>` itself, as text (no think tokens)
CHATML_NO_THINK = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
                   "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


@pytest.fixture(scope="session")
def chatml_student_dir(tmp_path_factory) -> Path:
    """A tiny llama with a ChatML tokenizer of its own (CHATML_NO_THINK), SFT-trained for a few
    seconds on R1-style sums (`<think>` working `</think>` answer, written as text): a student
    in a foreign chat format that has learnt R1's."""
    import json

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from nanoseek.data import chat_tokens
    from nanoseek.files import write_jsonl
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.pretrain import TrainConfig
    from nanoseek.train.runtime import latest_checkpoint
    from nanoseek.train.sft import sft

    root = tmp_path_factory.mktemp("chatml_student")
    chats = [{"messages": [{"role": "user", "content": f"Calculate {a} + {b}."},
                           {"role": "assistant", "content": str(a + b),
                            "reasoning_content": f"{a} + {b} = {a + b}"}]}
             for a in range(10) for b in range(10)]
    write_jsonl(iter(chats), root / "chats.jsonl")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(
        [f"<think>\n{m[1]['reasoning_content']}\n</think>\n\n{m[0]['content']} {m[1]['content']}"
         for m in (c["messages"] for c in chats)],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                           "<|im_end|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok_dir = root / "tok"
    tok_dir.mkdir()
    hf.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "chat_template": CHATML_NO_THINK}))
    tok = Tokenizer.load(tok_dir)
    assert tok.template is not None and tok.think_start_id is None
    assert "<think>" in tok.decode(chat_tokens(tok, chats[0]["messages"])[0])
    (root / "llama.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "tie_word_embeddings": True}))
    cfg = TrainConfig(model=str(root / "llama.json"), tokenizer=str(tok_dir),
                      data=str(root / "data"), out_dir=str(root / "run"), seq_len=64,
                      micro_batch_size=8, max_steps=150, lr=3e-3, warmup_steps=10, eval_every=0,
                      save_every=0, progress=False, seed=0)
    torch.manual_seed(0)
    sft(cfg, str(root / "chats.jsonl"), val_fraction=0.1, log=lambda _: None)
    return latest_checkpoint(root / "run")
