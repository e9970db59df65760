"""The chat session without Qt: the reply's states, what is saved (into a real SQLite store), regenerate, a reply
left running in another conversation, engine errors, and the settings a conversation restores."""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop.chat.conversations import ConversationStore
from desktop.chat.engine import ReplyMetrics
from desktop.chat.session import (
    ChatSession,
    ConversationSettings,
    ReplyState,
    live_rate,
    metrics_line,
)

METRICS = ReplyMetrics(
    prompt_tokens=12, prompt_ms=40.0, prompt_tokens_per_s=300.0, generated_tokens=9, generation_ms=300.0,
    generation_tokens_per_s=30.0, ttft_s=0.05, total_s=0.4, completion_tokens=10, prompt_tokens_total=12,
    context_used=22, n_ctx=1024, finish_reason="length",
)
SETTINGS = ConversationSettings("/m/model.gguf", {"temperature": 0.0}, 2048, "chatml")


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    with ConversationStore(tmp_path / "chat.db") as s:
        yield s  # type: ignore[misc]


def test_a_reply_goes_idle_streaming_idle_and_both_messages_are_saved(store: ConversationStore) -> None:
    session = ChatSession()
    assert session.state is ReplyState.IDLE and session.can_send("hi") and not session.can_send("  ")
    save_user = session.add_user("Hello\nthere", "bubble-1", SETTINGS, "Be brief.")
    save_user(store)
    assert session.wants_reply()
    session.waiting = True
    assert session.state is ReplyState.WAITING and not session.can_send("more")
    reply = session.begin_reply("r1", "bubble-2", 100.0)
    assert session.state is ReplyState.STREAMING and not session.waiting
    assert session.tokens("other", "x", [100.1]) is None  # not ours
    assert session.tokens("r1", "Hi", [100.2]) is reply and session.tokens("r1", " you", [100.3]) is reply
    assert session.take_frame() is reply and session.take_frame() is None  # drawn once per new batch
    done, save_reply = session.finish("r1", "Hi you", METRICS)
    assert done is reply and save_reply is not None and session.state is ReplyState.IDLE
    save_reply(store)

    conversation = store.list()[0]
    assert conversation.title == "Hello there" and conversation.system_prompt == "Be brief."
    assert ConversationSettings.of(conversation) == SETTINGS
    stored = store.messages(conversation.id)
    assert [(m.role, m.content) for m in stored] == [("user", "Hello\nthere"), ("assistant", "Hi you")]
    assert stored[1].metrics is not None and stored[1].metrics["generation_tokens_per_s"] == 30.0
    assert [t.bubble for t in session.turns] == ["bubble-1", "bubble-2"]
    assert session.engine_messages("Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_regenerate_drops_the_last_reply_from_screen_and_store(store: ConversationStore) -> None:
    session = ChatSession()
    session.add_user("Q", None, SETTINGS, "")(store)
    session.begin_reply("r1", "b", 0.0)
    _, save = session.finish("r1", "A", METRICS)
    save(store)  # type: ignore[misc]
    plan = session.regenerate()
    assert plan is not None
    removed, delete = plan
    assert removed is not None and removed.content == "A" and delete is not None
    assert delete(store) == 1
    assert [m.role for m in store.messages(session.conversation.id)] == ["user"]  # type: ignore[arg-type]
    assert session.wants_reply()
    session.begin_reply("r2", "b2", 0.0)
    assert session.regenerate() is None  # busy


def test_a_reply_left_for_another_conversation_is_saved_there_and_not_shown(store: ConversationStore) -> None:
    session = ChatSession()
    session.add_user("first", None, SETTINGS, "")(store)
    first_id = session.conversation.id
    session.begin_reply("r1", "b", 0.0)
    assert session.detach() is True
    session.new()
    assert session.tokens("r1", "late", [1.0]) is None  # buffered, not drawn
    assert session.is_current("r1") is False
    done, save = session.finish("r1", "late text", METRICS)
    assert done is not None and done.detached
    save(store)  # type: ignore[misc]
    assert session.turns == []  # the new conversation is untouched
    assert [m.content for m in store.messages(first_id)] == ["first", "late text"]  # type: ignore[arg-type]


def test_engine_errors_end_the_right_reply() -> None:
    session = ChatSession()
    session.add_user("Q", None, SETTINGS, "")
    session.begin_reply("r1", "b", 0.0)
    session.tokens("r1", "partial", [0.1])
    assert session.fail("error", "r-other").reply is None and session.reply is not None  # another request's error
    crash = session.fail("crash", "")
    assert crash.reply is not None and crash.keep_partial and crash.retry_pending
    assert session.state is ReplyState.WAITING  # asked again once the engine is back
    session.stop_waiting()
    session.begin_reply("r2", "b", 0.0)
    full = session.fail("context_full", "r2")
    assert full.reply is not None and not full.keep_partial and session.state is ReplyState.IDLE


def test_saved_settings_are_read_back_within_bounds() -> None:
    from desktop.chat.conversations import Conversation

    def conv(settings: object) -> Conversation:
        return Conversation(1, "t", "/m.gguf", "", settings, 0.0, 0.0)  # type: ignore[arg-type]

    assert ConversationSettings.of(conv({"n_ctx": 8192, "template": "chatml"})).n_ctx == 8192
    odd = ConversationSettings.of(conv({"n_ctx": 10**12, "template": "../evil", "sampling": "x"}))
    assert odd.n_ctx is None and odd.template is None and odd.sampling == {}
    assert ConversationSettings.of(conv({"n_ctx": True})).n_ctx is None
    assert ConversationSettings.of(conv({})) == ConversationSettings("/m.gguf")


def test_footer_and_live_rate() -> None:
    assert metrics_line(METRICS) == "10 tokens · 30.0 tok/s · first token after 0.05 s · reached the token limit"
    assert live_rate([1.0]) is None and live_rate([0.0, 0.5, 1.0]) == pytest.approx(2.0)
