"""Training data: read a corpus, tokenize it once into flat token files, and serve packed rows.

  corpus files (.txt / .jsonl / .parquet, optionally .gz)
      --prepare_corpus-->  train.bin, val.bin, meta.json (+ train.mask, val.mask for SFT chats)
  train.bin  --PackedLoader-->  (x, y) batches of seq_len tokens, sharded over data-parallel ranks

Documents are concatenated with an EOS after each and cut into fixed rows with no cross-document
mask, as V3 was trained. Reading is streaming (a corpus larger than memory works); the token files
are memory-mapped. The synthetic reasoning corpus (reasoning-gym chats) is tasks/gym.py's.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoseek.files import DataError, atomic_directory, jsonl_objects, numbered_lines
from nanoseek.model.model import IGNORE_INDEX
from nanoseek.tokenizer import (
    EOS,
    THINK_END,
    THINK_START,
    Tokenizer,
    render_chat,
    render_completion,
)

# ---------------------------------------------------------------------------------------------
# corpus readers


@dataclass
class Document:
    text: str
    # "file:line" (or "file" / "file:row N"): where an error or a duplicate can be traced to
    source: str


def corpus_files(pattern: str) -> list[Path]:
    """Files matching a glob (`**` recurses), sorted so every run and every rank sees the same
    order."""
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"no files match {pattern!r}")
    return files


def _suffix(path: Path) -> str:
    s = path.suffixes
    return "".join(s[-2:]) if s[-1:] == [".gz"] else "".join(s[-1:])


def read_documents(pattern: str, *, field: str = "text",
                   txt_mode: str = "file") -> Iterator[Document]:
    """Stream documents from every file matching `pattern`.

    .txt: the whole file is one document (txt_mode="file") or each blank-line-separated block is
    (txt_mode="blocks"); .jsonl: the string field `field` of every line; .parquet: the column
    `field`. Any of them may be gzip-compressed (.txt.gz, .jsonl.gz)."""
    if txt_mode not in ("file", "blocks"):
        raise DataError(f"txt_mode must be 'file' or 'blocks', got {txt_mode!r}")
    files = corpus_files(pattern)
    for path in files:  # fail on an unknown kind before reading anything
        if _suffix(path) not in (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet"):
            raise DataError(f"{path}: unsupported file type {_suffix(path)!r}; "
                            "use .txt, .jsonl or .parquet (optionally .txt.gz / .jsonl.gz)")
    for path in files:
        kind = _suffix(path).removesuffix(".gz")
        if kind == ".txt":
            yield from _read_txt(path, txt_mode)
        elif kind == ".jsonl":
            yield from _read_jsonl(path, field)
        else:
            yield from _read_parquet(path, field)


def _read_txt(path: Path, mode: str) -> Iterator[Document]:
    block: list[str] = []
    start = 1
    for n, line in numbered_lines(path):
        if mode == "blocks" and not line.strip():
            if block:
                yield Document("".join(block).strip("\n"), f"{path}:{start}")
            block = []
            continue
        if not block:
            start = n
        block.append(line)
    if block and "".join(block).strip():
        text = "".join(block)
        yield Document(text.strip("\n") if mode == "blocks" else text, f"{path}:{start}")


def _read_jsonl(path: Path, field: str) -> Iterator[Document]:
    return _read_jsonl_rows(path, field, str)


def _read_jsonl_rows(path: Path, field: str, kind: type) -> Iterator[Document]:
    """The `field` of every line (a `kind`: a str, or the messages list of a chat) with its
    file:line."""
    for where, row in jsonl_objects(path):
        if field not in row:
            raise DataError(f"{where}: no field {field!r} (has: {', '.join(row)}); "
                            "choose it with --field")
        if not isinstance(row[field], kind):
            raise DataError(f"{where}: field {field!r} is {type(row[field]).__name__}, "
                            f"not a {kind.__name__}")
        yield Document(row[field], where)


def _read_parquet(path: Path, column: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: "
                        "pip install 'nanoseek[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if column not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {column!r} (has: {', '.join(pf.schema_arrow.names)}); "
                        "choose it with --field")
    row = 0
    # streaming, one row group at a time
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"{path}: row {row}: column {column!r} is "
                                f"{type(text).__name__}, not a string")
            yield Document(text, f"{path}:row {row}")


def read_chats(pattern: str) -> Iterator[Document]:
    """SFT conversations from .jsonl(.gz) files: a `messages` list of {role, content} with an
    optional `reasoning_content` on assistant turns. Each Document's text is the messages as
    JSON."""
    for path in corpus_files(pattern):
        if _suffix(path).removesuffix(".gz") != ".jsonl":
            raise DataError(f"{path}: chat data must be .jsonl "
                            "(one {\"messages\": [...]} per line)")
        for doc in _read_jsonl_rows(path, "messages", list):
            for i, m in enumerate(doc.text):
                ok = (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                      and isinstance(m.get("content"), str)
                      and isinstance(m.get("reasoning_content") or "", str))
                if not ok:
                    raise DataError(f"{doc.source}: messages[{i}] must be {{role: "
                                    "system|user|assistant, content: str, "
                                    f"reasoning_content?: str}}, got {m!r:.80}")
            if not any(m["role"] == "assistant" for m in doc.text):
                raise DataError(f"{doc.source}: no assistant message to learn from")
            if doc.text[0]["role"] == "assistant":
                raise DataError(f"{doc.source}: the conversation starts with the assistant; "
                                "nothing prompts it")
            yield Document(json.dumps(doc.text, ensure_ascii=False), doc.source)


def chat_tokens(tokenizer: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation for SFT: one sequence per assistant turn, each its context
    rendered with the generation prompt exactly as the engine will see it (mask 0) followed by the
    turn's completion — reasoning, </think>, answer, EOS — (mask 1, the only tokens with a
    loss). A turn without reasoning is DeepThink off: its context ends in the empty, closed think
    block the engine writes when thinking is off, and only the answer is learned (a loss on that
    block would teach the model to skip its reasoning when thinking is on)."""
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        reasoning = m.get("reasoning_content")
        if tokenizer.template is not None:  # a foreign format: the think block is text of the turn
            context = tokenizer.encode_chat(messages[:i], thinking=bool(reasoning))
            text = m["content"]
            if reasoning:  # R1's spelling; `<think>` only if the generation prompt did not open it
                opened = tokenizer.decode(context).rstrip().endswith(THINK_START)
                text = f"{'' if opened else THINK_START}\n{reasoning}\n{THINK_END}\n\n{text}"
            target = tokenizer.encode_text(text) + [tokenizer.require_eos("an SFT target")]
        else:
            context = tokenizer.encode(render_chat(messages[:i], thinking=bool(reasoning)))
            target = tokenizer.encode(render_completion(reasoning, m["content"]) if reasoning
                                      else m["content"] + EOS)
        ids += context + target
        mask += [0] * len(context) + [1] * len(target)
    return ids, mask


# ---------------------------------------------------------------------------------------------
# tokenize once into flat token files


def split_position(text: str, seed: int) -> float:
    """Where a seeded hash of the text falls in [0, 1); below val_fraction it is validation. The
    split is stable across runs and file orders, and an exact duplicate can never sit on both
    sides of it."""
    h = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def prepare_corpus(pattern: str, tokenizer: Tokenizer, out_dir: str | Path, *,
                   val_fraction: float = 0.01, seed: int = 0, field: str = "text",
                   txt_mode: str = "file", chat: bool = False, progress: bool = True,
                   batch_docs: int = 512) -> dict[str, Any]:
    """Tokenize a corpus into `out_dir`/{train.bin, val.bin, meta.json}; returns the meta. Each
    document gets an EOS after it. With chat=True the corpus is SFT conversations (read_chats) and
    train.mask / val.mask (one byte per token) mark the tokens that carry a loss (chat_tokens).
    Written atomically: a failed or killed run leaves no half-written directory."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    eos = tokenizer.require_eos("a tokenized corpus (each document ends with it)")
    docs = read_chats(pattern) if chat else read_documents(pattern, field=field, txt_mode=txt_mode)
    counts = {"train": [0, 0], "val": [0, 0]}  # documents, tokens
    out_dir = Path(out_dir)
    from tqdm import tqdm

    with atomic_directory(out_dir) as tmp, ExitStack() as files:
        out = {split: files.enter_context(open(tmp / f"{split}.bin", "wb")) for split in counts}
        masks = ({split: files.enter_context(open(tmp / f"{split}.mask", "wb")) for split in counts}
                 if chat else {})
        bar = tqdm(desc="tokenizing", unit=" docs", disable=not progress)

        def flush(batch: list[str]) -> None:
            if chat:
                encoded = [chat_tokens(tokenizer, json.loads(text)) for text in batch]
            else:
                encoded = [(ids, None) for ids in tokenizer.encode_batch(batch)]
            for text, (ids, mask) in zip(batch, encoded):
                if not ids or ids[-1] != eos:  # chat documents already end with EOS
                    ids.append(eos)
                split = "val" if split_position(text, seed) < val_fraction else "train"
                np.asarray(ids, dtype=dtype).tofile(out[split])
                if chat:
                    np.asarray(mask, dtype=np.uint8).tofile(masks[split])
                counts[split][0] += 1
                counts[split][1] += len(ids)
            bar.update(len(batch))

        batch: list[str] = []
        for doc in docs:
            if doc.text:
                batch.append(doc.text)
            if len(batch) == batch_docs:
                flush(batch)
                batch = []
        flush(batch)
        bar.close()
        for split, (n_docs, _) in counts.items():
            if n_docs == 0:
                total = counts["train"][0] + counts["val"][0]
                raise DataError(f"{pattern!r}: the {split} split is empty ({total} documents, "
                                f"val_fraction {val_fraction}); add documents or change "
                                "val_fraction")
        meta = {"vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
                "eos_id": eos, "source": pattern,
                "field": "messages" if chat else field, "txt_mode": txt_mode, "chat": chat,
                "val_fraction": val_fraction, "seed": seed,
                "train_documents": counts["train"][0], "train_tokens": counts["train"][1],
                "val_documents": counts["val"][0], "val_tokens": counts["val"][1]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{data_dir}: not a prepared data directory (no meta.json); "
                        "make one with `nanoseek data prepare`")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# the packing loader


def token_files(bin_path: str | Path) -> tuple[np.memmap, np.memmap | None]:
    """A split's tokens, and its loss mask where it has one (SFT data: targets outside the
    assistant's turns carry no loss), mapped, not read."""
    bin_path = Path(bin_path)
    meta = read_meta(bin_path.parent)
    tokens = np.memmap(bin_path, dtype=np.dtype(meta["dtype"]), mode="r")
    mask = bin_path.with_suffix(".mask")
    return tokens, np.memmap(mask, dtype=np.uint8, mode="r") if mask.exists() else None


class PackedLoader:
    """Rows of seq_len + 1 tokens (x = row[:-1], y = row[1:]) cut from a token file; consecutive
    rows overlap by one token so no target is lost. Every epoch visits the rows in a fresh order
    drawn from (seed, epoch), the same on every rank; the global batch at step i is rows
    [i*B*W, (i+1)*B*W) of that order and rank r takes its slice [r*B, (r+1)*B). So W ranks with
    batch B see exactly what one process with batch B*W sees, and the whole position is two
    integers, which is what state_dict() saves."""

    def __init__(self, bin_path: str | Path, seq_len: int, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        self.tokens, self.mask = token_files(bin_path)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.n_rows = (len(self.tokens) - 1) // seq_len
        per_step = batch_size * world_size
        if self.n_rows < per_step:
            raise DataError(f"{bin_path}: {len(self.tokens):,} tokens make {self.n_rows} rows of "
                            f"{seq_len + 1}, fewer than one global batch ({batch_size} x "
                            f"{world_size} ranks); use more data, or a smaller batch or seq_len")
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.n_rows, generator=generator)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_rows // (self.batch_size * self.world_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        per_step = self.batch_size * self.world_size
        # the tail that does not fill a global batch is skipped
        if self.pos + per_step > self.n_rows:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation()
        mine = self._order[self.pos + self.rank * self.batch_size:][: self.batch_size].tolist()
        self.pos += per_step
        T = self.seq_len
        rows = np.stack([self.tokens[i * T: i * T + T + 1] for i in mine]).astype(np.int64)
        rows = torch.from_numpy(rows)
        x, y = rows[:, :-1], rows[:, 1:].clone()
        if self.mask is not None:
            keep = np.stack([self.mask[i * T + 1: i * T + T + 1] for i in mine]).astype(bool)
            keep = torch.from_numpy(keep)
            y[~keep] = IGNORE_INDEX
        return x, y

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "seq_len": self.seq_len,
                "n_rows": self.n_rows, "global_batch": self.batch_size * self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "n_rows", "global_batch"):
            if state[key] != mine[key]:
                raise DataError(f"loader state does not fit this data: {key} was {state[key]}, "
                                f"is now {mine[key]}")
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()


class DocumentLoader:
    """Micro-batches of batch_size rows, each row whole documents packed end to end (first fit, in
    a shuffled order) and right-padded; pads and masked tokens carry no loss. A document longer
    than a row is cut into windows as PackedLoader cuts rows.

    Why: PackedLoader cuts a short document wherever a row ends, so its continuation is learned
    without the question it answers (a reasoning trace with nothing to read from). Packing whole
    documents keeps PackedLoader's random mix of documents in every batch (a batch of only long or
    only short documents, as sorting by length gives, is a batch of one skill), at the price of
    the padding a row's last document leaves. Documents end at EOS: prepare_corpus writes one after
    each, and one after each SFT turn, whose context is repeated before it. The epoch's batches
    are drawn from (seed, epoch): the position is two integers, as for PackedLoader, and rank r
    takes global batches r, r + W, ..."""

    PAD_TO = 16  # rows are padded to a multiple of this: few distinct shapes
    LOOKAHEAD = 16  # documents tried against a batch's rows before it is closed

    def __init__(self, bin_path: str | Path, seq_len: int, batch_size: int, *, eos_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        self.tokens, self.mask = token_files(bin_path)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.eos_id = rank, world_size, eos_id
        ends = np.flatnonzero(np.asarray(self.tokens) == eos_id) + 1
        if len(ends) == 0 or ends[-1] != len(self.tokens):
            ends = np.append(ends, len(self.tokens))
        starts = np.concatenate([[0], ends[:-1]])
        spans = []  # (start, tokens): a row of n tokens gives n - 1 targets
        for s, e in zip(starts.tolist(), ends.tolist()):
            while e - s > seq_len + 1:  # a long document: windows overlapping by one token
                spans.append((s, seq_len + 1))
                s += seq_len
            if e - s > 1:
                spans.append((s, e - s))
        self.spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        self.epoch, self.pos = 0, 0
        self._batches = self._plan()
        if len(self._batches) < world_size:
            raise DataError(f"{bin_path}: {len(self.spans)} documents make {len(self._batches)} "
                            f"batches, fewer than one per rank ({world_size}); use more data")

    def _plan(self) -> list[list[list[int]]]:
        """This epoch's micro-batches: rows of span indices, in the order they are read."""
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        queue = torch.randperm(len(self.spans), generator=g).tolist()
        lengths = self.spans[:, 1].tolist()
        batches, deferred, i = [], [], 0
        while i < len(queue) or deferred:
            rows: list[list[int]] = [[] for _ in range(self.batch_size)]
            room = [self.seq_len + 1] * self.batch_size
            todo, deferred, misses = deferred, [], 0
            while misses < self.LOOKAHEAD and (todo or i < len(queue)):
                if todo:
                    d = todo.pop(0)
                else:
                    d, i = queue[i], i + 1
                r = next((r for r in range(self.batch_size) if room[r] >= lengths[d]), None)
                if r is None:
                    deferred.append(d)
                    misses += 1
                else:
                    rows[r].append(d)
                    room[r] -= lengths[d]
            deferred = todo + deferred
            batches.append([r for r in rows if r])
        return batches

    @property
    def steps_per_epoch(self) -> int:
        return len(self._batches) // self.world_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.world_size > len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._batches = self._plan()
        rows = self._batches[self.pos + self.rank]
        self.pos += self.world_size
        positions = [np.concatenate([np.arange(s, s + n) for s, n in self.spans[row].tolist()])
                     for row in rows]
        width = -(-max(len(p) - 1 for p in positions) // self.PAD_TO) * self.PAD_TO
        x = np.full((len(rows), width), self.eos_id, dtype=np.int64)
        y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for r, p in enumerate(positions):
            x[r, :len(p) - 1] = self.tokens[p[:-1]]
            target = self.tokens[p[1:]].astype(np.int64)
            if self.mask is not None:
                target[self.mask[p[1:]] == 0] = IGNORE_INDEX
            y[r, :len(p) - 1] = target
        return torch.from_numpy(x), torch.from_numpy(y)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "seq_len": self.seq_len,
                "documents": len(self.spans), "batch_size": self.batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "documents", "batch_size", "world_size"):
            if state.get(key) != mine[key]:
                raise DataError(f"cannot resume the data position: {key} was {state.get(key)}, "
                                f"now {mine[key]} (packing documents; the data or the batch "
                                "changed)")
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._batches = self._plan()


__all__ = ["Document", "DocumentLoader", "PackedLoader", "chat_tokens", "corpus_files",
           "prepare_corpus", "read_chats", "read_documents", "read_meta"]
