"""The chat app's conversations, in SQLite.

One file, WAL journal with synchronous=FULL: a write that returned is on disk, and a process killed
in the middle of a write leaves the database as it was before that write (SQLite's atomic commit),
so nothing already saved is ever lost. Every change is one transaction. The connection is shared by
the server's threads behind a lock; each call is a few milliseconds.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from nanoseek.errors import UserError

SCHEMA_VERSION = 2  # 2: conversations.version
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0  -- turns begun (begin_turn): what a page's copy is of
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    reasoning TEXT NOT NULL DEFAULT '',
    thought_s REAL,  -- seconds from the request to the first answer token (thinking time)
    finish TEXT,     -- stop, length, aborted (the user pressed stop) ...
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated DESC);
"""
TITLE_CHARS = 60


class StoreError(UserError):
    """A field the store refuses, or a database it cannot use (the message says which)."""


class NotFound(StoreError):
    """No conversation with that id."""


class Conflict(StoreError):
    """The conversation changed since the version the caller read (another tab moved it on)."""


@dataclass
class Message:
    id: int
    role: str
    content: str
    reasoning: str = ""
    thought_s: float | None = None
    finish: str | None = None


@dataclass
class Conversation:
    id: str
    title: str
    created: float
    updated: float
    version: int = 0
    messages: list[Message] | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        if self.messages is None:
            d.pop("messages")
        return d


class ConversationStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: conversation database version {version} is newer "
                                 f"than this nanoseek understands ({SCHEMA_VERSION}); upgrade "
                                 "nanoseek")
            with self._transaction() as db:  # not executescript: it would commit on its own
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(statement)
                if version == 1:  # (CREATE TABLE IF NOT EXISTS left its table as it was)
                    db.execute("ALTER TABLE conversations ADD COLUMN version INTEGER NOT NULL "
                               "DEFAULT 0")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable conversation database ({e})") from None

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: a change is all there or not at
        all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -----------------------------------------------------------------------------------------

    def create(self, title: str = "New chat") -> Conversation:
        now = time.time()
        c = Conversation(uuid.uuid4().hex, _title(title), now, now)
        with self._transaction() as db:
            db.execute("INSERT INTO conversations (id, title, created, updated) "
                       "VALUES (?, ?, ?, ?)", (c.id, c.title, c.created, c.updated))
        return c

    def list(self, query: str = "", limit: int = 200) -> list[Conversation]:
        """Newest first; with a query, those whose title or any message contains it
        (case-insensitive)."""
        sql = "SELECT id, title, created, updated, version FROM conversations"
        args: tuple = ()
        if query:
            like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            sql += (" WHERE title LIKE ?1 ESCAPE '\\' OR id IN (SELECT conversation_id FROM "
                    "messages WHERE content LIKE ?1 ESCAPE '\\' OR reasoning LIKE ?1 ESCAPE '\\')")
            args = (like,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated DESC LIMIT ?",
                                    (*args, limit)).fetchall()
        return [Conversation(*r) for r in rows]

    def get(self, cid: str) -> Conversation:
        with self._lock:
            row = self._db.execute("SELECT id, title, created, updated, version "
                                   "FROM conversations WHERE id = ?", (cid,)).fetchone()
            if row is None:
                raise NotFound(f"no conversation {cid!r}")
            msgs = self._db.execute("SELECT id, role, content, reasoning, thought_s, finish "
                                    "FROM messages WHERE conversation_id = ? ORDER BY id",
                                    (cid,)).fetchall()
        return Conversation(*row, messages=[Message(*m) for m in msgs])

    def rename(self, cid: str, title: str) -> Conversation:
        if not isinstance(title, str) or not title.strip():
            raise StoreError("title must be a non-empty string")
        with self._transaction() as db:
            if db.execute("UPDATE conversations SET title = ?, updated = ? WHERE id = ?",
                          (_title(title), time.time(), cid)).rowcount == 0:
                raise NotFound(f"no conversation {cid!r}")
        return self.get(cid)

    def delete(self, cid: str) -> None:
        with self._transaction() as db:
            if db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount == 0:
                raise NotFound(f"no conversation {cid!r}")

    def add_message(self, cid: str, role: str, content: str, reasoning: str = "",
                    thought_s: float | None = None, finish: str | None = None) -> Message:
        """Append a message; the first user message also titles a conversation still called
        'New chat'."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT title FROM conversations WHERE id = ?", (cid,)).fetchone()
            if row is None:
                raise NotFound(f"no conversation {cid!r}")
            return self._add(db, cid, row[0], role, content, reasoning, thought_s, finish, now)

    @staticmethod
    def _add(db: sqlite3.Connection, cid: str, title: str, role: str, content: str,
             reasoning: str, thought_s: float | None, finish: str | None, now: float) -> Message:
        mid = db.execute("INSERT INTO messages (conversation_id, role, content, reasoning, "
                         "thought_s, finish, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (cid, role, content, reasoning, thought_s, finish, now)).lastrowid
        untitled = role == "user" and title == "New chat" and content.strip()
        db.execute("UPDATE conversations SET updated = ?, title = ? WHERE id = ?",
                   (now, _title(content) if untitled else title, cid))
        return Message(mid, role, content, reasoning, thought_s, finish)

    def begin_turn(self, cid: str, version: int,
                   question: str | None) -> tuple[int, Message | None]:
        """A new turn of a conversation read at `version`: the question asked (None: regenerate,
        the last answer goes), in one transaction with the version's step, so that of two pages
        that read the same version only one moves it on; the other gets Conflict. Returns the new
        version and the question's message."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT title, version FROM conversations WHERE id = ?",
                             (cid,)).fetchone()
            if row is None:
                raise NotFound(f"no conversation {cid!r}")
            if row[1] != version:
                raise Conflict(f"conversation {cid!r} is at version {row[1]}, not {version}: it "
                               "changed elsewhere (another tab?)")
            asked = None
            if question is None:
                self._drop_last_reply(db, cid)
            else:
                asked = self._add(db, cid, row[0], "user", question, "", None, None, now)
            db.execute("UPDATE conversations SET version = version + 1 WHERE id = ?", (cid,))
        return version + 1, asked

    def drop_last_reply(self, cid: str) -> None:
        """Regenerate: the last message goes if it is the assistant's (the user's question
        stays)."""
        with self._transaction() as db:
            self._drop_last_reply(db, cid)

    @staticmethod
    def _drop_last_reply(db: sqlite3.Connection, cid: str) -> None:
        db.execute("DELETE FROM messages WHERE id = (SELECT MAX(id) FROM messages "
                   "WHERE conversation_id = ?) AND role = 'assistant'", (cid,))


def _title(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"
