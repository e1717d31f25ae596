"""Quantized projections (model/quant.py). int4: the blocks a Q4_1 file holds come back exactly, a
quantized model computes what its dense twin does, and the engine and CLI run it. int8: products
within int8 rounding, smoothing that helps where a channel is an outlier, a model (GQA and MLA)
close to its fp32 twin, and the engine and CLI run it."""

import json

import pytest
import torch
from torch import nn

from nanoseek.checkpoint import save_model
from nanoseek.cli import main
from nanoseek.infer.engine import CALIBRATION, Engine, EngineError, calibration_ids
from nanoseek.infer.sampling import SamplingParams
from nanoseek.model.config import ModelConfig, get_preset
from nanoseek.model.model import Transformer
from nanoseek.model.quant import (
    GROUP,
    Int4Linear,
    Int8Linear,
    QuantError,
    int4_supported,
    quantize_int4,
    quantize_int8,
    smoothing,
)
from nanoseek.tokenizer import Tokenizer

needs_int4 = pytest.mark.skipif(int4_supported() is not None, reason=str(int4_supported()))


def q4_1_blocks(n: int, k: int, seed: int) -> torch.Tensor:
    """An (n, k) weight made as llama.cpp's Q4_1 makes one: per block of 32 inputs a scale and a
    minimum (bf16-exact here, as the kernel keeps them), values minimum + scale * q, q in 0..15
    with 0 and 15 both present."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // GROUP, GROUP), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    scale = (torch.rand(n, k // GROUP, 1, generator=g) * 0.05 + 0.01).bfloat16().float()
    lo = -8 * scale + (torch.randn(n, k // GROUP, 1, generator=g) * 0.02).bfloat16().float()
    return (lo + scale * q).view(n, k)


@needs_int4
def test_int4_linear_gives_back_the_q4_1_blocks_it_was_made_from():
    w = q4_1_blocks(48, 96, seed=0)
    lin = nn.Linear(96, 48, bias=True)
    with torch.no_grad():
        lin.weight.copy_(w)
    q = Int4Linear(lin)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == 48 * 96 // 2  # 4 bits a weight
    x = torch.randn(5, 96).bfloat16()
    want = nn.functional.linear(x.float(), w, lin.bias.bfloat16().float())
    # the same weights: what differs is bf16 rounding of the output and of the bias
    assert (q(x).float() - want).abs().max() <= 2 ** -7 * want.abs().max()
    # the weight itself, read back one column at a time
    back = q(torch.eye(96).bfloat16()).float() - lin.bias.bfloat16().float()
    assert (back.T - w).abs().max() <= 2 ** -7 * w.abs().max()


LLAMA = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1)


def q4_1_model(cfg: ModelConfig, seed: int) -> Transformer:
    """A model whose every projection is made of Q4_1 blocks (as one converted from a Q4_1 GGUF
    file), biases random."""
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for i, m in enumerate(model.modules()):
            if isinstance(m, nn.Linear) and m.weight.shape[1] % GROUP == 0 and m is not \
                    model.lm_head:
                m.weight.copy_(q4_1_blocks(*m.weight.shape, seed=i))
                if m.bias is not None:
                    m.bias.normal_(0, 0.3)
    return model


@needs_int4
@pytest.mark.parametrize("changes", [{}, {"model_type": "qwen2"}], ids=["llama", "qwen2-bias"])
def test_a_quantized_model_computes_what_its_dense_twin_does(changes):
    cfg = ModelConfig.from_dict({**LLAMA, **changes})
    model = q4_1_model(cfg, seed=1)
    dense = q4_1_model(cfg, seed=1)  # fp32: the blocks' values exactly, as int4 keeps them
    assert quantize_int4(model) == 2 * 7  # q, k, v, o, gate, up, down in both layers
    assert isinstance(model.layers[0].self_attn.k_proj, Int4Linear)
    assert isinstance(model.lm_head, nn.Linear)  # the output layer stays 16-bit
    if changes:
        assert model.layers[1].self_attn.q_proj.bias is not None
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got, want = model(ids).logits.float(), dense(ids).logits.float()
        bf16 = dense.to(torch.bfloat16)(ids).logits.float()
    assert want.abs().max() > 1  # a signal worth comparing
    # the same weights; the quantized model computes in bf16, so it is off by about what bf16 is
    # (a wrong block, scale or offset would be off by the logits' own size)
    assert (got - want).abs().max() <= 2 * (bf16 - want).abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


@needs_int4
def test_deepseek_v3_keeps_what_absorption_reads_dense():
    """MLA's kv_b_proj is read as a weight by the absorbed attention and stays dense, as does a
    projection the kernel cannot take (kv_a_proj_with_mqa: 40 outputs, not a multiple of 16); the
    MTP module's projection is swapped. The MoE model then computes what its dense twin does."""
    cfg = get_preset("tiny").replace(initializer_range=0.1)
    model, dense = q4_1_model(cfg, seed=4), q4_1_model(cfg, seed=4)
    quantize_int4(model)
    attn = model.layers[0].self_attn
    assert isinstance(attn.o_proj, Int4Linear) and isinstance(attn.q_a_proj, Int4Linear)
    assert type(attn.kv_b_proj) is nn.Linear and type(attn.kv_a_proj_with_mqa) is nn.Linear
    assert isinstance(model.mtp[0].eh_proj, Int4Linear)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = model(ids).logits.float(), dense(ids).logits.float()
    # bf16 rounding may flip a near-tied expert choice, so the property is with margin: every
    # position's logits point the way the dense model's do
    cos = nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() >= 0.95, cos.min()


@needs_int4
def test_engine_decodes_a_quantized_model_through_its_cache(tmp_path, tiny_chat_dir):
    """Greedy tokens of the engine (prefill, then one token a step through the bf16 cache) are the
    quantized model's own: each is the top token of a full forward over the text so far, to
    within bf16 rounding."""
    model = q4_1_model(ModelConfig.from_dict(LLAMA), seed=3)
    save_model(model, tmp_path / "m")
    Tokenizer.load(tiny_chat_dir).save(tmp_path / "m")
    engine = Engine.from_checkpoint(str(tmp_path / "m"), device="cpu", quantize="int4",
                                    max_batch=2, max_seq_len=64)
    assert engine.dtype == torch.bfloat16
    assert isinstance(engine.model.layers[0].mlp.up_proj, Int4Linear)
    prompts = [[5, 17, 99, 3], [42, 8, 8, 120, 7, 61, 30]]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    for p, o in zip(prompts, outs):
        assert len(o.token_ids) == 10
        with torch.inference_mode():
            logits = engine.model(torch.tensor([p + o.token_ids])).logits[0].float()
        for j, t in enumerate(o.token_ids):
            row = logits[len(p) - 1 + j]
            assert row[t] >= row.max() - 0.05 * row.abs().max()


@needs_int4
def test_quantize_refuses_what_it_cannot_run(tmp_path, tiny_chat_dir):
    with pytest.raises(EngineError, match="computes in bfloat16"):
        Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", dtype="float32",
                               quantize="int4")
    with pytest.raises(EngineError, match="int4, int8 or none"):
        Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", quantize="int2")
    on_meta = Transformer(ModelConfig.from_dict(LLAMA)).to("meta")
    with pytest.raises(QuantError, match="runs on the CPU"):
        quantize_int4(on_meta)


@pytest.mark.parametrize("bits, dtype, refusal", [
    pytest.param("int4", "float32", "--quantize int4 computes in bfloat16", marks=needs_int4),
    ("int8", "bfloat16", "--quantize int8 computes in float32")])
def test_generate_runs_quantized(bits, dtype, refusal, tiny_chat_dir, tmp_path, capsys):
    """`--quantize` on the CLI: the engine flags carry it (tiny's 64-wide layers fit)."""
    inp, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    inp.write_text(json.dumps({"messages": [{"role": "user", "content": "Calculate 2 + 3."}]})
                   + "\n")
    assert main(["generate", str(tiny_chat_dir), "--input", str(inp), "--output", str(out),
                 "--max-tokens", "20", "--temperature", "0", "--quiet", "--quantize",
                 bits]) == 0
    done = json.loads(out.read_text())
    assert done["completions"][0]["token_ids"]
    # the flag reaches the engine: with the other --dtype it is refused there, by name
    assert main(["generate", str(tiny_chat_dir), "--input", str(inp), "--output",
                 str(tmp_path / "o2.jsonl"), "--quiet", "--quantize", bits, "--dtype",
                 dtype]) == 2
    assert refusal in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# int8


def linear(n: int, k: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def outlier_input(rows: int, k: int, seed: int) -> torch.Tensor:
    """Activations whose channel 3 is 60x the others, as a real model's residual stream has a
    few."""
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed))
    x[:, 3] *= 60
    return x


def test_int8_linear_is_the_product_to_int8_rounding():
    """One matrix for two linears reading the same x: their outputs side by side, each off by at
    most what rounding weights and activations to 8 bits costs (a wrong scale or a transposed
    weight would be off by the outputs' own size)."""
    a, b = linear(48, 64, seed=0), linear(16, 64, seed=1, bias=False)
    q = Int8Linear([a, b])
    assert q.weight_q.dtype == torch.int8 and q.weight_q.shape == (64, 64)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        want = torch.cat([a(x), b(x)], dim=-1)
    got = q(x)
    assert got.shape == (2, 5, 64) and got.dtype == x.dtype
    err = (got - want).abs().max()
    assert err <= 0.03 * want.abs().max(), err
    assert err > 0  # it did round: this is not the fp32 product


def test_smoothing_moves_an_outlier_channel_into_the_weights():
    """With a channel 60x the rest, a per-token scale leaves the other channels a few levels
    each; SmoothQuant's factor, measured on calibration inputs, gives them back their precision
    (on other inputs of the same kind), and leaves the unrounded product as it was."""
    lin = linear(32, 64, seed=2)
    calib, x = outlier_input(64, 64, seed=3), outlier_input(16, 64, seed=4)
    with torch.no_grad():
        want = lin(x)
    smooth = smoothing([lin], calib.abs().amax(0))
    assert smooth[3] > 4 * smooth[torch.arange(64) != 3].max()
    plain, smoothed = Int8Linear([lin]), Int8Linear([lin], smooth)
    err_plain = (plain(x) - want).abs().mean()
    err_smooth = (smoothed(x) - want).abs().mean()
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)
    # the factor itself is exact algebra: x / s @ (W * s).T = x @ W.T
    with torch.no_grad():
        moved = (x / smooth) @ (lin.weight * smooth).T + lin.bias
    assert torch.allclose(moved, want, atol=1e-4)


@pytest.mark.parametrize("changes", [{}, {"model_type": "qwen2"}], ids=["llama", "qwen2-bias"])
def test_an_int8_model_computes_what_its_fp32_twin_does(changes, tiny_chat_dir):
    """q, k and v become one int8 matrix and gate and up another (o, down and lm_head one each),
    calibrated on the built-in text; the logits point where fp32's do."""
    cfg = ModelConfig.from_dict({**LLAMA, **changes})
    torch.manual_seed(5)
    model, dense = Transformer(cfg).eval(), Transformer(cfg).eval()
    dense.load_state_dict(model.state_dict())
    calibration = calibration_ids(Tokenizer.load(tiny_chat_dir), 200)
    calibration = calibration.clamp(max=cfg.vocab_size - 1)
    assert quantize_int8(model, calibration) == 2 * 4 + 1
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert isinstance(attn.qkv_proj, Int8Linear) and not hasattr(attn, "q_proj")
    assert isinstance(mlp.gate_up_proj, Int8Linear) and isinstance(mlp.down_proj, Int8Linear)
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.inv_smooth is not None
    assert (attn.qkv_proj.bias is not None) == bool(changes)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        got, want = model(ids).logits, dense(ids).logits
    assert want.abs().max() > 1
    cos = nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() >= 0.99, cos.min()
    # int8's top token is fp32's or a near-tie of it (a random model's logits have many)
    gap = want.max(-1).values - want.gather(-1, got.argmax(-1, keepdim=True)).squeeze(-1)
    spread = want.max(-1).values - want.min(-1).values
    assert (gap / spread).max() <= 0.05, (gap / spread).max()


def test_deepseek_v3_in_int8_keeps_what_absorption_reads():
    """MLA's kv_b_proj stays dense (the absorbed attention reads its weight), the MoE's routed
    experts too (one grouped tensor); every other projection, the shared experts' fused, is int8.
    Without calibration there is no smoothing."""
    cfg = get_preset("tiny").replace(initializer_range=0.1)
    torch.manual_seed(7)
    model, dense = Transformer(cfg).eval(), Transformer(cfg).eval()
    dense.load_state_dict(model.state_dict())
    quantize_int8(model)
    attn = model.layers[0].self_attn
    assert type(attn.kv_b_proj) is nn.Linear and isinstance(attn.kv_a_proj_with_mqa, Int8Linear)
    assert attn.o_proj.inv_smooth is None
    assert isinstance(model.mtp[0].eh_proj, Int8Linear)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        got, want = model(ids).logits, dense(ids).logits
    # rounding may flip a near-tied expert choice (and then one position's logits): the property
    # holds with margin at nearly every position
    cos = nn.functional.cosine_similarity(got, want, dim=-1)
    assert (cos >= 0.99).float().mean() >= 0.9, cos


def test_engine_decodes_an_int8_model_through_its_cache(tiny_chat_dir):
    """Greedy tokens of the int8 engine (fp32 cache) are the int8 model's own: each is the top
    token of a full forward over the text so far, to within rounding; and its answers are the
    fp32 engine's on most prompts (a near-tie may part them)."""
    engine = Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", quantize="int8",
                                    max_batch=4, max_seq_len=128)
    assert engine.dtype == torch.float32
    assert isinstance(engine.model.layers[0].self_attn.o_proj, Int8Linear)
    fp32 = Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", max_batch=4, max_seq_len=128)
    tok = engine.tok
    prompts = [tok.encode_chat([{"role": "user", "content": f"Calculate {a} + {b}."}])
               for a, b in ((2, 3), (14, 7), (31, 45), (8, 60))]
    greedy = SamplingParams(temperature=0, max_tokens=24)
    outs = engine.generate(prompts, greedy)
    for p, o in zip(prompts, outs):
        with torch.inference_mode():
            logits = engine.model(torch.tensor([p + o.token_ids])).logits[0]
        for j, t in enumerate(o.token_ids):
            row = logits[len(p) - 1 + j]
            assert row[t] >= row.max() - 0.02 * row.abs().max()
    same = sum(a.text == b.text for a, b in zip(outs, fp32.generate(prompts, greedy)))
    assert same >= 3, same


def test_int8_refuses_what_it_cannot_run(tiny_chat_dir):
    with pytest.raises(EngineError, match="int8 computes in float32, not bfloat16"):
        Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", dtype="bfloat16",
                               quantize="int8")
    on_meta = Transformer(ModelConfig.from_dict(LLAMA)).to("meta")
    with pytest.raises(QuantError, match="int8 runs on the CPU"):
        quantize_int8(on_meta)


def test_calibration_is_a_chat_in_the_models_template(tiny_chat_dir):
    tok = Tokenizer.load(tiny_chat_dir)
    ids = calibration_ids(tok, 4096)[0].tolist()
    assert 300 < len(ids) <= 1024
    text = tok.decode(ids)
    assert "bicycle" in text and "def add" in text
    # the question as the user's turn, in the template (what a chat prompt starts with)
    question = CALIBRATION.read_text().split("\n\n")[0]
    start = tok.encode_chat([{"role": "user", "content": question}], add_generation_prompt=False)
    assert ids[: len(start)] == start
    assert calibration_ids(tok, 50).shape == (1, 50)
