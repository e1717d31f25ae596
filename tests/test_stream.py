"""Streaming text: UTF-8-safe detokenizing, stop strings across tokens, reasoning/content split at
think tags."""

import random

import pytest

from nanoseek.infer.stream import (
    Detokenizer,
    ReasoningParser,
    StopMatcher,
    StreamDelta,
    TextStream,
    prompt_leaves_reasoning_open,
)
from nanoseek.tokenizer import BOS, EOS, THINK_END, THINK_START, USER, render_chat, train_tokenizer

WORDS = ("the of and to a in is you that it he was for on are as with his they at be this have "
         "from think answer question reason step first then so because hello world forty two "
         "0 1 2 3 42 + = . ,").split()


@pytest.fixture(scope="module")
def tok():
    # ASCII-only corpus: no merge ever joins the bytes of a non-ASCII character, so é, 日 and 🙂 are
    # split over 2, 3 and 4 tokens, which is exactly what the detokenizer must survive.
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + "."
              for _ in range(400)]
    return train_tokenizer(corpus, vocab_size=400)


# Mostly ASCII words with emoji (incl. ZWJ sequences and skin tones), CJK, accented and
# combining chars.
PIECES = ["the", " answer", " is", " ", "\n", "42", ".", "é", "naïve", "e\u0301", "a\u0300\u0301",
          "日本語", "中文", "한국어", "привет", "🙂", "🚀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "𝔘",
          "\U0010ffff", "\u00a0", "ß"]


def random_texts(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def has_bad_char(s):
    return "\ufffd" in s or any(0xD800 <= ord(c) <= 0xDFFF for c in s)


# ----------------------------------------------------------------------------------------------
# Detokenizer

def test_multibyte_chars_really_span_tokens(tok):
    # Guards the premise of the tests below: if the tokenizer kept 🙂 whole, they would prove
    # nothing.
    assert len(tok.encode("🙂")) == 4 and len(tok.encode("日")) == 3 and len(tok.encode("é")) == 2
    d = Detokenizer(tok)
    assert [d.push(i) for i in tok.encode("🙂")] == ["", "", "", "🙂"]
    assert d.flush() == ""


def test_detokenizer_concatenation_equals_decode_and_never_breaks_a_char(tok):
    for text in random_texts(300):
        ids = tok.encode(text)
        d = Detokenizer(tok)
        chunks = [d.push(i) for i in ids]
        tail = d.flush()
        assert "".join(chunks) + tail == tok.decode(ids, skip_special_tokens=True) == text
        assert not any(has_bad_char(c) for c in chunks), chunks
        assert tail == ""  # complete text: nothing is left held back at the end


def test_detokenizer_random_ids_match_decode(tok):
    # Arbitrary ids (lone continuation bytes, truncated chars, special and think tokens anywhere):
    # the stream must still add up to decode(), in both skip modes.
    rng = random.Random(1)
    for _ in range(500):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 24))]
        for skip in (True, False):
            d = Detokenizer(tok, skip_special_tokens=skip)
            out = "".join(d.push(i) for i in ids) + d.flush()
            assert out == tok.decode(ids, skip_special_tokens=skip)


def test_truncated_char_at_end_only_via_flush(tok):
    ids = tok.encode("ok 日本🙂")[:-2]  # cut the emoji after its second byte
    d = Detokenizer(tok)
    chunks = [d.push(i) for i in ids]
    assert "".join(chunks) == "ok 日本" and not any(has_bad_char(c) for c in chunks)
    tail = d.flush()
    assert "\ufffd" in tail and "".join(chunks) + tail == tok.decode(ids)
    assert d.flush() == ""  # flushed once


def test_real_replacement_char_at_end_comes_out(tok):
    # DecodeStream cannot tell a genuine trailing U+FFFD from half a character and holds it back.
    ids = tok.encode("bad \ufffd")
    d = Detokenizer(tok)
    assert "".join(d.push(i) for i in ids) + d.flush() == "bad \ufffd"


def test_special_tokens_skipped_think_tags_kept(tok):
    ids = [tok.bos_id, tok.user_id, *tok.encode("hi"), tok.assistant_id, tok.think_start_id,
           *tok.encode("é"), tok.think_end_id, tok.eos_id, tok.pad_id]
    d = Detokenizer(tok)
    assert "".join(d.push(i) for i in ids) + d.flush() == f"hi{THINK_START}é{THINK_END}"
    d = Detokenizer(tok, skip_special_tokens=False)
    out = "".join(d.push(i) for i in ids) + d.flush()
    assert out.startswith(BOS + USER + "hi") and out.endswith(EOS + "<｜▁pad▁｜>")


# ----------------------------------------------------------------------------------------------
# StopMatcher

def run_stop(stop, chunks):
    m = StopMatcher(stop)
    out, stopped = [], False
    for c in chunks:
        text, stopped = m.push(c)
        out.append(text)
    return "".join(out) + m.flush(), stopped


def reference_stop(stop, text):
    """Brute force: the first position where some stop string ends; of those ending there, the
    earliest start."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stop if end >= len(s) and text[end - len(s):end] == s]
        if starts:
            return text[:min(starts)], True
    return text, False


@pytest.mark.parametrize("stop,text,expected", [
    (["abc"], "ababc", ("ab", True)),                # overlapping partial match
    (["abcd", "bc"], "abcd", ("a", True)),           # the later-starting stop completes first
    (["ab", "abc"], "xabcd", ("x", True)),           # a stop that is a prefix of another
    (["b", "ab"], "xab", ("x", True)),               # both end there: the longer (earlier) one cuts
    (["END"], "foo EN", ("foo EN", False)),          # held-back prefix released at the end
    (["END"], "foo ENX END", ("foo ENX ", True)),    # a failed partial match is ordinary text
    (["\n\n"], "a\nb\n\nc", ("a\nb", True)),
    ([], "pass through", ("pass through", False)),
    (["日本"], "答え: 日本語", ("答え: ", True)),
])
def test_stop_matcher_table(stop, text, expected):
    assert reference_stop(stop, text) == expected
    assert run_stop(stop, [text]) == expected
    assert run_stop(stop, list(text)) == expected
    for i in range(len(text) + 1):
        assert run_stop(stop, [text[:i], text[i:]]) == expected


def test_stop_matcher_random_chunking_matches_reference():
    rng = random.Random(2)
    for _ in range(400):
        stop = ["".join(rng.choice("abc ") for _ in range(rng.randint(1, 4)))
                for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 16)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(3, len(text) + 1)))
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        assert run_stop(stop, chunks) == reference_stop(stop, text), (stop, chunks)


def test_stop_matcher_holds_back_and_stays_stopped():
    m = StopMatcher(["END"])
    assert m.push("foo E") == ("foo ", False)  # "E" might start END
    assert m.push("N") == ("", False)
    assert m.push("D and more") == ("", True)  # the stop text itself never comes out
    assert m.push("again") == ("", True)
    assert m.flush() == ""
    assert StopMatcher("END").stop == ("END",)  # a single str is one stop string, not three


def test_stop_matcher_rejects_empty_stop():
    with pytest.raises(ValueError, match="stop"):
        StopMatcher(["ok", ""])


# ----------------------------------------------------------------------------------------------
# ReasoningParser

def parse(chunks, in_reasoning):
    p = ReasoningParser(in_reasoning)
    reasoning, content = [], []
    for c in chunks:
        r, t = p.push(c)
        reasoning.append(r)
        content.append(t)
    r, t = p.flush()
    return "".join(reasoning) + r, "".join(content) + t


# (text, in_reasoning, expected reasoning, expected content)
PARSE_CASES = [
    # R1's shape
    ("Let me think.\n</think>\n\nThe answer is 4.", True, "Let me think.", "The answer is 4."),
    ("\nfoo\n</think>\n\nbar", True, "\nfoo", "bar"),            # a leading newline is left alone
    ("still thinking \n", True, "still thinking \n", ""),        # no end tag: all reasoning
    ("reason </thi", True, "reason </thi", ""),                  # truncated inside the end tag
    # opened by the model (never closed): the newline after its <think> is the tag's, as in R1's
    # prompt, and only that one
    ("<think>\nhmm", False, "hmm", ""),
    ("<think>\n\nhmm", False, "\nhmm", ""),
    ("<think>hmm", False, "hmm", ""),
    ("<think>\n", False, "", ""),
    ("<think>\n\n</think>\n\nHi!", False, "", "Hi!"),            # empty block
    ("\n</think>\n\nHi!", True, "", "Hi!"),                      # empty block, opened by the prompt
    ("<think></think>answer", False, "", "answer"),
    ("Just an answer.\n", False, "", "Just an answer.\n"),        # no think at all
    ("Just an answer.", True, "Just an answer.", ""),            # no think, prompt left it open
    # text before <think> is content
    ("Sure. <think>plan</think> Done.", False, "plan", "Sure. Done."),
    # two blocks
    ("a\n</think>\n\nfirst<think>\nb \n</think>\n\nsecond", True, "ab", "firstsecond"),
    ("a</think>\n\n<think>b</think>\n\nc", True, "ab", "c"),
    ("x </think> y", False, "", "x </think> y"),                 # stray end tag in content is text
    ("r <think> s</think>c", True, "r <think> s", "c"),          # stray start tag in reasoning
    ("a</think></think>b", True, "a", "</think>b"),
    ("<<think>>x</think>y", False, ">x", "<y"),
    ("a </thin b", True, "a </thin b", ""),                      # a near-tag is text
    ("a \n</th x</think>y", True, "a \n</th x", "y"),
    ("ans <thi", False, "", "ans <thi"),                         # truncated inside the start tag
    ("a \n\n b\n</think>c", True, "a \n\n b", "c"),              # only trailing whitespace goes
    ("</think>\n\nanswer\n\n", True, "", "answer\n\n"),          # content keeps trailing whitespace
    ("r</think>\n\n", True, "r", ""),
    ("r</think> a  b", True, "r", "a  b"),                       # only *leading* whitespace goes
    ("思考\u3000\n</think>\n答案", True, "思考", "答案"),         # Unicode whitespace counts too
    ("", True, "", ""),
    ("", False, "", ""),
]


@pytest.mark.parametrize("text,in_reasoning,reasoning,content", PARSE_CASES)
def test_reasoning_parser_same_result_however_chunked(text, in_reasoning, reasoning, content):
    expected = (reasoning, content)
    assert parse([text], in_reasoning) == expected
    assert parse(list(text), in_reasoning) == expected
    for i in range(len(text) + 1):
        assert parse([text[:i], text[i:]], in_reasoning) == expected, i


def test_reasoning_parser_tag_split_at_every_byte(tok):
    # The tags as plain text split into single-byte tokens, not as the added tokens 5/6.
    text = "I should add.\n</think>\n\n2 + 2 = 4. <think>more</think>\n done"
    ids = [i for ch in text for i in tok.encode(ch)]
    assert tok.think_end_id not in ids and len(ids) > len(text) - 10
    s = TextStream(tok, in_reasoning=True)
    for i in ids:
        s.push(i)
    s.finish()
    assert (s.reasoning, s.content) == ("I should add.more", "2 + 2 = 4. done")


def test_reasoning_parser_random_chunking_is_invariant():
    rng = random.Random(3)
    alphabet = ["a", " ", "\n", "<", ">", "/", "t", "think", THINK_START, THINK_END, "é", "日"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        for in_reasoning in (True, False):
            whole = parse([text], in_reasoning)
            cuts = sorted(rng.sample(range(len(text) + 1), k=min(4, len(text) + 1)))
            chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
            assert parse(chunks, in_reasoning) == whole, (text, chunks)
            assert parse(list(text), in_reasoning) == whole
            # nothing is invented: each channel only has characters of the text, tags aside
            assert len(whole[0]) + len(whole[1]) <= len(text)


def test_prompt_leaves_reasoning_open():
    q = [{"role": "user", "content": "What is 2 + 2?"}]
    assert prompt_leaves_reasoning_open(render_chat(q))
    assert not prompt_leaves_reasoning_open(render_chat(q, thinking=False))
    multi = q + [{"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
                 {"role": "user", "content": "And 3 + 3?"}]
    assert prompt_leaves_reasoning_open(render_chat(multi))
    assert not prompt_leaves_reasoning_open(render_chat(q, add_generation_prompt=False))
    assert not prompt_leaves_reasoning_open("no tags at all")


# ----------------------------------------------------------------------------------------------
# TextStream

def run_stream(tok, ids, **kw):
    s = TextStream(tok, **kw)
    deltas = [s.push(i) for i in ids] + [s.finish()]
    return s, deltas


def test_text_stream_think_tokens_as_single_ids(tok):
    ids = [*tok.encode("Let me see 🙂"), tok.think_end_id, *tok.encode("\n\nThe answer: 日本"),
           tok.eos_id]
    s, deltas = run_stream(tok, ids, in_reasoning=True)
    assert (s.reasoning, s.content) == ("Let me see 🙂", "The answer: 日本")
    assert s.text == f"Let me see 🙂{THINK_END}\n\nThe answer: 日本"  # tags kept, EOS skipped
    assert "".join(d.text for d in deltas) == s.text
    assert "".join(d.reasoning for d in deltas) == s.reasoning
    assert "".join(d.content for d in deltas) == s.content
    assert not any(d.stopped for d in deltas)
    # reasoning streams out before the end tag arrives, not all at the end
    assert ("".join(d.reasoning for d in deltas[:len(tok.encode("Let me see 🙂"))])
            == "Let me see 🙂")

    ids = [*tok.encode("Hi "), tok.think_start_id, *tok.encode("plan"), tok.think_end_id,
           *tok.encode(" ok")]
    s, _ = run_stream(tok, ids, in_reasoning=False)
    assert (s.reasoning, s.content) == ("plan", "Hi ok")


def test_text_stream_matches_one_shot(tok):
    # Streaming and non-streaming give the same answer: the deltas add up to parsing decode(ids) at
    # once.
    rng = random.Random(4)
    controls = [tok.think_start_id, tok.think_end_id, tok.eos_id]
    for _ in range(100):
        # control tokens between characters (one inside a character would make the bytes invalid
        # UTF-8)
        ids = [i for _ in range(rng.randint(0, 12))
               for i in (tok.encode(rng.choice(PIECES)) if rng.random() < 0.8
                         else [rng.choice(controls)])]
        for in_reasoning in (True, False):
            s, deltas = run_stream(tok, ids, in_reasoning=in_reasoning)
            full = tok.decode(ids, skip_special_tokens=True)
            assert s.text == full
            assert (s.reasoning, s.content) == parse([full], in_reasoning)
            assert not any(has_bad_char(d.text) for d in deltas)


def test_text_stream_stop_inside_tokens(tok):
    text = "hello world the answer is forty two"
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    # a stop string that starts inside one token and ends inside another
    ends = [sum(map(len, pieces[:k + 1])) for k in range(len(pieces))]
    k = next(k for k in range(len(pieces) - 1) if len(pieces[k]) >= 2 and len(pieces[k + 1]) >= 2)
    stop = text[ends[k] - 1:ends[k] + 1]
    # really inside tokens
    assert stop and all(e not in (ends[k] - 1, ends[k] + 1) for e in [0, *ends])
    s, deltas = run_stream(tok, tok.encode(text), stop=[stop])
    assert s.text == s.content == text[:text.find(stop)]
    assert stop not in s.text
    i = next(j for j, d in enumerate(deltas) if d.stopped)
    # stays stopped, finish too
    assert all(d == StreamDelta("", "", "", True) for d in deltas[i + 1:])


def test_text_stream_stop_across_multibyte_and_in_reasoning(tok):
    ids = tok.encode("think 日本語 then") + [tok.think_end_id] + tok.encode("answer")
    s, deltas = run_stream(tok, ids, stop=["本語"], in_reasoning=True)
    assert (s.text, s.reasoning, s.content) == ("think 日", "think 日", "")
    assert deltas[-1].stopped
    # a held-back stop prefix that never completes is released by finish()
    s, deltas = run_stream(tok, tok.encode("the end is EN"), stop=["END"])
    assert s.content == "the end is EN" and deltas[-1].content == "EN" and not deltas[-1].stopped


def test_text_stream_stop_completed_by_flushed_tail(tok):
    # The detokenizer's final flush (a truncated char -> U+FFFD) can itself complete a stop string.
    ids = tok.encode("x 🙂")[:-1]
    s, deltas = run_stream(tok, ids, stop=["x \ufffd"])
    assert s.text == "" and deltas[-1].stopped


def test_push_all_equals_pushing_token_by_token(tok):
    """push_all (the engine's path when nobody reads the deltas) gives what push() per id +
    finish() gives, stop strings, split characters and tags spelled by ordinary tokens included."""
    rng = random.Random(5)
    spelled = [tok.encode("</") + tok.encode("think>"), tok.encode("<th") + tok.encode("ink>")]
    for _ in range(150):
        ids = [i for _ in range(rng.randint(0, 12)) for i in
               (tok.encode(rng.choice(PIECES)) if rng.random() < 0.7 else
                rng.choice([[tok.think_start_id], [tok.think_end_id], [tok.eos_id], *spelled]))]
        if rng.random() < 0.3:
            ids = ids[:rng.randint(0, len(ids))]  # may end inside a character
        kw = dict(in_reasoning=rng.random() < 0.5,
                  stop=rng.choice([(), (), ("the",), ("日本", "\n"), ("nk>",)]))
        one, deltas = run_stream(tok, ids, **kw)
        whole = TextStream(tok, **kw)
        d = whole.push_all(ids)
        assert (d.text, d.reasoning, d.content) == (one.text, one.reasoning, one.content), (ids, kw)
        want = (one.text, one.reasoning, one.content)
        assert (whole.text, whole.reasoning, whole.content) == want
        assert d.stopped == any(x.stopped for x in deltas) and whole.finished
