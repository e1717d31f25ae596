"""The inference engine: exact against transformers and against itself (alone vs batched,
speculative vs plain, prefix-cached vs not), sampling semantics, stops, errors."""

import asyncio
import copy
import random

import pytest
import torch

from nanoseek.checkpoint import load_model
from nanoseek.infer.engine import Engine
from nanoseek.infer.prefix_cache import PrefixCache
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tokenizer import Tokenizer, render_chat

# in the format the fixture model was trained on (reasoning-gym basic_arithmetic)
QUESTIONS = [f"Calculate {q}." for q in ("12 + 7", "45 - 3", "3 + 88", "61 + 25", "9 - 14",
                                         "70 + 70", "5 + 5", "33 - 8", "2 + 91", "40 - 17")]


@pytest.fixture(scope="module")
def chat(tiny_chat_dir):
    return load_model(tiny_chat_dir), Tokenizer.load(tiny_chat_dir)


def prompts(n=None):
    return [render_chat([{"role": "user", "content": q}]) for q in QUESTIONS[:n]]


def engine(chat, **kw):
    model, tok = chat
    kw.setdefault("max_seq_len", 256)
    kw.setdefault("speculative", False)
    return Engine(model, tok, **kw)


@torch.no_grad()
def full_forward_greedy(model, ids, n):
    """The reference: argmax of a full forward over everything so far, one token at a time."""
    ids, out = list(ids), []
    for _ in range(n):
        out.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        ids.append(out[-1])
    return out


def test_greedy_equals_transformers_generate(chat, tiny_chat_dir):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()  # the MTP layer is unused by transformers: not news
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_chat_dir).eval()
    hf.generation_config.eos_token_id = None  # run the full length, as ignore_eos does
    model, tok = chat
    # prompts of different lengths, some mid-conversation, run as one batch by the engine
    turns = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "19"},
             {"role": "user", "content": "Calculate 19 + 19 - 1."}]
    ps = prompts(3) + [render_chat(turns), "12 + 3 = 15\n\n40 - 1", "7 +"]
    greedy = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    outs = engine(chat, max_batch=8).generate(ps, greedy)
    assert len({len(c.prompt_token_ids) for c in outs}) >= 4
    for c in outs:
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([c.prompt_token_ids]), do_sample=False,
                              max_new_tokens=24, pad_token_id=tok.pad_id)
            ref = ref[0, len(c.prompt_token_ids):].tolist()
        assert c.token_ids == ref
        assert c.finish_reason == "length" and c.usage.completion_tokens == 24


def test_chat_output_is_split_into_reasoning_and_content(chat):
    outs = engine(chat).generate(prompts(3), SamplingParams(max_tokens=60, temperature=0))
    for c in outs:
        assert c.finish_reason == "stop" and c.token_ids[-1] == chat[1].eos_id
        # the model learnt the R1 format: it reasons, closes the block, answers
        assert "</think>" in c.text and c.reasoning_content and c.content
        assert c.text.split("</think>")[-1].strip() == c.content
        assert 0 < c.usage.reasoning_tokens < c.usage.completion_tokens


def run_alone(chat, p, params):
    return engine(chat, max_batch=1).generate([p], params)[0]


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=40, temperature=0),
    SamplingParams(max_tokens=40, temperature=1.0, top_p=0.9, seed=7)], ids=["greedy", "seeded"])
def test_batched_with_joiners_and_leavers_equals_alone(chat, params):
    """Ten requests with different budgets through 4 slots, added while others run: each gets what
    it gets when it runs alone."""
    eng = engine(chat, max_batch=4)
    rng = random.Random(0)
    budgets = [rng.randint(3, 40) for _ in QUESTIONS]
    plist = [SamplingParams(**{**params.__dict__, "max_tokens": b}) for b in budgets]
    ids, tokens, text, pending = {}, {}, {}, list(zip(prompts(), plist))
    while pending or eng.has_unfinished():
        for _ in range(rng.randint(0, 2)):  # requests arrive between steps
            if pending:
                p, sp = pending.pop(0)
                ids[eng.add_request(p, sp)] = (p, sp)
        for d in eng.step():
            tokens[d.request_id] = tokens.get(d.request_id, []) + d.token_ids
            text[d.request_id] = text.get(d.request_id, "") + d.text
        assert len(eng.rows) <= 4
    assert len(tokens) == len(QUESTIONS) and not eng.rows
    for rid, (p, sp) in ids.items():
        alone = run_alone(chat, p, sp)
        assert tokens[rid] == alone.token_ids and text[rid] == alone.text
        assert len(alone.token_ids) == sp.max_tokens or alone.finish_reason == "stop"


def test_speculative_decoding_gives_the_plain_output(chat):
    ps = prompts()
    for params in (SamplingParams(max_tokens=50, temperature=0),
                   SamplingParams(max_tokens=50, temperature=0.8, seed=3)):
        plain_engine = engine(chat, max_batch=4, speculative=False)
        plain = plain_engine.generate(ps, params)
        spec_engine = engine(chat, max_batch=4, speculative=True)
        spec = spec_engine.generate(ps, params)
        assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
        assert spec_engine.stats.drafted > 0 and spec_engine.stats.acceptance_rate > 0.3
        # accepted drafts save forward passes
        assert spec_engine.stats.decode_steps < 0.8 * plain_engine.stats.decode_steps


def test_compiled_decoding_gives_the_eager_output(chat):
    """Engine(compile=True) runs decode and verify steps as static-shape graphs, padded to a
    power-of-two bucket of rows: with requests joining and leaving (buckets 1, 2 and 4), greedy and
    seeded sampling, and MTP speculation, its tokens are the eager engine's."""
    ps = prompts(6)
    for params in (SamplingParams(max_tokens=30, temperature=0),
                   SamplingParams(max_tokens=30, temperature=0.8, seed=5)):
        budgets = [SamplingParams(**{**params.__dict__, "max_tokens": 6 + 4 * i})
                   for i in range(len(ps))]
        eager = engine(chat, max_batch=4).generate(ps, budgets)
        compiled = engine(chat, max_batch=4, compile=True)
        assert [c.token_ids for c in compiled.generate(ps, budgets)] == [c.token_ids for c in eager]
        # the compiled graphs ran: decode steps of 4, 2 and 1 rows (two of the last come from the
        # n=1 tail)
        assert compiled.runner.ran >= {("main", 4, 1), ("main", 2, 1), ("main", 1, 1)}
    spec = engine(chat, max_batch=1, speculative=True, compile=True)
    greedy = SamplingParams(max_tokens=40, temperature=0)
    for p in ps[:2]:
        assert spec.generate([p], greedy)[0].token_ids == run_alone(chat, p, greedy).token_ids
    assert ("main", 1, 2) in spec.runner.ran and ("mtp", 1, 2) in spec.runner.ran
    assert spec.stats.acceptance_rate > 0.3


def test_cuda_graph_steps_give_the_eager_output(chat):
    """The GPU's static steps (runner.StepGraph: buffers filled, the step replayed) run here
    without the recording, on the same buffers and under static_shapes, the MoE counting and
    dispatching as a CUDA graph records it (gathered experts at bucket 4, grouped GEMMs at 8):
    joining and leaving rows, seeded sampling and MTP speculation give the eager tokens, in fp32
    and, token for token where fp32's choice is not a near-tie, in bf16."""
    from nanoseek.infer.runner import Runner

    model, tok = chat

    def graphed(m, **kw):
        e = Engine(m, tok, max_seq_len=256, **kw)
        e.runner = Runner(m, e.cache, compile=True, graphs=True)
        return e

    ps = prompts(7)
    # the graph samples: every filter, greedy rows beside sampled ones, log-probabilities
    filters = [{}, {"top_k": 5}, {"top_p": 0.7}, {"min_p": 0.2}, {"temperature": 0},
               {"top_k": 3, "top_p": 0.9, "temperature": 1.3},
               {"logprobs": True, "top_logprobs": 2}]
    params = [SamplingParams(**{"max_tokens": 6 + 4 * i, "temperature": 0.8, "seed": i, **f})
              for i, f in enumerate(filters)]
    eager = engine(chat, max_batch=8).generate(ps, params)
    steps = graphed(model, max_batch=8, speculative=False)
    got = steps.generate(ps, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in eager]
    # (the static step attends over the whole cache under a mask: equal up to rounding)
    lps = [(lp, want) for lp, want in zip(got[-1].logprobs, eager[-1].logprobs, strict=True)]
    assert all([t for t, _ in a.top] == [t for t, _ in b.top] and abs(a.logprob - b.logprob) < 1e-4
               for a, b in lps) and len(lps) == len(got[-1].token_ids)
    assert {("sample", 8, 1), ("sample", 1, 1)} <= steps.runner.ran, steps.runner.ran
    assert steps.runner.graphs[("sample", 8, 1)].graph is None  # no recording off a GPU
    # a penalty needs the host: those steps take the greedy graph's logits and sample eagerly
    params[2] = SamplingParams(max_tokens=30, temperature=0.8, seed=2, presence_penalty=1.5)
    steps = graphed(model, max_batch=8, speculative=False)
    assert ([c.token_ids for c in steps.generate(ps, params)]
            == [c.token_ids for c in engine(chat, max_batch=8).generate(ps, params)])
    assert ("greedy", 8, 1) in steps.runner.ran
    spec = graphed(model, max_batch=2, speculative=True)
    for p in (SamplingParams(max_tokens=40, temperature=0),
              SamplingParams(max_tokens=40, temperature=0.7, top_p=0.9, seed=3)):
        assert ([c.token_ids for c in spec.generate(ps[:2], p)]
                == [c.token_ids for c in engine(chat, max_batch=2).generate(ps[:2], p)])
    assert {("greedy", 2, 2), ("sample", 2, 2), ("mtp", 2, 2)} <= spec.runner.ran
    assert spec.stats.accepted > 0
    greedy = SamplingParams(max_tokens=40, temperature=0)
    # bf16, the dtype the GPU records: the graph path's logits are the eager bf16 engine's
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    want = Engine(bf16, tok, max_seq_len=256, max_batch=8, speculative=False).generate(ps, greedy)
    got = graphed(bf16, max_batch=8, speculative=False).generate(ps, greedy)
    same = sum(a.token_ids == b.token_ids for a, b in zip(got, want))
    assert same >= len(ps) - 1  # a bf16 near-tie may flip one sequence's tail, not more


def test_mtp_drafts_equal_the_training_time_mtp_prediction(chat):
    """Each draft the engine makes (from its MTP cache, across prefill, accepted and rejected
    steps) is the argmax of the MTP head of a full forward over the same tokens."""
    model, _ = chat
    eng = engine(chat, max_batch=2, speculative=True)
    eng.generate(prompts(2), SamplingParams(max_tokens=1, temperature=0))  # warm-up, nothing kept
    for p in prompts(2):
        rid = eng.add_request(p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        seen = []
        while rid in eng.requests:
            eng.step()
            for s in eng.rows:
                seen.append((s.len, list(s.req.prompt) + s.out, s.draft))
        ids = seen[-1][1]
        with torch.no_grad():
            mtp = model(torch.tensor([ids]), mtp=True).mtp_logits[0][0].argmax(-1)
        # mtp[i] predicts token i + 2 from h_i and token i + 1; the engine's draft at length L
        # predicts L + 1
        for L, _, draft in seen:
            assert draft == int(mtp[L - 1]), L


def test_prefix_cache_hits_give_the_uncached_output(chat, tmp_path):
    system = "You are a careful calculator. " * 4
    ps = [render_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])
          for q in QUESTIONS[:4]]
    params = SamplingParams(max_tokens=30, temperature=0)
    cold = engine(chat, max_batch=4).generate(ps, params)
    pc = PrefixCache(block_size=8, directory=tmp_path / "kv")
    eng = engine(chat, max_batch=4, prefix_cache=pc, speculative=True)
    first = eng.generate(ps[:1], params)[0]
    assert first.usage.cached_tokens == 0
    warm = eng.generate(ps, params)
    for c, ref in zip(warm, cold):
        assert c.token_ids == ref.token_ids
        assert c.usage.cached_tokens > 0 and c.usage.cached_tokens % 8 == 0
        assert c.usage.cached_tokens + c.usage.uncached_tokens == c.usage.prompt_tokens
    # the repeat of the first prompt is served from the cache up to its last full block
    assert warm[0].usage.cached_tokens == (len(warm[0].prompt_token_ids) - 1) // 8 * 8
    # a new engine with a cold memory tier finds the blocks on disk
    pc2 = PrefixCache(block_size=8, directory=tmp_path / "kv")
    again = engine(chat, max_batch=4, prefix_cache=pc2, speculative=True).generate(ps, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in cold]
    assert all(c.usage.cached_tokens > 0 for c in again)
    # other weights never read them: the model's fingerprint is part of every key
    model, tok = chat
    other_model = copy.deepcopy(model)
    with torch.no_grad():
        other_model.layers[1].self_attn.o_proj.weight[0, 0] += 1e-3
    other = Engine(other_model, tok, max_batch=4, max_seq_len=256, speculative=True,
                   prefix_cache=PrefixCache(block_size=8, directory=tmp_path / "kv"))
    assert other.generate(ps[:1], params)[0].usage.cached_tokens == 0


def test_n_samples_share_one_prefill(chat):
    eng = engine(chat, max_batch=8)
    p = prompts(1)
    outs = eng.generate(p, SamplingParams(max_tokens=30, temperature=1.0, n=5, seed=11))
    assert [c.index for c in outs] == list(range(5))
    assert eng.stats.prefill_tokens == len(outs[0].prompt_token_ids)  # the prompt ran once
    assert len({tuple(c.token_ids) for c in outs}) > 1  # the samples differ
    again = engine(chat, max_batch=8).generate(
        p, SamplingParams(max_tokens=30, temperature=1.0, n=5, seed=11))
    assert [c.token_ids for c in again] == [c.token_ids for c in outs]
    # sample 0 of a seeded request is the request with n=1 and that seed
    one = engine(chat, max_batch=8).generate(
        p, SamplingParams(max_tokens=30, temperature=1.0, seed=11))[0]
    assert one.token_ids == outs[0].token_ids


def test_stop_strings_spanning_tokens(chat):
    model, tok = chat
    p = prompts(1)
    greedy = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    full = engine(chat).generate(p, greedy)[0]
    # a stop string made of the end of one token and the start of the next
    pieces = [tok.decode([t]) for t in full.token_ids]
    i = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 1
             and pieces[i + 1].strip())
    stop = pieces[i][-1] + pieces[i + 1][:1]
    assert stop not in "".join(pieces[:i]) + pieces[i][:-1]
    c = engine(chat).generate(p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                stop=[stop]))[0]
    assert c.finish_reason == "stop"
    assert c.text == full.text[: full.text.index(stop)]
    assert c.token_ids == full.token_ids[: i + 2]  # generation ended on the token that completed it
    # stop token ids: the text ends before the token, the id is reported
    t = full.token_ids[5]
    c = engine(chat).generate(p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                stop_token_ids=[t]))[0]
    assert c.token_ids == full.token_ids[: full.token_ids.index(t) + 1]
    assert c.finish_reason == "stop"


def test_logprobs_are_the_models(chat):
    model, _ = chat
    c = engine(chat).generate(prompts(1), SamplingParams(max_tokens=8, temperature=0, logprobs=True,
                                                         top_logprobs=3))[0]
    ids = c.prompt_token_ids + c.token_ids
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    n = len(c.prompt_token_ids)
    for j, lp in enumerate(c.logprobs):
        assert lp.token_id == c.token_ids[j]
        assert abs(lp.logprob - float(ref[n + j - 1, lp.token_id])) < 1e-4
        assert [t for t, _ in lp.top] == ref[n + j - 1].topk(3).indices.tolist()
        assert lp.top[0][0] == lp.token_id  # greedy picks the most likely


def test_penalties_match_a_hand_computed_reference(chat):
    model, _ = chat
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, repetition_penalty=1.3,
                            presence_penalty=0.5, frequency_penalty=0.7)
    c = engine(chat, max_batch=3).generate(prompts(3), params)
    for comp in c:
        ids, out = list(comp.prompt_token_ids), []
        with torch.no_grad():
            for _ in range(20):
                z = model(torch.tensor([ids])).logits[0, -1].float()
                seen = torch.zeros_like(z, dtype=torch.bool)
                seen[ids] = True
                counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=z.numel())
                counts = counts.float()
                z = torch.where(seen, torch.where(z > 0, z / 1.3, z * 1.3), z)
                z = z - 0.5 * (counts > 0) - 0.7 * counts
                out.append(int(z.argmax()))
                ids.append(out[-1])
        assert comp.token_ids == out
    plain = engine(chat, max_batch=3).generate(
        prompts(3), SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    assert [x.token_ids for x in plain] != [x.token_ids for x in c]


def test_logit_bias_bans_and_forces_tokens_per_request(chat):
    """A batch of three, each row its own bias: -100 bans the greedy path's tokens, +100 on a token
    makes every draw that token (sampled, speculating too), and the unbiased row is unchanged."""
    _, tok = chat
    base = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    greedy = engine(chat).generate(prompts(1), base)[0].token_ids
    seven = tok.encode("7")[0]
    banned = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                            logit_bias={t: -100 for t in set(greedy)})
    forced = SamplingParams(max_tokens=12, temperature=1.0, seed=3, ignore_eos=True,
                            logit_bias={seven: 100})
    for spec in (False, True):
        out = engine(chat, max_batch=3, speculative=spec).generate(prompts(1) * 3,
                                                                    [banned, forced, base])
        assert not set(out[0].token_ids) & set(greedy)
        assert out[1].token_ids == [seven] * 12
        assert out[2].token_ids == greedy
    with pytest.raises(ValueError, match="logit_bias token id 100000 is outside"):
        engine(chat).generate(prompts(1), SamplingParams(logit_bias={100_000: 1}))
    with pytest.raises(ValueError, match="logit_bias must be a map"):
        SamplingParams(logit_bias={1: 101})


def test_filters_that_leave_one_token_are_greedy(chat):
    greedy = engine(chat).generate(prompts(2), SamplingParams(max_tokens=20, temperature=0))
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        got = engine(chat).generate(
            prompts(2), SamplingParams(max_tokens=20, temperature=1.5, seed=1, **kw))
        assert [c.token_ids for c in got] == [c.token_ids for c in greedy], kw


def test_stream_and_astream_agree_with_generate(chat):
    params = SamplingParams(max_tokens=40, temperature=0.7, seed=5, n=2)
    ref = engine(chat).generate(prompts(3), params)
    text, reasoning, content, tokens = {}, {}, {}, {}
    for d in engine(chat).stream(prompts(3), params):
        k = (d.request_id, d.index)
        text[k] = text.get(k, "") + d.text
        reasoning[k] = reasoning.get(k, "") + d.reasoning
        content[k] = content.get(k, "") + d.content
        tokens[k] = tokens.get(k, []) + d.token_ids
    assert sorted(tokens.values()) == sorted(c.token_ids for c in ref)
    assert sorted(text.values()) == sorted(c.text for c in ref)
    assert sorted(reasoning.values()) == sorted(c.reasoning_content for c in ref)
    assert sorted(content.values()) == sorted(c.content for c in ref)

    async def collect():
        got = {}
        async for d in engine(chat).astream(prompts(3), params):
            got[(d.request_id, d.index)] = got.get((d.request_id, d.index), []) + d.token_ids
        return got

    assert sorted(asyncio.run(collect()).values()) == sorted(c.token_ids for c in ref)


def test_text_made_at_the_end_equals_the_streamed_text(chat, monkeypatch):
    """generate() detokenizes a sample once, when it finishes; stream() token by token. Whatever
    the tokens (think tags as their own ids or spelled by ordinary tokens, characters split over
    tokens, EOS or not), both give the same text, reasoning, content and count of reasoning
    tokens."""
    import nanoseek.infer.engine as engine_module
    from nanoseek.infer.sampling import uniform

    model, tok = chat
    rng = random.Random(0)
    pieces = [tok.encode(x) for x in ("12 + 7", " = 19", "\n", "é", "日本", " ok")] + [
        [tok.think_end_id], [tok.think_start_id], tok.encode("</") + tok.encode("think>"),
        tok.encode("<th") + tok.encode("ink>")]
    scripts = [[t for _ in range(rng.randint(1, 8)) for t in rng.choice(pieces)]
               + [tok.eos_id] * (k % 2) for k in range(16)]
    # the engine's draw for sample k's token at position i is uniform(k, i): it tells the script to
    # follow
    script_of = {uniform(k, i): t for k, script in enumerate(scripts) for i, t in enumerate(script)}
    monkeypatch.setattr(engine_module, "sample", lambda logits, params, draws: torch.tensor(
        [script_of[u] for u in draws]))
    params = [SamplingParams(seed=k, max_tokens=len(script)) for k, script in enumerate(scripts)]
    eng = engine(chat, max_batch=6)
    ask = [prompts(1)[0]] * len(scripts)
    done = eng.generate(ask, params)
    streamed = {}
    for d in eng.stream(ask, params):
        parts = streamed.setdefault(d.request_id, ["", "", "", None])
        parts[0] += d.text
        parts[1] += d.reasoning
        parts[2] += d.content
        parts[3] = d.usage or parts[3]
    streamed = list(streamed.values())  # in request order
    spelled_tags = 0
    for c, script, (text, reasoning, content, usage) in zip(done, scripts, streamed):
        assert c.token_ids == script
        assert c.text == text == tok.decode(script, skip_special_tokens=True)
        assert (c.reasoning_content, c.content) == (reasoning, content)
        assert c.usage == usage and c.usage.reasoning_tokens > 0
        tags = script.count(tok.think_start_id) + script.count(tok.think_end_id)
        spelled_tags += c.text.count("think>") > tags
    assert spelled_tags >= 3  # the case where the end of the think block is not a tag token
    # deltas=False (what generate() asks for): step() reports a sample once, whole, when it finishes
    quiet = []
    eng.add_request(ask[0], params[0], deltas=False)
    while eng.has_unfinished():
        quiet += eng.step()
    assert len(quiet) == 1
    q = quiet[0]
    assert (q.token_ids, q.text, q.usage, q.finish_reason) == (
        scripts[0], done[0].text, done[0].usage, done[0].finish_reason)


def test_abort_and_early_exit_free_the_slots(chat):
    eng = engine(chat, max_batch=3)
    params = SamplingParams(max_tokens=30, temperature=0, repetition_penalty=1.2, ignore_eos=True)
    rid = eng.add_request(prompts(1)[0], SamplingParams(max_tokens=50, n=2, temperature=1.0))
    keep = eng.add_request(prompts(2)[1], params)
    tokens = [t for d in eng.step() if d.request_id == keep for t in d.token_ids]
    assert len(eng.rows) == 3
    eng.abort(rid)  # the survivor's row moves, penalty state with it
    assert len(eng.rows) == 1 and eng.rows[0].req.id == keep
    while eng.has_unfinished():
        tokens += [t for d in eng.step() for t in d.token_ids]
    assert not eng.rows
    assert tokens == engine(chat, max_batch=1).generate(prompts(2)[1:], params)[0].token_ids
    it = eng.stream(prompts(2), SamplingParams(max_tokens=50))
    next(it)
    it.close()  # the caller walked away
    assert not eng.rows and not eng.has_unfinished() and not eng.waiting


def test_requests_that_cannot_fit_are_refused_clearly(chat):
    eng = engine(chat, max_seq_len=64, max_batch=2)
    with pytest.raises(ValueError, match=r"max_tokens is 60: .* > the engine's max_seq_len 64"):
        eng.add_request(prompts(1)[0], SamplingParams(max_tokens=60))
    with pytest.raises(ValueError, match="no room to generate"):
        eng.add_request("1 + 1 = 2 " * 40, SamplingParams())
    with pytest.raises(ValueError, match="n = 3 samples do not fit in the engine's 2 slots"):
        eng.add_request("hi", SamplingParams(n=3))
    with pytest.raises(ValueError, match=r"token id 99999 is outside the vocabulary \[0, 512\)"):
        eng.add_request([0, 99999], SamplingParams())
    with pytest.raises(ValueError, match="SamplingParams.top_p must be in"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        engine(chat, max_seq_len=64, cache_tokens=32)
    e = engine(chat, max_seq_len=64, cache_tokens=64 * 5 + 7)
    cfg = e.cfg  # 5 rows of 64 + 2 positions, main layers only (no speculation), fp32
    latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    assert e.max_batch == 5 and e.cache_bytes == cfg.num_hidden_layers * 5 * 66 * latent * 4
    with pytest.raises(ValueError, match="past the model's context"):
        engine(chat, max_seq_len=cfg.max_position_embeddings + 1)
    assert not eng.has_unfinished()  # refused requests leave nothing behind


def test_concurrent_streams_each_get_all_their_output(chat):
    params = SamplingParams(max_tokens=30, temperature=0)
    ref = engine(chat).generate(prompts(2), params)
    eng = engine(chat)
    a, b = eng.stream(prompts(1), params), eng.stream(prompts(2)[1:], params)
    got_a, got_b = [], []
    for da, db in zip(a, b):  # two consumers take turns; each step serves both
        got_a += da.token_ids
        got_b += db.token_ids
    got_a += [t for d in a for t in d.token_ids]
    got_b += [t for d in b for t in d.token_ids]
    assert got_a == ref[0].token_ids and got_b == ref[1].token_ids

    async def one(p):
        return [t async for d in eng.astream([p], params) for t in d.token_ids]

    async def both():
        return await asyncio.gather(one(prompts(1)[0]), one(prompts(2)[1]))

    assert asyncio.run(both()) == [ref[0].token_ids, ref[1].token_ids]
    assert not eng.rows and not eng.has_unfinished()


def test_a_failing_prefill_fails_its_requests_not_the_engine(chat, monkeypatch):
    eng = engine(chat, max_batch=4)
    params = SamplingParams(max_tokens=20, temperature=0)
    first = eng.add_request(prompts(1)[0], params)
    eng.step()
    real = eng.model.hidden_states

    def out_of_memory(*a, **k):
        raise RuntimeError("pretend out of memory")

    monkeypatch.setattr(eng.model, "hidden_states", out_of_memory)
    eng.add_request(prompts(2)[1], params)
    with pytest.raises(RuntimeError, match="pretend"):
        eng.step()
    monkeypatch.setattr(eng.model, "hidden_states", real)
    tokens = []
    while eng.has_unfinished():
        tokens += [t for d in eng.step() for t in d.token_ids if d.request_id == first]
    assert list(eng.requests) == [] and not eng.rows
    assert len(tokens) > 0


def test_the_engine_leaves_a_training_model_in_training_mode(chat):
    model, tok = chat
    model.train()
    try:
        eng = Engine(model, tok, max_seq_len=64, speculative=False)
        eng.generate(prompts(1), SamplingParams(max_tokens=3))
        assert model.training
    finally:
        model.eval()


def test_random_traffic_equals_each_request_alone(chat):
    """Joins, leaves, aborts, n > 1, penalties, stop strings, seeds, speculation and the prefix
    cache at once: every sample that was not aborted equals its request run alone."""
    rng = random.Random(0)
    system = "You are a careful calculator. "

    def request():
        msgs = ([{"role": "system", "content": system * rng.randint(0, 3)}]
                if rng.random() < 0.7 else [])
        kw = dict(max_tokens=rng.randint(1, 25), n=rng.choice([1, 1, 2, 3]),
                  ignore_eos=rng.random() < 0.5, temperature=0)
        if rng.random() < 0.5:
            kw.update(temperature=rng.choice([0.7, 1.0]), seed=rng.randint(0, 99))
        if rng.random() < 0.3:
            kw.update(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.3)
        if rng.random() < 0.2:
            kw.update(stop=[rng.choice([" = ", "\n", "+"])])
        prompt = render_chat(msgs + [{"role": "user", "content": rng.choice(QUESTIONS)}])
        return prompt, SamplingParams(**kw)

    eng = engine(chat, max_batch=4, speculative=True, prefix_cache=PrefixCache(block_size=4))
    pending, ids, got, aborted = [request() for _ in range(12)], {}, {}, set()
    while pending or eng.has_unfinished():
        for _ in range(rng.randint(0, 2)):
            if pending:
                p, sp = pending.pop(0)
                ids[eng.add_request(p, sp)] = (p, sp)
        if eng.requests and rng.random() < 0.08:
            rid = rng.choice(sorted(eng.requests))
            eng.abort(rid)
            aborted.add(rid)
        for d in eng.step():
            got.setdefault((d.request_id, d.index), []).extend(d.token_ids)
    assert aborted and len(ids) - len(aborted) >= 8
    for rid, (p, sp) in ids.items():
        if rid not in aborted:
            for c in engine(chat, max_batch=sp.n).generate([p], sp):
                assert got[(rid, c.index)] == c.token_ids, (rid, c.index, sp)


@torch.no_grad()
def test_a_bf16_engine_on_cpu_picks_what_fp32_would(tiny_chat_dir):
    """bf16 weights and cache (the GPU default) through prefill, decode and MTP drafting, on the
    CPU. At every position of every greedy answer, the token the bf16 engine picked is fp32's
    argmax there, or within bf16 rounding of it (a near-tie): its fp32 logit is at most 0.5 below
    the best. bf16 shifts these logits by hundredths; a wrong cache row or position would cost
    whole units."""
    tok = Tokenizer.load(tiny_chat_dir)
    fp32 = load_model(tiny_chat_dir)
    engine = Engine(load_model(tiny_chat_dir, dtype=torch.bfloat16), tok, max_batch=10,
                    max_seq_len=256, speculative=True)
    assert engine.cache.kv.dtype == torch.bfloat16
    done = engine.generate(prompts(), SamplingParams(max_tokens=24, temperature=0))
    for c in done:
        P, chosen = len(c.prompt_token_ids), torch.tensor(c.token_ids)
        logits = fp32(torch.tensor([c.prompt_token_ids + c.token_ids])).logits[0, P - 1:-1]
        gap = logits.max(-1).values - logits.gather(1, chosen[:, None]).squeeze(1)
        assert gap.max() < 0.5, (c.text, gap)
    assert engine.stats.drafted > 0  # the MTP module drafted in bf16 too
