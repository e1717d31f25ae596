"""R1's dense students: llama and qwen2 models, numerically transformers' LlamaForCausalLM and
Qwen2ForCausalLM in both checkpoint directions, cached decoding equal to a full forward, and the
engine and trainer running them."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from nanoseek.checkpoint import load_model, save_model  # noqa: E402
from nanoseek.model.config import ConfigError, ModelConfig  # noqa: E402
from nanoseek.model.model import KVCache, Transformer  # noqa: E402

transformers.logging.set_verbosity_error()

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
PLAIN = {"rope_type": "default", "rope_theta": 10000.0}

# Together: grouped (3 query heads a KV head) and multi-head, Llama 3's rope scaling and plain
# rope, tied and untied embeddings, Llama's attention biases, Qwen2's q/k/v biases, a head_dim
# other than hidden / heads
CONFIGS = {
    "llama3-gqa-tied": (LlamaConfig, LlamaForCausalLM,
                        dict(num_attention_heads=6, num_key_value_heads=2, rope_parameters=LLAMA3,
                             tie_word_embeddings=True)),
    "llama-mha-bias": (LlamaConfig, LlamaForCausalLM,
                       dict(num_attention_heads=4, num_key_value_heads=4, rope_parameters=PLAIN,
                            attention_bias=True, head_dim=16)),
    "qwen2-gqa": (Qwen2Config, Qwen2ForCausalLM,
                  dict(num_attention_heads=6, num_key_value_heads=2, rope_parameters=PLAIN)),
    "qwen2-tied": (Qwen2Config, Qwen2ForCausalLM,
                   dict(num_attention_heads=4, num_key_value_heads=1, rope_parameters=LLAMA3 | {
                       "rope_type": "default"}, tie_word_embeddings=True)),
}


def hf_model(name: str, seed: int = 0, **changes):
    cfg_cls, model_cls, kw = CONFIGS[name]
    kw = {**kw, **changes}
    base = dict(vocab_size=199, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                max_position_embeddings=128, initializer_range=0.1, bos_token_id=1,
                eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**base, **kw})).eval()
    with torch.no_grad():  # biases are zero at init: give them values, so a dropped one shows
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.3)
    return model


def ids_for(vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 40), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_checkpoint_loads_with_identical_logits(name, tmp_path):
    ref = hf_model(name)
    ref.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.cfg.model_type == ref.config.model_type
    ids = ids_for(ref.config.vocab_size, 1)
    with torch.no_grad():
        expected, got = ref(ids).logits, model(ids).logits
    assert expected.abs().max() > 0.5  # a signal large enough for 1e-5 to mean something
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_nanoseek_checkpoint_loads_in_transformers_with_identical_logits(name, tmp_path):
    cfg = ModelConfig.from_dict(hf_model(name).config.to_dict())
    torch.manual_seed(3)
    model = Transformer(cfg.replace(initializer_range=0.1)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.3)
    save_model(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == cfg.model_type and "kv_lora_rank" not in written
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == CONFIGS[name][1].__name__
    ids = ids_for(cfg.vocab_size, 2)
    with torch.no_grad():
        assert (ref(ids).logits - model(ids).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["llama3-gqa-tied", "qwen2-gqa"])
def test_cached_decoding_equals_a_full_forward(name, tmp_path):
    """Prefill then one token at a time through the cache ([k; v] of the KV heads per token), rows
    at different offsets: the logits of a full forward."""
    ref = hf_model(name)
    ref.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    ids = ids_for(model.cfg.vocab_size, 3)
    cache = KVCache(model.cfg, 3, 64)
    assert cache.kv.shape[-1] == 2 * model.cfg.num_key_value_heads * model.cfg.head_dim
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :30], cache=cache).logits]
        for t in range(30, 40):
            steps.append(model(ids[:, t:t + 1], cache=cache, start_pos=t).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_dense_configs_refuse_what_they_cannot_run():
    base = dict(model_type="llama", vocab_size=10, hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ConfigError, match="num_key_value_heads.*must divide"):
        ModelConfig(**base, num_key_value_heads=3)
    with pytest.raises(ConfigError, match="mlp_bias True is not supported"):
        ModelConfig.from_dict({**base, "mlp_bias": True})
    with pytest.raises(ConfigError, match="use_sliding_window True"):
        ModelConfig.from_dict({**base, "model_type": "qwen2", "use_sliding_window": True})
    with pytest.raises(ConfigError, match="rope_scaling.low_freq_factor"):
        ModelConfig(**base, num_key_value_heads=2, rope_scaling={"type": "llama3", "factor": 8.0})
    with pytest.raises(ConfigError, match="model_type must be one of"):
        ModelConfig.from_dict({**base, "model_type": "mistral"})
    # a dense family has no experts, latent or MTP, whatever V3 defaults the dataclass carries
    cfg = ModelConfig(**base, num_key_value_heads=2)
    assert cfg.n_routed_experts == 0 and cfg.num_nextn_predict_layers == 0 and cfg.head_dim == 8


@pytest.mark.parametrize("name", CONFIGS)
def test_counts_are_the_models_own(name):
    from nanoseek.model.counting import count_params

    cfg = ModelConfig.from_dict(hf_model(name).config.to_dict())
    model = Transformer(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())


def test_r1_students_counted_as_published(capsys):
    """Qwen2.5-Math-1.5B (R1-Distill-Qwen-1.5B) and Llama-3.1-8B (R1-Distill-Llama-8B): their
    published parameter counts, and `nanoseek info` setting their K/V cache beside V3's latent."""
    from nanoseek.cli import main
    from nanoseek.model import get_preset
    from nanoseek.model.counting import count_params, kv_cache_bytes_per_token

    assert count_params(get_preset("r1-distill-qwen-1.5b")).total == 1_777_088_000
    assert count_params(get_preset("r1-distill-llama-8b")).total == 8_030_261_248
    # 32 layers x (K, V) x 8 KV heads x 128 x 2 bytes
    assert kv_cache_bytes_per_token(get_preset("r1-distill-llama-8b")).mla_latent == 131_072
    assert main(["info", "r1-distill-qwen-1.5b"]) == 0
    out = capsys.readouterr().out
    assert "2 KV heads of 128, qwen2" in out and "28,672" in out and "70,272" in out


def test_engine_greedy_equals_transformers_generate(tmp_path):
    """The engine over a llama model's K/V cache (batched prompts of different lengths, rows
    joining and leaving): transformers' greedy tokens, and the same with the prefix cache."""
    from nanoseek.infer.engine import Engine
    from nanoseek.infer.prefix_cache import PrefixCache
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tokenizer import train_tokenizer

    ref = hf_model("llama3-gqa-tied", seed=4, vocab_size=300)
    ref.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    tok = train_tokenizer([f"{a} + {b} = {a + b}" for a in range(40) for b in range(40)],
                          vocab_size=300)
    prompts = [list(map(int, ids_for(300, s)[0, : 5 + 7 * s])) for s in range(4)]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for pc in (None, PrefixCache()):
        engine = Engine(model, tok, max_batch=2, max_seq_len=64, prefix_cache=pc)
        outs = engine.generate(prompts, greedy)
        for p, o in zip(prompts, outs):
            want = ref.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                                pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
            assert o.token_ids == want


def test_distill_into_a_qwen2_student_then_grpo(tiny_chat_dir, tmp_path):
    """R1-Distill's path at toy scale: nanoseek's R1 teacher's correct samples train a new Qwen2
    student (its loss falls), which transformers loads as Qwen2ForCausalLM, and GRPO then trains
    it."""
    from nanoseek.cli import main
    from nanoseek.train.grpo import GRPOConfig, train_grpo

    task = tmp_path / "short.py"  # a task the tiny teacher often passes: a one-character answer
    task.write_text("def prompts():\n"
                    "    for a in range(1, 9):\n"
                    "        for b in range(1, 9):\n"
                    "            yield f'Calculate {a} + {b}.', str(a + b)\n"
                    "def score(completion, reference):\n"
                    "    return float(len(completion.split('</think>')[-1].strip()) == 1)\n")
    student = tmp_path / "qwen2.json"
    cfg = ModelConfig(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True)
    cfg.save(student)
    out = tmp_path / "d"
    assert main(["distill", str(tiny_chat_dir), "--task", str(task), "--size", "64",
                 "--k", "8", "--max-tokens", "40", "--student", str(student), "--out-dir",
                 str(out), "--seq-len", "64", "--micro-batch-size", "4", "--max-steps", "30",
                 "--eval-every", "0", "--no-progress", "--val-fraction", "0.2"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.85 * losses[0]
    ck = out / "checkpoints" / "step_000030"
    assert type(transformers.AutoModelForCausalLM.from_pretrained(ck)).__name__ == \
        "Qwen2ForCausalLM"
    _, last = train_grpo(GRPOConfig(model=str(ck), task=str(task), task_size=60,
                                    held_out=10, steps=2, prompts_per_step=4, group_size=4,
                                    max_tokens=24, eval_every=0, save_every=0, progress=False,
                                    out_dir=str(tmp_path / "grpo")))
    assert last["step"] == 2 and load_model(tmp_path / "grpo" / "checkpoints" / "step_000002"
                                            ).cfg.model_type == "qwen2"
