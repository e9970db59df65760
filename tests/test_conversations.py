"""The conversation store: SQLite in the app database, chat_ tables, atomic changes, Markdown export."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from desktop.chat.conversations import ConversationStore
from desktop.errors import UserError


def test_store_lives_in_the_app_database_with_chat_prefixed_tables(isolated_home: Path) -> None:
    from desktop import paths

    with ConversationStore() as store:
        store.create("first")
    assert store.path == paths.database_path()
    with sqlite3.connect(paths.database_path()) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"chat_conversations", "chat_messages"} <= tables
    assert all(t.startswith(("chat_", "sqlite_")) for t in tables)


def test_conversations_and_messages_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite3"
    with ConversationStore(db) as store:
        conv = store.create("Colours", model_path="/m/gemma.gguf", system_prompt="Be brief.", settings={"temperature": 0.2})
        store.add_message(conv.id, "user", "Name a colour.")
        reply = store.add_message(conv.id, "assistant", "Blue.", {"generation_tokens_per_s": 42.0, "completion_tokens": 2})
    with ConversationStore(db) as store:  # survives reopening
        again = store.get(conv.id)
        assert again.settings == {"temperature": 0.2} and again.system_prompt == "Be brief."
        messages = store.messages(conv.id)
        assert [(m.position, m.role, m.content) for m in messages] == [(0, "user", "Name a colour."), (1, "assistant", "Blue.")]
        assert messages[1].metrics == {"generation_tokens_per_s": 42.0, "completion_tokens": 2}
        assert messages[1].id == reply.id
        assert store.chat_messages(conv.id) == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ]


def test_regenerate_deletes_from_a_position_and_update_replaces_a_reply(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "q.sqlite3") as store:
        conv = store.create()
        store.add_message(conv.id, "user", "a")
        first = store.add_message(conv.id, "assistant", "b")
        store.update_message(first.id, "b2", {"finish_reason": "stopped"})
        assert store.messages(conv.id)[1].content == "b2"
        assert store.delete_from(conv.id, 1) == 1
        again = store.add_message(conv.id, "assistant", "c")
        assert again.position == 1 and [m.content for m in store.messages(conv.id)] == ["a", "c"]


def test_list_orders_by_last_change_and_delete_cascades(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "q.sqlite3") as store:
        old = store.create("old")
        new = store.create("new")
        store.add_message(old.id, "user", "bump")
        assert [c.title for c in store.list()] == ["old", "new"]
        store.update(new.id, title="renamed")
        assert store.list()[0].title == "renamed"
        store.delete(old.id)
        assert [c.id for c in store.list()] == [new.id]
        assert store.messages(old.id) == []
        with pytest.raises(UserError):
            store.get(old.id)


def test_a_failed_change_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "q.sqlite3") as store:
        conv = store.create()
        store.add_message(conv.id, "user", "kept")
        with pytest.raises(sqlite3.IntegrityError):
            store.add_message(conv.id, "wizard", "not a role")
        assert [m.content for m in store.messages(conv.id)] == ["kept"]
        with pytest.raises(sqlite3.IntegrityError):
            store.add_message(conv.id + 99, "user", "no such conversation")


def test_export_markdown(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "q.sqlite3") as store:
        conv = store.create("Colours", model_path="/m/gemma.gguf", system_prompt="Be brief.")
        store.add_message(conv.id, "user", "Name a colour.")
        store.add_message(
            conv.id, "assistant", "Blue.", {"generation_tokens_per_s": 42.04, "completion_tokens": 2, "ttft_s": 0.123}
        )
        out = store.export_markdown_file(conv.id, tmp_path / "out" / "colours.md")
    text = out.read_text(encoding="utf-8")
    assert text == (
        "# Colours\n\nModel: `gemma.gguf`\n\n## System\n\nBe brief.\n\n## User\n\nName a colour.\n\n"
        "## Assistant\n\nBlue.\n\n*2 tokens, 42.0 tok/s, first token after 0.12 s*\n"
    )
    assert not list((tmp_path / "out").glob("*.partial"))
