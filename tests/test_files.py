"""Atomic writes leave the old file or the new one, never a part; JSONL errors name the file and
line."""

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nanoseek.files import (
    DataError,
    atomic_directory,
    atomic_file,
    atomic_write,
    jsonl_objects,
    write_jsonl,
)


def test_atomic_write_replaces_text_and_bytes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, "old\n")
    atomic_write(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl([{"i": 1}], path)

    def rows():
        yield {"i": 2}
        raise RuntimeError("the producer died half-way")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), path)
    assert [row for _, row in jsonl_objects(path)] == [{"i": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def test_atomic_file_temporaries_end_in_tmp_so_a_reader_can_sweep_them(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "x.safetensors") as tmp:
        assert tmp.name.endswith(".tmp") and tmp.parent == tmp_path
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_writer_killed_mid_write_leaves_the_old_version(tmp_path):
    """SIGKILL while the new version is half written: the old one is still there, whole."""
    path = tmp_path / "state.txt"
    atomic_write(path, "version 1\n")
    script = textwrap.dedent(f"""
        import os, signal, sys
        from nanoseek.files import atomic_file
        with atomic_file({str(path)!r}) as tmp, open(tmp, "w") as f:
            f.write("version 2, half")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ})
    assert proc.returncode == -signal.SIGKILL
    assert path.read_text() == "version 1\n"


def test_atomic_directory_swaps_whole_directories(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
        raise ValueError("crash before the swap")
    assert (target / "a").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporaries, no old copies


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}\n\n{"a": 2,}\n', r"x.jsonl:3: malformed JSON"),
    ('{"a": 1}\n[1, 2]\n', r"x.jsonl:2: expected a JSON object, got list"),
])
def test_jsonl_errors_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        list(jsonl_objects(path))


def test_jsonl_reads_gzip_and_reports_bad_utf8_at_its_line(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"t": "é"}) + "\n")
    assert [row for _, row in jsonl_objects(path)] == [{"t": "é"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"t": 1}\n{"t": "\xff"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not UTF-8"):
        list(jsonl_objects(bad))
