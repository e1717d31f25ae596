"""The conversation store: CRUD, search, transactions, and nothing lost when a writer is killed."""

import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from nanoseek.serve.store import TITLE_CHARS, Conflict, ConversationStore, NotFound, StoreError


def test_create_list_open_rename_delete(tmp_path):
    s = ConversationStore(tmp_path / "c.db")
    a, b = s.create(), s.create()
    s.add_message(a.id, "user", "What is   2+3?\n")
    s.add_message(a.id, "assistant", "5", reasoning="2+3=5", thought_s=1.5, finish="stop")
    got = s.get(a.id)
    assert got.title == "What is 2+3?"  # the first question titles it, whitespace collapsed
    assert [(m.role, m.content, m.reasoning, m.thought_s, m.finish) for m in got.messages] == [
        ("user", "What is   2+3?\n", "", None, None), ("assistant", "5", "2+3=5", 1.5, "stop")]
    assert [c.id for c in s.list()] == [a.id, b.id]  # most recently updated first
    s.rename(b.id, "Groceries")
    assert [c.id for c in s.list()] == [b.id, a.id]
    assert s.add_message(b.id, "user", "later").id
    assert s.get(b.id).title == "Groceries"  # a given title stays
    s.delete(a.id)
    with pytest.raises(NotFound, match="no conversation"):
        s.get(a.id)
    count = "SELECT COUNT(*) FROM messages WHERE conversation_id = ?"
    assert sqlite3.connect(tmp_path / "c.db").execute(count, (a.id,)).fetchone() == (0,)  # cascaded
    for bad in (lambda: s.rename(b.id, "  "), lambda: s.delete("nope"),
                lambda: s.add_message("nope", "user", "x")):
        with pytest.raises(StoreError):
            bad()


def test_search_matches_titles_and_messages_literally(tmp_path):
    s = ConversationStore(tmp_path / "c.db")
    a, b, c = s.create("Alpha"), s.create("Beta"), s.create("Gamma")
    s.add_message(b.id, "assistant", "the answer is 100% right", reasoning="thinking about kettles")
    s.add_message(c.id, "user", "a_b")
    assert [x.id for x in s.list("alp")] == [a.id]  # case-insensitive
    assert [x.id for x in s.list("KETTLE")] == [b.id]  # reasoning too
    assert [x.id for x in s.list("100%")] == [b.id]
    assert [x.id for x in s.list("%")] == [b.id]  # % is literal, not a wildcard
    assert [x.id for x in s.list("a_b")] == [c.id] and s.list("a_c") == []  # _ is literal


def test_long_titles_are_cut_and_regenerate_drops_only_an_answer(tmp_path):
    s = ConversationStore(tmp_path / "c.db")
    c = s.create()
    s.add_message(c.id, "user", "x" * 500)
    assert len(s.get(c.id).title) == TITLE_CHARS and s.get(c.id).title.endswith("…")
    s.drop_last_reply(c.id)  # the last message is the question: it stays
    assert len(s.get(c.id).messages) == 1
    s.add_message(c.id, "assistant", "a")
    s.drop_last_reply(c.id)
    assert [m.role for m in s.get(c.id).messages] == ["user"]


def test_a_failed_transaction_leaves_nothing(tmp_path):
    s = ConversationStore(tmp_path / "c.db")
    c = s.create()
    with pytest.raises(sqlite3.IntegrityError):
        s.add_message(c.id, "robot", "x")  # the role CHECK fails after the conversation is read
    assert s.get(c.id).messages == [] and s.get(c.id).title == "New chat"


def test_a_database_from_a_newer_nanoseek_or_not_a_database_is_refused(tmp_path):
    db = tmp_path / "c.db"
    ConversationStore(db).close()
    sqlite3.connect(db).execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="version 99 is newer"):
        ConversationStore(db)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db: not a usable conversation database"):
        ConversationStore(junk)


WRITER = textwrap.dedent("""
    import sys
    from nanoseek.serve.store import ConversationStore
    s = ConversationStore(sys.argv[1])
    c = s.create("killed")
    print(c.id, flush=True)
    i = 0
    while True:
        role = "user" if i % 2 == 0 else "assistant"
        m = s.add_message(c.id, role, f"message {i} " + "x" * (i * 37 % 3000))
        print(m.id, i, flush=True)  # printed only once the write has returned (committed)
        i += 1
""")


@pytest.mark.parametrize("after", [1, 40, 200])
def test_a_writer_killed_mid_write_loses_nothing_already_saved(tmp_path, after):
    """SIGKILL a process that is writing messages as fast as it can: every message it reported saved
    is there, intact, and the database passes SQLite's integrity check and keeps working."""
    db = tmp_path / "c.db"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    cid = p.stdout.readline().strip()
    saved = [p.stdout.readline().split() for _ in range(after)]
    p.send_signal(signal.SIGKILL)  # mid-way through some later write
    rest = p.stdout.read().split("\n")
    p.wait()
    saved += [line.split() for line in rest if line.strip()]
    s = ConversationStore(db)
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    messages = {m.id: m.content for m in s.get(cid).messages}
    for mid, i in saved:
        assert messages[int(mid)] == f"message {i} " + "x" * (int(i) * 37 % 3000)
    # at most the one committed but not yet reported
    assert len(messages) in (len(saved), len(saved) + 1)
    s.add_message(cid, "user", "still works")


def test_turns_move_the_version_on_and_a_stale_one_is_refused(tmp_path):
    s = ConversationStore(tmp_path / "c.db")
    c = s.create()
    assert c.version == 0 and s.get(c.id).version == 0
    v, asked = s.begin_turn(c.id, 0, "Q1")
    assert v == 1 and asked.role == "user" and s.get(c.id).title == "Q1"
    s.add_message(c.id, "assistant", "A1")  # the answer belongs to the turn: no new version
    assert s.get(c.id).version == 1
    with pytest.raises(Conflict, match="version 1, not 0"):
        s.begin_turn(c.id, 0, None)  # a tab still at 0 may not regenerate A1 away
    assert [m.content for m in s.get(c.id).messages] == ["Q1", "A1"]
    assert s.begin_turn(c.id, 1, None) == (2, None)  # regenerate: A1 goes
    assert [m.content for m in s.get(c.id).messages] == ["Q1"]
    s.rename(c.id, "Named")  # a rename is no turn
    assert s.get(c.id).version == 2 and [x.version for x in s.list()] == [2]
    with pytest.raises(NotFound):
        s.begin_turn("nope", 0, "x")


def test_a_version_1_database_gains_versions(tmp_path):
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as con:  # as nanoseek's first schema made it
        con.executescript("""
            CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL,
                                        created REAL NOT NULL, updated REAL NOT NULL);
            CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
                conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
                role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), content TEXT NOT NULL,
                reasoning TEXT NOT NULL DEFAULT '', thought_s REAL, finish TEXT,
                created REAL NOT NULL);
            INSERT INTO conversations VALUES ('old', 'Old chat', 0, 0);
            INSERT INTO messages (conversation_id, role, content, created)
                VALUES ('old', 'user', 'hello', 0);
            PRAGMA user_version=1;
        """)
    s = ConversationStore(db)
    c = s.get("old")
    assert (c.title, c.version, [m.content for m in c.messages]) == ("Old chat", 0, ["hello"])
    assert s.begin_turn("old", 0, "again")[0] == 1
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (2,)
