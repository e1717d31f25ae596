"""Files that survive a crash, and where nanoseek keeps them.

One policy for every write that must not be lost or seen half-done: write a temporary sibling,
fsync it, rename it over the target (atomic on POSIX), fsync the parent directory so the rename
itself is durable. A crash at any moment (even SIGKILL) leaves the old version or the new one, never
a part. Every atomic write in nanoseek goes through here.

JSONL is read here too, so a bad line reads the same wherever it is: its file and line, then what is
wrong.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nanoseek.errors import UserError


class DataError(UserError):
    """Bad input data; the message names the file (and line) and what is wrong."""


# ---------------------------------------------------------------------------------------------
# where things live


def cache_dir() -> Path:
    """What nanoseek can rebuild (the CPU's measured peak, the untrained fallback model):
    $NANOSEEK_CACHE, else ~/.cache/nanoseek."""
    return Path(os.environ.get("NANOSEEK_CACHE") or Path.home() / ".cache" / "nanoseek")


def data_dir() -> Path:
    """What users make and would miss (conversations): $XDG_DATA_HOME/nanoseek."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "nanoseek"


# ---------------------------------------------------------------------------------------------
# atomic writes


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of `path` to write (by any means: open(), safetensors,
    savefig); on success it is fsynced and renamed over `path`; on an exception it is removed.
    Temporary names end in `.tmp`, so a reader can sweep up what a killed writer left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a whole text (UTF-8) or binary file atomically."""
    with atomic_file(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `directory` to fill; on success it replaces `directory` in one
    rename, so a crash at any moment leaves the previous version intact and loadable."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            fsync_path(f)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            directory.rename(old)
        tmp.rename(directory)
        fsync_path(directory.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# text and JSONL


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a plain or gzipped UTF-8 text file, with unreadable files, bad gzip
    and bad UTF-8 reported at their file and line. Lines are decoded one by one (a text stream
    decodes ahead in chunks, so it would blame an earlier line), and end in "\\n" whatever the
    file's line endings."""
    n = 0
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        with raw:
            for n, line in enumerate(raw, 1):  # noqa: B007 (n is read in the except clauses)
                text = line.decode("utf-8")
                yield n, text[:-2] + "\n" if text.endswith("\r\n") else text
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{n}: not UTF-8 text ({e.reason})") from None
    # gzip.BadGzipFile is an OSError; a truncated .gz is an EOFError
    except (OSError, EOFError) as e:
        raise DataError(f"{path}:{n + 1}: cannot read: {e}") from None


def jsonl_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("FILE:LINE", the object) for every non-blank line of a .jsonl (or .jsonl.gz) file. Every
    reader of JSONL (corpora, chats, task files, batch requests) goes through here."""
    path = Path(path)
    for n, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            # stripped, else an error at the end reads "column 1" of a next line
            row = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def write_jsonl(rows: Iterable[dict], path: str | Path) -> int:
    """Write rows as JSON lines, atomically; returns the count."""
    n = 0
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


__all__ = ["DataError", "atomic_directory", "atomic_file", "atomic_write", "cache_dir", "data_dir",
           "fsync_path", "jsonl_objects", "numbered_lines", "write_jsonl"]
