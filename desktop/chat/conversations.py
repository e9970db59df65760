"""Conversations kept on disk: a Qt-free SQLite store in the app database (tables prefixed ``chat_``).

Every change is one transaction, so a crash leaves either the old or the new state. A reply's metrics are kept
with the message (JSON), so the tokens/second history of a conversation survives a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.errors import UserError
from desktop.fileio import write_text_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL DEFAULT '',
    model_path TEXT NOT NULL DEFAULT '',
    system_prompt TEXT NOT NULL DEFAULT '',
    settings_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chat_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES chat_conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    metrics_json TEXT,
    created_at REAL NOT NULL,
    UNIQUE (conversation_id, position)
);
CREATE INDEX IF NOT EXISTS chat_messages_by_conversation ON chat_messages(conversation_id, position);
"""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model_path: str
    system_prompt: str
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    position: int
    role: str
    content: str
    metrics: dict[str, Any] | None = None
    created_at: float = 0.0


class ConversationStore:
    """Open (and create) the chat tables in ``path`` (default: :func:`desktop.paths.database_path`)."""

    def __init__(self, path: Path | str | None = None) -> None:
        if path is None:
            from desktop import paths

            path = paths.database_path()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- conversations

    def create(
        self,
        title: str = "",
        *,
        model_path: str = "",
        system_prompt: str = "",
        settings: Mapping[str, Any] | None = None,
    ) -> Conversation:
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO chat_conversations (title, model_path, system_prompt, settings_json, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (title, model_path, system_prompt, json.dumps(dict(settings or {})), now, now),
            )
            new_id = int(cursor.lastrowid or 0)
        return self.get(new_id)

    def get(self, conversation_id: int) -> Conversation:
        with self._lock:
            row = self._db.execute("SELECT * FROM chat_conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise UserError("That conversation no longer exists.", "Pick another one from the list.")
        return _conversation(row)

    def list(self) -> list[Conversation]:
        """All conversations, the most recently changed first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM chat_conversations ORDER BY updated_at DESC, id DESC").fetchall()
        return [_conversation(r) for r in rows]

    def update(
        self,
        conversation_id: int,
        *,
        title: str | None = None,
        model_path: str | None = None,
        system_prompt: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Conversation:
        changes: dict[str, Any] = {}
        if title is not None:
            changes["title"] = title
        if model_path is not None:
            changes["model_path"] = model_path
        if system_prompt is not None:
            changes["system_prompt"] = system_prompt
        if settings is not None:
            changes["settings_json"] = json.dumps(dict(settings))
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._transaction() as db:
            db.execute(f"UPDATE chat_conversations SET {assignments} WHERE id = ?", (*changes.values(), conversation_id))
        return self.get(conversation_id)

    def delete(self, conversation_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM chat_conversations WHERE id = ?", (conversation_id,))

    # -- messages

    def add_message(
        self, conversation_id: int, role: str, content: str, metrics: Mapping[str, Any] | None = None
    ) -> Message:
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM chat_messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO chat_messages (conversation_id, position, role, content, metrics_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, int(row[0]), role, content, _dump(metrics), now),
            )
            db.execute("UPDATE chat_conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
            message_id = int(cursor.lastrowid or 0)
        with self._lock:
            return _message(self._db.execute("SELECT * FROM chat_messages WHERE id = ?", (message_id,)).fetchone())

    def update_message(self, message_id: int, content: str, metrics: Mapping[str, Any] | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE chat_messages SET content = ?, metrics_json = ? WHERE id = ?",
                (content, _dump(metrics), message_id),
            )

    def messages(self, conversation_id: int) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM chat_messages WHERE conversation_id = ? ORDER BY position", (conversation_id,)
            ).fetchall()
        return [_message(r) for r in rows]

    def delete_from(self, conversation_id: int, position: int) -> int:
        """Delete the messages at ``position`` and after (regenerate, edit-and-resend); returns how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM chat_messages WHERE conversation_id = ? AND position >= ?", (conversation_id, position)
            )
            db.execute("UPDATE chat_conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id))
            return int(cursor.rowcount)

    def chat_messages(self, conversation_id: int) -> list[dict[str, str]]:
        """The conversation as the engine takes it: the system prompt first (if any), then the turns."""
        conversation = self.get(conversation_id)
        out = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
        out += [{"role": m.role, "content": m.content} for m in self.messages(conversation_id)]
        return out

    # -- export

    def export_markdown(self, conversation_id: int) -> str:
        conversation = self.get(conversation_id)
        lines = [f"# {conversation.title or 'Conversation'}", ""]
        if conversation.model_path:
            lines += [f"Model: `{Path(conversation.model_path).name}`", ""]
        if conversation.system_prompt:
            lines += ["## System", "", conversation.system_prompt, ""]
        for message in self.messages(conversation_id):
            lines += [f"## {message.role.capitalize()}", "", message.content, ""]
            if message.metrics and message.metrics.get("generation_tokens_per_s") is not None:
                m = message.metrics
                ttft = m.get("ttft_s")
                lines += [
                    f"*{m.get('completion_tokens', 0)} tokens, {m['generation_tokens_per_s']:.1f} tok/s"
                    + (f", first token after {ttft:.2f} s*" if ttft is not None else "*"),
                    "",
                ]
        return "\n".join(lines).rstrip() + "\n"

    def export_markdown_file(self, conversation_id: int, path: Path | str) -> Path:
        target = Path(path)
        write_text_atomic(target, self.export_markdown(conversation_id))
        return target


def _dump(metrics: Mapping[str, Any] | None) -> str | None:
    return json.dumps(dict(metrics)) if metrics is not None else None


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        id=int(row["id"]),
        title=row["title"],
        model_path=row["model_path"],
        system_prompt=row["system_prompt"],
        settings=json.loads(row["settings_json"] or "{}"),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def _message(row: sqlite3.Row) -> Message:
    return Message(
        id=int(row["id"]),
        conversation_id=int(row["conversation_id"]),
        position=int(row["position"]),
        role=row["role"],
        content=row["content"],
        metrics=json.loads(row["metrics_json"]) if row["metrics_json"] else None,
        created_at=float(row["created_at"]),
    )
