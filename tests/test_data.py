"""Corpus readers, tokenized token files and the packing loader."""

import gzip
import json
import os

import numpy as np
import pytest
import torch

from nanoseek.data import DocumentLoader, PackedLoader, chat_tokens, prepare_corpus, read_documents
from nanoseek.files import DataError
from nanoseek.model.model import IGNORE_INDEX
from nanoseek.tokenizer import EOS, render_chat, render_completion, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"the number {i} is {i * 7} and {i}+{i}={2 * i}" for i in range(300)],
                           vocab_size=300)


def texts(pattern, **kw):
    return [d.text for d in read_documents(pattern, **kw)]


def test_txt_files_and_blocks(tmp_path):
    (tmp_path / "a.txt").write_text("first block\nstill first\n\n\nsecond block\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("zipped one\n\nzipped two")
    assert texts(str(tmp_path / "*.txt*"), txt_mode="file") == [
        "first block\nstill first\n\n\nsecond block\n", "zipped one\n\nzipped two"]
    docs = list(read_documents(str(tmp_path / "*.txt*"), txt_mode="blocks"))
    assert [d.text for d in docs] == ["first block\nstill first", "second block", "zipped one",
                                      "zipped two"]
    assert docs[1].source.endswith("a.txt:5")  # the line a block starts at


def test_jsonl_and_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one", "id": 1}) + "\n\n"
                                      + json.dumps({"text": "two"}))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "x", "text": "three"}) + "\n")
    pq.write_table(pa.table({"content": ["four", None, "five"]}), tmp_path / "c.parquet",
                   row_group_size=1)
    assert texts(str(tmp_path / "*.jsonl*")) == ["one", "two", "three"]
    assert texts(str(tmp_path / "*.parquet"), field="content") == ["four", "five"]


@pytest.mark.parametrize("name, content, field, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"text": "broken\n', "text", r"bad.jsonl:2: malformed JSON"),
    ("missing.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', "text",
     r"missing.jsonl:2: no field 'text' \(has: body\)"),
    ("num.jsonl", '{"text": 3}\n', "text", r"num.jsonl:1: field 'text' is int"),
    ("latin.txt", b"caf\xe9\n", "text", r"latin.txt:1: not UTF-8"),
    ("notgz.txt.gz", b"plain bytes", "text", r"notgz.txt.gz:1: cannot read"),
    ("cut.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 100)[:-12], "text",
     r"cut.jsonl.gz:\d+: cannot read"),
    ("data.csv", "a,b\n", "text", r"unsupported file type '.csv'"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, field, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        texts(str(path), field=field)


def test_empty_glob_missing_column_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="no files match"):
        texts(str(tmp_path / "nothing*.txt"))
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c.parquet: no column 'text' \(has: content\)"):
        texts(str(tmp_path / "c.parquet"))
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # running as root: permissions do not stop us
        pytest.skip("cannot make a file unreadable as root")
    with pytest.raises(DataError, match="locked.txt: cannot read"):
        texts(str(locked))


def test_prepare_corpus_round_trips_documents(tmp_path, tok):
    docs = [f"document {i}: {i} plus {i} is {2 * i}" for i in range(200)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    meta = prepare_corpus(str(tmp_path / "c.jsonl"), tok, tmp_path / "out", val_fraction=0.1,
                          progress=False)
    assert meta["train_documents"] + meta["val_documents"] == 200 and meta["val_documents"] > 5
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    # every document comes back whole, once, followed by EOS; the split does not depend on file
    # order
    back = tok.decode(train.tolist()).split(EOS)[:-1] + tok.decode(val.tolist()).split(EOS)[:-1]
    assert sorted(back) == sorted(docs)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                              for d in reversed(docs)))
    again = prepare_corpus(str(tmp_path / "c.jsonl"), tok, tmp_path / "out2", val_fraction=0.1,
                           progress=False)
    assert again["val_tokens"] == meta["val_tokens"]


def test_failed_prepare_leaves_nothing_behind(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n' * 50 + "not json\n")
    with pytest.raises(DataError, match="a.jsonl:51"):
        prepare_corpus(str(tmp_path / "a.jsonl"), tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def make_bin(tmp_path, n_tokens):
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint16"}))
    np.arange(n_tokens, dtype=np.uint16).tofile(tmp_path / "train.bin")
    return tmp_path / "train.bin"


def test_loader_rows_overlap_by_one_and_cover_an_epoch(tmp_path):
    path = make_bin(tmp_path, 8 * 10 + 1)  # exactly 10 rows of 8 + 1
    loader = PackedLoader(path, seq_len=8, batch_size=5)
    seen = []
    for _ in range(2):
        x, y = loader.next_batch()
        assert x.shape == (5, 8) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
        seen += (x[:, 0] // 8).tolist()
    assert sorted(seen) == list(range(10))  # one epoch = every row once
    x, _ = loader.next_batch()
    assert loader.state_dict()["epoch"] == 1


def test_loader_shards_ranks_like_one_process(tmp_path):
    path = make_bin(tmp_path, 64 * 37 + 5)
    one = PackedLoader(path, seq_len=64, batch_size=6, seed=3)
    ranks = [PackedLoader(path, seq_len=64, batch_size=2, rank=r, world_size=3, seed=3)
             for r in range(3)]
    for _ in range(20):  # several epochs
        x, _ = one.next_batch()
        assert torch.equal(x, torch.cat([r.next_batch()[0] for r in ranks]))
    assert not torch.equal(PackedLoader(path, 64, 6, seed=4).next_batch()[0],
                           PackedLoader(path, 64, 6).next_batch()[0])


def test_loader_resumes_mid_epoch(tmp_path):
    path = make_bin(tmp_path, 16 * 50 + 1)
    a = PackedLoader(path, seq_len=16, batch_size=4, seed=1)
    for _ in range(17):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # it travels through train_state.json
    b = PackedLoader(path, seq_len=16, batch_size=4, seed=1)
    b.load_state_dict(state)
    for _ in range(30):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    with pytest.raises(DataError, match="seq_len was 16, is now 8"):
        PackedLoader(path, seq_len=8, batch_size=4, seed=1).load_state_dict(state)


def test_loader_refuses_data_smaller_than_a_batch(tmp_path):
    with pytest.raises(DataError, match="fewer than one global batch"):
        PackedLoader(make_bin(tmp_path, 100), seq_len=64, batch_size=2)


def make_docs(tmp_path, lengths, eos=0, mask=False):
    """Documents of the given lengths (EOS included), token i of document d being 1000 * d + i + 1
    and its EOS `eos`: a token says which document it came from."""
    ids, keep = [], []
    for d, n in enumerate(lengths):
        ids += [1000 * d + i + 1 for i in range(n - 1)] + [eos]
        keep += [i % 2 for i in range(n)]
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint32"}))
    np.asarray(ids, dtype=np.uint32).tofile(tmp_path / "train.bin")
    if mask:
        np.asarray(keep, dtype=np.uint8).tofile(tmp_path / "train.mask")
    return tmp_path / "train.bin"


def test_document_loader_packs_whole_documents_once_an_epoch(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=200).tolist() + [150]  # one longer than a row: windows
    loader = DocumentLoader(make_docs(tmp_path, lengths), seq_len=64, batch_size=2, eos_id=0)
    targets: dict[int, list[int]] = {}
    for _ in range(loader.steps_per_epoch):
        x, y = loader.next_batch()
        assert x.shape[0] <= 2 and x.shape[1] <= 64 and x.shape[1] % DocumentLoader.PAD_TO == 0
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            n = sum(t != IGNORE_INDEX for t in row_y)
            assert all(t == IGNORE_INDEX for t in row_y[n:])  # right padding carries no loss
            assert row_x[1:n] == row_y[:n - 1]  # targets are the next tokens
            row = row_x[:1] + row_y[:n]
            doc, pieces = None, []
            for t in row:  # the row splits at EOS into documents, each from its first token
                if t and doc is None:
                    doc = t // 1000
                    assert t % 1000 == 1 or doc == 200, "a document starts at its first token"
                if t:
                    assert t // 1000 == doc
                    pieces.append(t)
                else:
                    assert doc is not None or row_x[0] == 0
                    targets.setdefault(doc, []).extend(pieces[1:] + [0] if doc is not None
                                                       else [])
                    doc, pieces = None, []
            if doc is not None:  # a window of the long document fills a row alone
                assert doc == 200
                targets.setdefault(doc, []).extend(pieces[1:])
    assert loader.state_dict()["epoch"] == 0
    for d, n in enumerate(lengths[:200]):  # every target of every short document, exactly once
        assert targets[d] == [1000 * d + i + 1 for i in range(1, n - 1)] + [0], d
    assert sorted(set(targets[200])) == [0] + [200_000 + i + 1 for i in range(1, 149)]
    loader.next_batch()
    assert loader.state_dict()["epoch"] == 1


def test_document_loader_keeps_the_mask_and_resumes(tmp_path):
    path = make_docs(tmp_path, [5, 9, 17, 4, 30] * 20, mask=True)
    a = DocumentLoader(path, seq_len=32, batch_size=2, eos_id=0, seed=1)
    tokens = np.fromfile(path, dtype=np.uint32).tolist()
    keep = np.fromfile(path.with_suffix(".mask"), dtype=np.uint8).tolist()
    kept = {t: k for t, k in zip(tokens, keep) if t}
    learned = 0
    for _ in range(a.steps_per_epoch):  # an epoch learns exactly the tokens the mask keeps
        y = a.next_batch()[1]
        learned += int((y != IGNORE_INDEX).sum())
        assert all(kept[t] for t in y[y > 0].tolist())
    assert learned == sum(keep)
    for _ in range(23):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = DocumentLoader(path, seq_len=32, batch_size=2, eos_id=0, seed=1)
    b.load_state_dict(state)
    for _ in range(60):  # across an epoch's end
        assert torch.equal(a.next_batch()[1], b.next_batch()[1])
    with pytest.raises(DataError, match="seq_len was 32, now 16"):
        DocumentLoader(path, seq_len=16, batch_size=4, eos_id=0, seed=1).load_state_dict(state)


def test_document_loader_ranks_split_the_batches(tmp_path):
    path = make_docs(tmp_path, list(range(3, 40)) * 3)
    one = DocumentLoader(path, seq_len=48, batch_size=2, eos_id=0, seed=2)
    ranks = [DocumentLoader(path, seq_len=48, batch_size=2, eos_id=0, seed=2, rank=r,
                            world_size=2) for r in range(2)]
    for _ in range(ranks[0].steps_per_epoch):
        for r in ranks:  # rank r reads the one-process loader's batches r, r + 2, ...
            assert torch.equal(r.next_batch()[1], one.next_batch()[1])


def chats(n):
    return [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{2 * i}",
                           "reasoning_content": f"{i} + {i} = {2 * i}"},
                          {"role": "user", "content": "And doubled?"},
                          {"role": "assistant", "content": f"{4 * i}"}]} for i in range(n)]


def test_chat_tokens_mask_only_the_assistants_completions(tok):
    m = chats(1)[0]["messages"]
    ids, mask = chat_tokens(tok, m)
    assert len(ids) == len(mask)
    kept = [t for t, k in zip(ids, mask) if k]
    # exactly the two completions: the first with its reasoning; the second has none, so it is
    # DeepThink off, whose empty think block is the prompt's, and only its answer is learned
    assert tok.decode(kept) == render_completion("0 + 0 = 0", "0") + "0" + EOS
    # and each follows its context exactly as the engine renders it (earlier reasoning dropped)
    assert tok.decode(ids) == (render_chat(m[:2]) + render_completion("0 + 0 = 0", "0")
                               + render_chat(m[:4], thinking=False) + "0" + EOS)
    assert kept.count(tok.think_end_id) == 1 and ids.count(tok.think_end_id) == 2


def test_chat_corpus_gives_a_loss_only_on_assistant_tokens(tmp_path, tok):
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats(60)))
    meta = prepare_corpus(str(tmp_path / "sft.jsonl"), tok, tmp_path / "out", val_fraction=0.1,
                          chat=True, progress=False)
    assert meta["chat"] and meta["train_documents"] + meta["val_documents"] == 60
    tokens = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    mask = np.fromfile(tmp_path / "out" / "train.mask", dtype=np.uint8)
    assert len(tokens) == len(mask) == meta["train_tokens"]
    loader = PackedLoader(tmp_path / "out" / "train.bin", seq_len=32, batch_size=4)
    x, y = loader.next_batch()
    rows = loader._order[:4].tolist()
    for r, (xr, yr) in enumerate(zip(x, y)):
        start = rows[r] * 32
        assert xr.tolist() == tokens[start: start + 32].tolist()
        want = [t if k else IGNORE_INDEX
                for t, k in zip(tokens[start + 1: start + 33], mask[start + 1: start + 33])]
        assert yr.tolist() == want
    assert (y == IGNORE_INDEX).any() and (y != IGNORE_INDEX).any()


@pytest.mark.parametrize("row,message", [
    ({"text": "x"}, "sft.jsonl:1: no field 'messages'"),
    ({"messages": "hi"}, "sft.jsonl:1: field 'messages' is str, not a list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"sft.jsonl:1: messages\[0\] must be"),
    ({"messages": [{"role": "user", "content": "x"}]}, "sft.jsonl:1: no assistant message"),
    ({"messages": [{"role": "assistant", "content": "x"}]},
     "sft.jsonl:1: the conversation starts with the assistant"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y", "reasoning_content": 3}]},
     r"sft.jsonl:1: messages\[1\] must be"),
])
def test_bad_chat_data_names_file_and_line(tmp_path, tok, row, message):
    (tmp_path / "sft.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        prepare_corpus(str(tmp_path / "sft.jsonl"), tok, tmp_path / "out", chat=True,
                       progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, message", [
    # column 15: just past the "a"
    ('{"prompt": "a"', ":1: malformed JSON (Expecting ',' delimiter at column 15)"),
    ("[1]", ":1: expected a JSON object, got list")])
def test_every_jsonl_reader_reports_a_bad_line_the_same_way(tmp_path, line, message):
    """Corpora, task files and batch requests all read JSONL through files.jsonl_objects."""
    from nanoseek.infer.batch import read_requests
    from nanoseek.infer.sampling import SamplingParams
    from nanoseek.tasks.load import load_task
    from nanoseek.tasks.task import TaskError

    f = tmp_path / "in.jsonl"
    f.write_text(line + "\n")
    for read, error in ((lambda: texts(str(f)), DataError), (lambda: load_task(str(f)), TaskError),
                        (lambda: read_requests(f, SamplingParams()), DataError)):
        with pytest.raises(error) as e:
            read()
        assert str(e.value) == f"{f}{message}"
