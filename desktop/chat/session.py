"""The chat session without Qt: the open conversation, the one reply in flight, regenerate, and what is saved.

The Chat page owns the widgets and the engine; it asks the session what to do and hands it what the engine said.
The reply moves through one small state machine (:class:`ReplyState`):

    IDLE --ask()--> WAITING (the model loads first) --begin_reply()--> STREAMING --finish()/fail()--> IDLE

A reply whose conversation the user left (new or another conversation) is *detached*: its text is still saved
to the conversation it belongs to, and nothing of it is drawn. Everything persisted leaves as a function of a
:class:`~desktop.chat.conversations.ConversationStore` (:data:`StoreFn`), which the page's queue runs in order,
so a reply is never written before its conversation. A turn carries an opaque ``bubble`` (the page's drawing of it).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from desktop.chat.conversations import Conversation, ConversationStore, Message
from desktop.chat.engine import ReplyMetrics
from desktop.chat.templates import FALLBACK_TEMPLATES

TITLE_CHARS = 48
LIVE_WINDOW = 9  # token stamps the live speed figure is measured over (8 gaps, as the graph smooths)
MIN_CTX, MAX_CTX = 256, 1 << 21  # bounds for a context size read back from the database

StoreFn = Callable[[ConversationStore], Any]


class ReplyState(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"  # asked for, the model is still loading
    STREAMING = "streaming"


@dataclass
class ConversationRef:
    """The conversation a chain of store calls works on; ``id`` is filled in by the call that creates it."""

    id: int | None = None


@dataclass
class Turn:
    role: str
    content: str
    bubble: Any = None  # the page's drawing of it (opaque here)
    metrics: dict[str, Any] | None = None


@dataclass
class ActiveReply:
    request_id: str
    conversation: ConversationRef
    position: int
    bubble: Any
    started: float
    parts: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    dirty: bool = False
    detached: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True)
class ConversationSettings:
    """What a conversation remembers besides its messages: the model, its context and template, the sampling."""

    model_path: str = ""
    sampling: Mapping[str, Any] = field(default_factory=dict)
    n_ctx: int | None = None
    template: str | None = None  # None: the model's own template

    def as_dict(self) -> dict[str, Any]:
        return {"sampling": dict(self.sampling), "n_ctx": self.n_ctx, "template": self.template}

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationSettings:
        """Read back what was saved; anything out of range or unknown is dropped (the database is not trusted)."""
        saved = conversation.settings if isinstance(conversation.settings, Mapping) else {}
        n_ctx = saved.get("n_ctx")
        n_ctx = n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and MIN_CTX <= n_ctx <= MAX_CTX else None
        template = saved.get("template")
        template = template if isinstance(template, str) and template in FALLBACK_TEMPLATES else None
        sampling = saved.get("sampling")
        return cls(
            model_path=str(conversation.model_path or ""),
            sampling=dict(sampling) if isinstance(sampling, Mapping) else {},
            n_ctx=n_ctx,
            template=template,
        )


@dataclass(frozen=True)
class Failure:
    """What the page shows after an engine error: the reply it ends (if any) and whether its text is kept."""

    reply: ActiveReply | None
    keep_partial: bool  # a crash mid-reply: keep what was written, marked interrupted
    retry_pending: bool  # after a crash: the reply is asked again once the engine is back


SERVER_PREFIX = "server:"  # a conversation with a model on an OpenAI-compatible server: "server:<url>#<model>"


def server_model_path(url: str, model: str) -> str:
    return f"{SERVER_PREFIX}{url}#{model}"


def parse_server_model_path(model_path: str) -> tuple[str, str] | None:
    """(url, model) of a conversation held with a server's model, or None for a local file."""
    if not model_path.startswith(SERVER_PREFIX):
        return None
    url, _, model = model_path[len(SERVER_PREFIX) :].rpartition("#")
    return (url, model) if url else None


def title_for(text: str) -> str:
    return " ".join(text.split())[:TITLE_CHARS]


def metrics_line(m: ReplyMetrics) -> str:
    """The footer under a finished reply."""
    parts = [f"{m.completion_tokens} tokens", f"{m.generation_tokens_per_s:.1f} tok/s"]
    if m.ttft_s is not None:
        parts.append(f"first token after {m.ttft_s:.2f} s")
    if m.finish_reason == "stopped":
        parts.append("stopped")
    elif m.finish_reason == "length":
        parts.append("reached the token limit")
    if m.dropped_messages:
        parts.append(f"{m.dropped_messages} oldest messages left out to fit the context")
    return " · ".join(parts)


def live_rate(stamps: Sequence[float]) -> float | None:
    """Tokens per second over the last :data:`LIVE_WINDOW` token stamps, while a reply streams."""
    recent = stamps[-LIVE_WINDOW:]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return None
    return (len(recent) - 1) / (recent[-1] - recent[0])


class ChatSession:
    """One open conversation and its reply in flight (see the module docstring for the states)."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.conversation = ConversationRef()
        self.reply: ActiveReply | None = None
        self.waiting = False
        self.overflow = "error"  # "drop_oldest" once the user agreed to leave old turns out

    # ---- state
    @property
    def state(self) -> ReplyState:
        if self.reply is not None:
            return ReplyState.STREAMING
        return ReplyState.WAITING if self.waiting else ReplyState.IDLE

    @property
    def busy(self) -> bool:
        return self.state is not ReplyState.IDLE

    def wants_reply(self) -> bool:
        """The last turn is the user's: a reply is owed."""
        return bool(self.turns) and self.turns[-1].role == "user"

    def can_send(self, text: str) -> bool:
        return not self.busy and bool(text.strip())

    # ---- the user's message
    def add_user(self, text: str, bubble: Any, settings: ConversationSettings, system: str) -> StoreFn:
        """Append the user's turn; returns the store call that creates or updates the conversation and saves it."""
        self.turns.append(Turn("user", text, bubble))
        ref, title = self.conversation, title_for(text)

        def save(store: ConversationStore) -> list[Conversation]:
            if ref.id is None:
                ref.id = store.create(
                    title, model_path=settings.model_path, system_prompt=system, settings=settings.as_dict()
                ).id
            else:
                store.update(ref.id, model_path=settings.model_path, system_prompt=system, settings=settings.as_dict())
            store.add_message(ref.id, "user", text)
            return store.list()

        return save

    def engine_messages(self, system: str) -> list[dict[str, str]]:
        out = [{"role": "system", "content": system}] if system else []
        return out + [{"role": t.role, "content": t.content} for t in self.turns]

    # ---- the reply
    def begin_reply(self, request_id: str, bubble: Any, started: float) -> ActiveReply:
        self.waiting = False
        self.reply = ActiveReply(request_id, self.conversation, len(self.turns), bubble, started)
        return self.reply

    def tokens(self, request_id: str, text: str, stamps: Sequence[float]) -> ActiveReply | None:
        """A batch of streamed text; returns the reply when it is ours and on screen."""
        reply = self.reply
        if reply is None or reply.request_id != request_id:
            return None
        reply.parts.append(text)
        reply.stamps.extend(stamps)
        reply.dirty = True
        return None if reply.detached else reply

    def take_frame(self) -> ActiveReply | None:
        """For the redraw timer: the reply if there is something new to draw."""
        reply = self.reply
        if reply is None or reply.detached or not reply.dirty:
            return None
        reply.dirty = False
        return reply

    def is_current(self, request_id: str) -> bool:
        return self.reply is not None and self.reply.request_id == request_id and not self.reply.detached

    def finish(self, request_id: str, text: str, metrics: ReplyMetrics) -> tuple[ActiveReply | None, StoreFn | None]:
        """The reply ended: (the reply if it was ours, the store call that saves it). A shown reply becomes a turn."""
        reply = self.reply
        if reply is None or reply.request_id != request_id:
            return None, None
        self.reply = None
        metrics_dict = dataclasses.asdict(metrics)
        ref = reply.conversation

        def save(store: ConversationStore) -> None:
            if ref.id is not None:
                store.add_message(ref.id, "assistant", text, metrics_dict)

        if not reply.detached:
            self.turns.append(Turn("assistant", text, reply.bubble, metrics_dict))
            if metrics.dropped_messages:
                self.overflow = "drop_oldest"  # keep fitting the conversation from now on
        return reply, save

    def fail(self, kind: str, request_id: str) -> Failure:
        """An engine error. A crash ends any reply (the engine is gone); other errors end only their own."""
        reply = self.reply
        ours = reply is not None and (request_id == reply.request_id or kind == "crash")
        if not ours:
            reply = None
        else:
            self.reply = None
        if kind == "crash":
            self.waiting = self.waiting or ours
        elif kind != "context_full":
            self.waiting = False
        keep = kind == "crash" and reply is not None and bool(reply.parts) and not reply.detached
        return Failure(reply, keep, self.waiting)

    def stop_waiting(self) -> None:
        self.waiting = False

    def regenerate(self) -> tuple[Turn | None, StoreFn | None] | None:
        """Drop the last reply to ask again: (the removed turn, the store call that deletes it), or None when
        there is nothing to regenerate (busy, or no turns)."""
        if self.busy or not self.turns:
            return None
        if self.turns[-1].role != "assistant":
            return None, None
        last = self.turns.pop()
        ref, position = self.conversation, len(self.turns)
        return last, (lambda store: store.delete_from(ref.id, position) if ref.id else 0)

    # ---- switching conversations
    def detach(self) -> bool:
        """Leave the reply in flight to finish off screen; True when there was one (the page stops the engine)."""
        self.waiting = False
        if self.reply is None:
            return False
        self.reply.detached = True
        return True

    def new(self) -> None:
        self.detach()
        self.conversation = ConversationRef()
        self.turns = []
        self.overflow = "error"

    def open(self, conversation: Conversation, messages: Sequence[Message]) -> list[Turn]:
        """Show a saved conversation: its turns (bubbles still to be drawn) without the system messages."""
        self.conversation = ConversationRef(conversation.id)
        self.overflow = "error"
        self.turns = [Turn(m.role, m.content, None, m.metrics) for m in messages if m.role != "system"]
        return self.turns

    def history(self) -> list[dict[str, Any] | None]:
        """The stored metrics of the conversation's replies, oldest first (the graph's bars)."""
        return [t.metrics for t in self.turns if t.role == "assistant"]
