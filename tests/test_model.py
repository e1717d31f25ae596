"""Behaviour of the model itself: MLA paths, the latent cache, routing, balancing, MTP, and the
dtype rules of mixed precision."""

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import nanoseek.model.model as model_module
from nanoseek.model import ConfigError, get_preset
from nanoseek.model.model import (
    Documents,
    KVCache,
    MoE,
    Transformer,
    grouped_mm,
    loop_grouped_mm,
    max_violation,
    update_correction_bias,
)


def tiny_model(seed=0, **changes) -> Transformer:
    torch.manual_seed(seed)
    cfg = get_preset("tiny").replace(initializer_range=0.1, **changes)
    model = Transformer(cfg).eval()
    for m in model.moe_layers():  # both signs, so selection really differs from the gate weights
        m.gate.e_score_correction_bias.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("changes", [{}, {"q_lora_rank": None, "rope_scaling": None}])
def test_naive_and_absorbed_attention_agree(changes):
    model = tiny_model(**changes)
    ids = torch.randint(0, model.cfg.vocab_size, (3, 37))
    with torch.no_grad():
        naive = model(ids).logits
        absorbed = model(ids, absorb=True).logits
    assert naive.abs().max() > 0.1  # not a trivially small signal
    torch.testing.assert_close(absorbed, naive, atol=1e-5, rtol=0)


def test_cached_decoding_matches_full_forward_at_every_step():
    model = tiny_model()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.cfg, batch_size=2, max_len=32)
        prefill = model(ids[:, :9], cache=cache).logits
        torch.testing.assert_close(prefill, full[:, :9], atol=1e-5, rtol=0)
        for t in range(9, 24):
            step = model(ids[:, t:t + 1], cache=cache, start_pos=t).logits
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=0)
    # the cache holds only the latent and the rope key: kv_lora_rank + qk_rope_head_dim per layer
    cfg = model.cfg
    per_token = (cache.c_kv.numel() + cache.k_pe.numel()) // (2 * 32)
    n_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    assert per_token == n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)


def test_cached_decoding_with_per_row_positions():
    """Rows at different lengths decode together, each matching its own full forward."""
    model = tiny_model(seed=1)
    a = torch.randint(0, model.cfg.vocab_size, (1, 12))
    b = torch.randint(0, model.cfg.vocab_size, (1, 7))
    with torch.no_grad():
        full_a, full_b = model(a).logits[0], model(b).logits[0]
        cache = KVCache(model.cfg, batch_size=2, max_len=16)
        # right-padded prefill of both prompts; the padding is overwritten before it is ever read
        prompts = torch.zeros(2, 5, dtype=torch.long)
        prompts[0], prompts[1] = a[0, :5], b[0, :5]
        model(prompts, cache=cache)
        lens = torch.tensor([5, 5])
        for _ in range(7):
            nxt = torch.stack([a[0, lens[0]] if lens[0] < 12 else a[0, 0],
                               b[0, lens[1]] if lens[1] < 7 else b[0, 0]])
            out = model(nxt[:, None], cache=cache, start_pos=lens).logits[:, 0]
            if lens[0] < 12:
                torch.testing.assert_close(out[0], full_a[lens[0]], atol=1e-5, rtol=0)
            if lens[1] < 7:
                torch.testing.assert_close(out[1], full_b[lens[1]], atol=1e-5, rtol=0)
            lens = lens + 1


def test_cache_overflow_is_a_clear_error():
    model = tiny_model()
    cache = KVCache(model.cfg, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="past the cache length 4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="needs a cache"):
        model(torch.zeros(1, 2, dtype=torch.long), start_pos=3)


def reference_routing(moe: MoE, x: torch.Tensor):
    """Per-token routing written out from the V3 report, for comparison with the batched gate."""
    cfg = moe.cfg
    E, G, K = cfg.n_routed_experts, cfg.n_group, cfg.num_experts_per_tok
    out_w, out_i = [], []
    for tok in x:
        s = torch.sigmoid(tok.double() @ moe.gate.weight.double().T)
        biased = s + moe.gate.e_score_correction_bias.double()
        per = E // G
        group_score = [sorted(biased[g * per:(g + 1) * per].tolist(), reverse=True)[:2]
                       for g in range(G)]
        kept = sorted(range(G), key=lambda g: -sum(group_score[g]))[: cfg.topk_group]
        allowed = [e for e in range(E) if e // per in kept]
        chosen = sorted(allowed, key=lambda e: -biased[e].item())[:K]
        w = s[chosen] / s[chosen].sum() * cfg.routed_scaling_factor
        out_w.append(dict(zip(chosen, w.tolist())))
        out_i.append(set(chosen))
    return out_w, out_i


def test_router_matches_per_token_reference():
    model = tiny_model(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=3)
    moe = model.moe_layers()[0]
    x = torch.randn(64, model.cfg.hidden_size)
    weights, idx, _ = moe.gate(x)
    ref_w, ref_i = reference_routing(moe, x)
    for t in range(64):
        assert set(idx[t].tolist()) == ref_i[t]
        for j, e in enumerate(idx[t].tolist()):
            assert weights[t, j].item() == pytest.approx(ref_w[t][e], abs=1e-6)


def test_grouped_expert_dispatch_equals_per_token_loop():
    model = tiny_model()
    moe = model.moe_layers()[0]
    x = torch.randn(2, 33, model.cfg.hidden_size)
    with torch.no_grad():
        y = moe(x)
        flat = x.reshape(-1, x.shape[-1])
        weights, idx, _ = moe.gate(flat)
        I = model.cfg.moe_intermediate_size
        ref = torch.zeros_like(flat)
        for t in range(flat.shape[0]):
            for w, e in zip(weights[t], idx[t]):
                gu = moe.experts.gate_up_proj[e]
                h = F.silu(flat[t] @ gu[:I].T) * (flat[t] @ gu[I:].T)
                ref[t] += w * (h @ moe.experts.down_proj[e].T)
            ref[t] += moe.shared_experts(flat[t])
    torch.testing.assert_close(y.reshape(-1, x.shape[-1]), ref, atol=1e-6, rtol=1e-5)


def test_dropped_groups_are_masked_with_minus_infinity():
    """Biased scores can be negative; masking dropped groups with 0 (the transformers 4.x bug)
    would let an expert of a dropped group win."""
    model = tiny_model(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2)
    gate = model.moe_layers()[0].gate
    with torch.no_grad():
        gate.weight.zero_()  # every score is sigmoid(0) = 0.5
        gate.e_score_correction_bias.copy_(torch.tensor([-0.6, -0.7, -0.8, -0.9,
                                                         -1.0, -1.1, -1.2, -1.3]))
    weights, idx, _ = gate(torch.randn(5, model.cfg.hidden_size))
    assert all(set(row) == {0, 1} for row in idx.tolist())
    # the gate weights use the unbiased scores: equal scores -> equal weights summing to the scale
    torch.testing.assert_close(weights,
                               torch.full_like(weights, model.cfg.routed_scaling_factor / 2))


def test_bias_update_moves_load_toward_balance():
    torch.manual_seed(0)
    model = tiny_model(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=2).train()
    moe = model.moe_layers()[0]
    with torch.no_grad():  # a skewed router: most tokens prefer the same few experts
        moe.gate.e_score_correction_bias.zero_()
        moe.gate.weight.mul_(0.1)
        moe.gate.weight[:3] += (2.0 * torch.randn(model.cfg.hidden_size).sign()
                                / model.cfg.hidden_size**0.5)
    x = torch.randn(8, 64, model.cfg.hidden_size) + torch.randn(model.cfg.hidden_size)
    vios = []
    for _ in range(60):
        with torch.no_grad():
            moe(x)
        vios.append(update_correction_bias(model, gamma=0.01)[0].item())
    assert vios[0] > 2.0, vios[0]  # really skewed to start with
    assert vios[-1] < 0.5 * vios[0] and min(vios[-5:]) < 0.6, (vios[0], vios[-5:])
    assert moe.expert_load.sum() == 0  # counters reset after each update


def test_max_violation():
    assert max_violation(torch.tensor([4.0, 4.0, 4.0, 4.0])).item() == 0
    assert max_violation(torch.tensor([[8.0, 0.0, 4.0, 4.0]])).tolist() == [1.0]


def test_sequence_balance_loss_formula_and_gradient():
    model = tiny_model().train()
    moe = model.moe_layers()[0]
    cfg = model.cfg
    x = torch.randn(3, 10, cfg.hidden_size)
    moe(x)
    loss = moe.balance_loss
    flat = x.reshape(-1, cfg.hidden_size)
    _, idx, scores = moe.gate(flat)
    E, K, s = cfg.n_routed_experts, cfg.num_experts_per_tok, 10
    expected = 0.0
    for b in range(3):
        counts = torch.bincount(idx.view(3, s * K)[b], minlength=E).float()
        f = counts * E / (K * s)
        sc = scores.view(3, s, E)[b]
        P = (sc / sc.sum(-1, keepdim=True)).mean(0)
        expected += cfg.aux_loss_alpha * (f * P).sum().item() / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0


def test_forward_losses_and_router_stats():
    model = tiny_model().train()
    cfg = model.cfg
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    x, y = ids[:, :-1], ids[:, 1:]
    out = model(x, y)
    main = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(out.main_loss, main)
    assert len(out.mtp_logits) == cfg.num_nextn_predict_layers
    assert out.mtp_logits[0].shape == (2, 14, cfg.vocab_size)
    mtp = F.cross_entropy(out.mtp_logits[0].flatten(0, 1), y[:, 1:].flatten())
    torch.testing.assert_close(out.mtp_loss, cfg.mtp_loss_weight * mtp)
    torch.testing.assert_close(out.loss, out.main_loss + out.mtp_loss + out.balance_loss)
    assert out.expert_load.shape == (cfg.n_moe_layers, cfg.n_routed_experts)
    assert out.expert_load.sum(-1).tolist() == [2 * 15 * cfg.num_experts_per_tok] * cfg.n_moe_layers
    assert out.max_vio.shape == (cfg.n_moe_layers,)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    # ignore_index -100 drops positions from both losses
    y2 = y.clone()
    y2[:, :5] = -100
    out2 = model(x, y2)
    torch.testing.assert_close(out2.main_loss, F.cross_entropy(out2.logits[:, 5:].flatten(0, 1),
                                                               y[:, 5:].flatten()))


def test_mtp_sees_the_next_token_and_leaves_main_logits_alone():
    model = tiny_model()
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] + 1) % model.cfg.vocab_size
    with torch.no_grad():
        a, b = model(ids, mtp=True), model(ids2, mtp=True)
        plain = model(ids)
    assert plain.mtp_logits is None
    torch.testing.assert_close(a.logits, plain.logits)
    torch.testing.assert_close(a.logits[:, :-1], b.logits[:, :-1])  # causal main model
    # the MTP prediction at position 10 (of token 12) reads the embedding of token 11
    torch.testing.assert_close(a.mtp_logits[0][:, :-1], b.mtp_logits[0][:, :-1])
    assert not torch.allclose(a.mtp_logits[0][:, -1], b.mtp_logits[0][:, -1])


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 64, (4, 33))
    losses = []
    for _ in range(30):
        out = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        update_correction_bias(model)
        losses.append(out.main_loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_dtype_cast_keeps_routing_state_fp32():
    model = tiny_model().to(torch.bfloat16)
    moe = model.moe_layers()[0]
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    assert model.inv_freq.dtype == torch.float32
    model(torch.randint(0, 100, (1, 8)))  # and runs


def test_tied_embeddings_share_one_matrix():
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_fused_head_loss_matches_cross_entropy_and_its_gradients():
    from nanoseek.model.model import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(700, 32, requires_grad=True)  # several row blocks of a 2048-word vocabulary
    w = (0.3 * torch.randn(2048, 32)).requires_grad_()
    labels = torch.randint(0, 2048, (700,))
    labels[::7] = -100
    loss, logits = linear_cross_entropy(h, w, labels)
    (loss * 3 + logits[:5].sum()).backward()  # a loss on the logits too
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref_logits = h @ w.T
    ref = F.cross_entropy(ref_logits, labels, ignore_index=-100)
    (ref * 3 + ref_logits[:5].sum()).backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(gh, h.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(gw, w.grad, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # validation: the loss alone
        torch.testing.assert_close(linear_cross_entropy(h, w, labels)[0], ref)


def _packed(vocab: int, lengths, eos: int, pad: int):
    """Documents of these lengths, each ending at eos, packed into one row and padded with eos."""
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(eos + 1, vocab, (n,), generator=g) for n in lengths]
    for d in docs:
        d[-1] = eos
    return docs, torch.cat([*docs, torch.full((pad,), eos)])[None]


@pytest.mark.parametrize("changes", [
    {},  # MLA, MoE and an MTP module
    {"model_type": "llama", "num_key_value_heads": 2, "head_dim": 16, "rope_scaling": None,
     "first_k_dense_replace": 2, "num_nextn_predict_layers": 0},  # grouped-query attention
])
@pytest.mark.parametrize("written_out", [("cpu",), ()], ids=["written-out", "sdpa"])
def test_block_causal_attention_is_each_document_on_its_own(changes, written_out, monkeypatch):
    """documents=: each document of a packed row gets the logits (main and MTP) it gets as a row of
    its own, wherever it lies in the row (RoPE is relative); the row's trailing EOS padding joins
    the last document; plain causal attention over the row differs. Both ways of attending: the
    CPU's product, mask and softmax, and a GPU's one SDPA call on a gathered (q, k, v)."""
    monkeypatch.setattr(model_module, "WRITTEN_OUT", written_out)
    model = tiny_model(**changes)
    eos = 1
    docs, row = _packed(model.cfg.vocab_size, [5, 21, 16, 17, 3], eos, pad=6)
    rows = torch.cat([row, torch.cat([*docs[::-1], row[0, -6:]])[None]])  # another order
    starts = Documents.starts(rows, eos)
    assert starts[0].nonzero().flatten().tolist() == [0, 5, 26, 42, 59]
    with torch.no_grad():
        out = model(rows, documents=starts, mtp=True)
        for r, order in ((0, docs), (1, docs[::-1])):
            at = 0
            for d in order:
                alone = model(d[None], mtp=True)
                torch.testing.assert_close(out.logits[r, at: at + len(d)], alone.logits[0],
                                           atol=1e-5, rtol=0)
                for k, mtp in enumerate(alone.mtp_logits or [], start=1):  # to the document's end
                    torch.testing.assert_close(out.mtp_logits[k - 1][r, at: at + len(d) - k],
                                               mtp[0], atol=1e-5, rtol=0)
                at += len(d)
        assert (model(rows).logits - out.logits).abs().max() > 1e-2
        with pytest.raises(ValueError, match="not with a cache"):
            model(rows, documents=starts, cache=KVCache(model.cfg, 2, 80))


@pytest.mark.parametrize("written_out", [("cpu",), ()], ids=["written-out", "sdpa"])
def test_block_causal_gradients_equal_separate_rows(written_out, monkeypatch):
    monkeypatch.setattr(model_module, "WRITTEN_OUT", written_out)
    model = tiny_model()
    docs, row = _packed(model.cfg.vocab_size, [9, 30, 12], eos=1, pad=0)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    packed = grads(model(row, documents=Documents.starts(row, 1)).logits.sum())
    alone = grads(sum(model(d[None]).logits.sum() for d in docs))
    for a, b in zip(packed, alone):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_value_head_wider_than_query_head():
    # unusual but legal: v_head_dim > qk_head_dim must not be cropped by the flash-kernel padding
    model = tiny_model(v_head_dim=40)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, absorb=True).logits, model(ids).logits,
                                   atol=1e-5, rtol=0)


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="this torch has no grouped GEMM")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_expert_widths_the_config_accepts_are_those_the_grouped_gemm_takes(dtype):
    """ModelConfig refuses hidden_size or moe_intermediate_size that are not multiples of 8 when
    experts are routed: the experts' grouped GEMM needs 16-byte row strides, 8 bf16 elements."""

    def experts(d: int, width: int) -> None:  # the two grouped GEMMs of Experts.forward
        x = torch.randn(10, d, dtype=dtype)
        gate_up = torch.randn(4, 2 * width, d, dtype=dtype)
        down = torch.randn(4, d, width, dtype=dtype)
        offs = torch.tensor([3, 5, 8, 10], dtype=torch.int32)
        gate, up = grouped_mm(x, gate_up.transpose(1, 2), offs).chunk(2, dim=-1)
        grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs)

    for d, width in ((64, 8), (64, 24), (40, 32)):
        get_preset("tiny").replace(hidden_size=d, moe_intermediate_size=width)
        experts(d, width)
    for d, width in ((64, 30), (60, 32), (64, 12)):
        with pytest.raises(ConfigError, match="multiple of 8"):
            get_preset("tiny").replace(hidden_size=d, moe_intermediate_size=width)
        if dtype == torch.bfloat16 or d % 4 or width % 4:  # fp32 takes multiples of 4, bf16 not
            with pytest.raises(RuntimeError, match="16 bytes"):
                experts(d, width)


# ---- mixed precision: one dtype rule, whichever kernel a device picks


def _groups():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(24, 16, generator=g), torch.randn(4, 16, 8, generator=g)
    return x, w, torch.tensor([5, 5, 17, 24], dtype=torch.int32)  # group 1 is empty


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="this torch has no grouped GEMM")
def test_every_grouped_gemm_kernel_computes_the_same_product():
    """The three kernels grouped_mm picks from, all run here on the CPU: torch's grouped GEMM in
    bf16 (what a GPU runs under autocast), in fp32 (the CPU's), and the loop over experts (fp32 on
    a GPU), against a float64 reference."""
    x, w, offs = _groups()
    ref = loop_grouped_mm(x.double(), w.double(), offs)
    assert torch.allclose(loop_grouped_mm(x, w, offs).double(), ref, atol=1e-4)
    assert torch.allclose(grouped_mm(x, w, offs).double(), ref, atol=1e-4)
    low = grouped_mm(x.bfloat16(), w.bfloat16(), offs)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.double(), ref, rtol=0.02, atol=0.1)


def test_grouped_mm_runs_in_one_dtype_whatever_it_is_handed():
    """On a GPU under autocast the first expert GEMM gave bf16 activations while the weights stayed
    fp32 master weights, and the second GEMM refused the mix. Every mix now runs: in autocast's
    dtype when it is on, else in the activations' dtype."""
    x, w, offs = _groups()
    assert grouped_mm(x.bfloat16(), w, offs).dtype == torch.bfloat16
    assert grouped_mm(x, w, offs).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert grouped_mm(x, w, offs).dtype == torch.bfloat16
        assert grouped_mm(x.bfloat16(), w, offs).dtype == torch.bfloat16


MIXED_SHAPES = {
    "moe, mtp, q lora": {},
    "no q lora": {"q_lora_rank": None},
    "no mtp": {"num_nextn_predict_layers": 0},
    "dense": {"n_routed_experts": 0, "first_k_dense_replace": 2},
}


@pytest.mark.parametrize("mode", ["autocast", "bf16"])
@pytest.mark.parametrize("shape", MIXED_SHAPES)
def test_a_training_step_in_bf16(shape, mode):
    """Forward, backward, AdamW and the bias update under CPU autocast (fp32 master weights, bf16
    matmuls: how the trainer runs on a GPU) and in pure bf16: the loss near fp32's, a finite
    gradient for every parameter fp32 trains, and the routing state kept in fp32."""
    torch.manual_seed(0)
    cfg = get_preset("tiny").replace(**MIXED_SHAPES[shape])
    ids = torch.randint(0, cfg.vocab_size, (4, 33))
    ref = Transformer(cfg).train()
    model = copy.deepcopy(ref)
    if mode == "bf16":
        model.to(torch.bfloat16)
    ref_out = ref(ids[:, :-1], ids[:, 1:])
    ref_out.loss.backward()
    trained = [n for n, p in ref.named_parameters() if p.grad is not None]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else nullcontext():
        out = model(ids[:, :-1], ids[:, 1:])
    out.loss.backward()
    assert abs(out.main_loss.item() - ref_out.main_loss.item()) < 0.02 * ref_out.main_loss.item()
    params = dict(model.named_parameters())
    assert all(params[n].grad is not None and torch.isfinite(params[n].grad).all() for n in trained)
    want = torch.float32 if mode == "autocast" else torch.bfloat16
    assert {p.dtype for p in params.values()} == {want}
    biases = [m.gate.e_score_correction_bias.clone() for m in model.moe_layers()]
    opt.step()
    update_correction_bias(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for moe, before in zip(model.moe_layers(), biases, strict=True):
        after = moe.gate.e_score_correction_bias
        assert after.dtype == torch.float32 and not torch.equal(after, before)
