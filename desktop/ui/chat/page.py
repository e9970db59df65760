"""Chat: talk to a model from the library while a live graph shows its speed.

The page composes the conversation list, the transcript, the model/offload and sampling panels and the speed
graph, and wires them to the engine (:class:`~desktop.workers.engine_worker.EngineWorker`, a child process) and
the conversation store (:class:`~desktop.ui.chat.store.StoreQueue`, Jobs). Streamed text is kept in a buffer and
drawn by a 10 Hz timer; nothing here waits on the engine, the disk or the GGUF file.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.memory import offload
from desktop.chat.templates import FALLBACK_TEMPLATES
from desktop.chat.conversations import Conversation, ConversationStore, Message
from desktop.chat_model import CHAT_SOURCE, system_prompt_for
from desktop.chat.engine import LoadOptions, ReplyMetrics
from desktop.jobs import JobError
from desktop.library import ModelEntry
from desktop.ui.chat.conversations import ConversationList
from desktop.ui.chat.graph import SpeedGraph, SpeedStats, token_rates
from desktop.ui.chat.offload import OffloadPanel
from desktop.ui.chat.settings import SettingsPanel
from desktop.ui.chat.store import ConversationRef, StoreQueue
from desktop.ui.chat.transcript import ChatInput, MessageBubble, NoticeBar, Transcript
from desktop.workers import Job, JobManager
from desktop.workers.engine_worker import EngineWorker

RENDER_MS = 100
TITLE_CHARS = 48

STYLE = """
QFrame#userBubble { background: palette(alternate-base); border: 1px solid palette(midlight); border-radius: 10px; }
QFrame#assistantBubble { background: palette(base); border: 1px solid palette(midlight); border-radius: 10px; }
QFrame#userBubble QTextBrowser, QFrame#assistantBubble > QTextBrowser { background: transparent; }
QFrame#codeBlock { background: palette(window); border: 1px solid palette(midlight); border-radius: 6px; }
QFrame#codeBlock QTextBrowser { background: transparent; }
QLabel#bubbleRole { font-weight: 600; }
QLabel#statValue { font-size: 15px; font-weight: 600; }
QPushButton#smallButton { padding: 1px 8px; }
QWidget#transcriptContent { background: palette(window); }
QFrame#noticeBar { border-radius: 8px; }
QFrame#noticeBar[severity="error"] { background: rgba(220, 38, 38, 0.10); border: 1px solid rgba(220, 38, 38, 0.45); }
QFrame#noticeBar[severity="info"] { background: rgba(37, 99, 235, 0.08); border: 1px solid rgba(37, 99, 235, 0.40); }
QLabel#verdict { font-weight: 600; }
QLabel#verdict[fits="yes"] { color: #15803d; }
QLabel#verdict[fits="no"] { color: #dc2626; }
"""


@dataclass
class Turn:
    role: str
    content: str
    bubble: MessageBubble
    metrics: dict[str, Any] | None = None


@dataclass
class ActiveReply:
    request_id: str
    conversation: ConversationRef
    position: int
    bubble: MessageBubble
    started: float
    parts: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    dirty: bool = False
    detached: bool = False  # the user moved to another conversation: save it, but leave the screen alone


def _read_model(path: str, progress, cancelled):  # type: ignore[no-untyped-def]
    """The planner's view of a GGUF (read off the GUI thread), and whether the user allows CPU repacking."""
    from desktop.gguf.reader import read_gguf
    from desktop.settings import load_settings

    return path, offload.model_shape(read_gguf(Path(path))), load_settings().cpu_repack


def _metrics_line(m: ReplyMetrics) -> str:
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


class ChatPage(QWidget):
    sig_reply_finished = Signal(str, object)
    """(text, :class:`ReplyMetrics`) after a reply ended and the page shows it."""
    sig_conversations_changed = Signal()
    """The conversation list was reloaded from the store."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None, *, db_path: Path | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self.setStyleSheet(STYLE)
        self.worker = EngineWorker(self)
        self.store = StoreQueue(jobs, db_path, self)
        self.store.on_error = self._on_store_error
        self.entries: list[ModelEntry] = []
        self.turns: list[Turn] = []
        self.conversation = ConversationRef()
        self.reply: ActiveReply | None = None
        self.loaded_metadata: dict[str, Any] = {}
        self.last_metrics: ReplyMetrics | None = None
        self._shapes: dict[str, offload.ModelShape] = {}
        self._cpu_repack = False
        self._safe_mode = False
        self._pending_reply = False
        self._overflow = "error"
        self._shown_once = False
        self._closed = False
        self._interrupted: MessageBubble | None = None

        # ---- left: conversations
        self.conversations = ConversationList()
        self.conversations.sig_new.connect(self.new_conversation)
        self.conversations.sig_open.connect(self.open_conversation)
        self.conversations.sig_rename.connect(self.rename_conversation)
        self.conversations.sig_delete.connect(self._confirm_delete)
        self.conversations.sig_export.connect(self._choose_export)

        # ---- centre: model bar, transcript, notice, graph, input
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(18)
        self.model_combo.setToolTip("The model to chat with (from the library)")
        self.model_combo.currentIndexChanged.connect(self._on_model_selected)
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the model with the settings on the right (sending a message loads it too)")
        self.load_button.clicked.connect(self.load_model)
        self.load_progress = QProgressBar()
        self.load_progress.setRange(0, 1000)
        self.load_progress.setTextVisible(False)
        self.load_progress.setFixedSize(120, 8)
        self.load_progress.hide()
        self.status = QLabel("No model loaded.")
        self.status.setObjectName("note")
        self.status.setWordWrap(True)
        model_row = QHBoxLayout()
        model_row.addWidget(QLabel("Model"))
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.load_button)
        model_row.addWidget(self.load_progress)
        model_bar = QVBoxLayout()
        model_bar.setSpacing(2)
        model_bar.addLayout(model_row)
        model_bar.addWidget(self.status)

        self.transcript = Transcript()
        self.notice = NoticeBar()

        self.stats = SpeedStats()
        self.graph = SpeedGraph()
        graph_box = QFrame()
        graph_box.setObjectName("card")
        graph_layout = QVBoxLayout(graph_box)
        graph_layout.setContentsMargins(10, 8, 10, 6)
        graph_layout.addWidget(self.stats)
        graph_layout.addWidget(self.graph, 1)

        self.input = ChatInput()
        self.input.sig_submit.connect(self.send_from_input)
        self.input.sig_escape.connect(self.stop)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setToolTip("Send (Enter)")
        self.send_button.clicked.connect(self.send_from_input)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the reply (Esc)")
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Ask again for the last reply (Ctrl+R)")
        self.regenerate_button.clicked.connect(self.regenerate)
        buttons = QVBoxLayout()
        buttons.setSpacing(4)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.regenerate_button)
        input_row = QHBoxLayout()
        input_row.addWidget(self.input, 1)
        input_row.addLayout(buttons)

        chat_column = QWidget()
        chat_layout = QVBoxLayout(chat_column)
        chat_layout.setContentsMargins(0, 0, 0, 0)
        chat_layout.addWidget(self.transcript, 1)
        chat_layout.addWidget(self.notice)
        chat_layout.addLayout(input_row)
        centre_split = QSplitter(Qt.Orientation.Vertical)
        centre_split.addWidget(chat_column)
        centre_split.addWidget(graph_box)
        centre_split.setStretchFactor(0, 3)
        centre_split.setStretchFactor(1, 1)
        centre_split.setSizes([480, 230])
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.addLayout(model_bar)
        centre_layout.addWidget(centre_split, 1)

        # ---- right: model & memory, settings
        self.offload = OffloadPanel()
        self.offload.sig_changed.connect(self._update_controls)
        self.settings = SettingsPanel()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(_scrolled(self.offload), "Model && memory")
        self.tabs.addTab(_scrolled(self.settings), "Prompt && sampling")
        self.tabs.setMinimumWidth(280)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.conversations)
        splitter.addWidget(centre)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 0)
        splitter.setSizes([190, 560, 330])
        title = QLabel("Chat")
        title.setObjectName("pageTitle")
        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.setContentsMargins(20, 16, 20, 12)
        content_layout.addWidget(title)
        content_layout.addWidget(splitter, 1)
        # in a window narrower than the page's minimum, scroll rather than force the window wider
        page_scroll = QScrollArea()
        page_scroll.setWidgetResizable(True)
        page_scroll.setFrameShape(QFrame.Shape.NoFrame)
        page_scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(page_scroll)

        shortcuts = {
            "Ctrl+N": self.new_conversation,
            "Ctrl+R": self.regenerate,
            "Esc": self.stop,
        }
        for keys, slot in shortcuts.items():
            QShortcut(QKeySequence(keys), self, slot, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)

        self.worker.sig_load_progress.connect(self._on_load_progress)
        self.worker.sig_loaded.connect(self._on_loaded)
        self.worker.sig_load_cancelled.connect(self._on_load_cancelled)
        self.worker.sig_prompt_started.connect(self._on_prompt_started)
        self.worker.sig_tokens.connect(self._on_tokens)
        self.worker.sig_reply_done.connect(self._on_reply_done)
        self.worker.sig_error.connect(self._on_error)
        self._render_timer = QTimer(self)
        self._render_timer.setInterval(RENDER_MS)
        self._render_timer.timeout.connect(self._render)
        self._update_controls()

    # ================================================================== inputs from the window
    @Slot(list)
    def set_models(self, entries: list[ModelEntry]) -> None:
        """The library changed: refill the picker, keeping the choice; preselect the chat model on first launch."""
        current = self.current_entry()
        self.entries = list(entries)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in self.entries:
            self.model_combo.addItem(f"{entry.name} · {entry.quant_type}", str(entry.path))
            self.model_combo.setItemData(self.model_combo.count() - 1, str(entry.path), Qt.ItemDataRole.ToolTipRole)
        keep = next((i for i, e in enumerate(self.entries) if current and e.path == current.path), -1)
        if keep < 0:
            keep = next((i for i, e in enumerate(self.entries) if e.source == CHAT_SOURCE), 0 if self.entries else -1)
        self.model_combo.setCurrentIndex(keep)
        self.model_combo.blockSignals(False)
        if self.current_entry() != current or current is None:
            self._on_model_selected()

    @Slot(object)
    def set_hardware_report(self, report: Any) -> None:
        """Budgets for the planner; GPUs this llama.cpp cannot offload to are left out."""
        llama = getattr(report, "llama", None)
        usable = [g for g in report.gpus if getattr(llama, "supports_gpu_offload", False) or g.unified_memory]
        gpus, host = offload.budgets_from_hardware(dataclasses.replace(report, gpus=usable))
        self.offload.set_budgets(gpus, host)

    def current_entry(self) -> ModelEntry | None:
        index = self.model_combo.currentIndex()
        return self.entries[index] if 0 <= index < len(self.entries) else None

    @Slot()
    def _on_model_selected(self) -> None:
        entry = self.current_entry()
        self._safe_mode = False
        if entry is None:
            self.offload.set_model(None)
            self._update_controls()
            return
        key = str(entry.path)
        self.offload.set_model(self._shapes.get(key), entry.context_length)
        if key not in self._shapes:
            job = Job(f"Read {entry.name}", lambda progress, cancelled: _read_model(key, progress, cancelled), visible=False)
            job.sig_result.connect(self._on_model_read)
            job.sig_error.connect(lambda error: self.status.setText(error.sentence()))
            self._jobs.start(job)
        self._update_controls()

    @Slot(object)
    def _on_model_read(self, result: tuple[str, offload.ModelShape, bool]) -> None:
        path, shape, cpu_repack = result
        self._shapes[path] = shape
        self._cpu_repack = cpu_repack
        entry = self.current_entry()
        if entry is not None and str(entry.path) == path:
            self.offload.set_model(shape, entry.context_length)

    # ================================================================== loading
    def load_options(self) -> LoadOptions | None:
        entry = self.current_entry()
        if entry is None:
            return None
        return LoadOptions(
            path=str(entry.path),
            n_ctx=self.offload.context.value(),
            n_gpu_layers=self.offload.n_gpu_layers(),
            n_threads=self.offload.threads.value() or None,
            cpu_repack=self._cpu_repack and not self._safe_mode,
            template=self.offload.template_choice(),
        )

    @Slot()
    def load_model(self) -> bool:
        options = self.load_options()
        if options is None:
            self.notice.show_notice("info", "Pick a model first: add one on the Models page.")
            return False
        if self.reply is not None:
            self.worker.stop()
        self.notice.clear()
        self.offload.clear_actual()
        self.loaded_metadata = {}
        self.load_progress.setValue(0)
        self.load_progress.show()
        self.status.setText(f"Loading {Path(options.path).name}…")
        self.worker.load(options)
        self._update_controls()
        return True

    @Slot(float, str)
    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.load_progress.setValue(int(fraction * 1000))
        self.status.setText(f"Loading the model… {fraction * 100:.0f}%")

    @Slot(object, object)
    def _on_loaded(self, metadata: dict, memory: dict) -> None:  # type: ignore[type-arg]
        self.loaded_metadata = metadata
        self.load_progress.hide()
        where = f"{metadata.get('n_gpu_layers', 0)} layers on the GPU" if metadata.get("n_gpu_layers") else "on the CPU"
        safe = ", safe mode" if self._safe_mode else ""
        self.status.setText(
            f"Loaded {metadata.get('name', 'the model')} in {metadata.get('load_s', 0):.1f} s: "
            f"{int(metadata.get('n_ctx', 0)):,}-token context, {where}{safe}."
        )
        name = str(metadata.get("template", ""))
        label = "the model's own template" if metadata.get("template_from_model") else FALLBACK_TEMPLATES[name].label
        how = "" if metadata.get("template_from_model") or self.offload.template_choice() else " (chosen by architecture: the GGUF has none)"
        self.offload.set_template_note(f"In use: {label}{how}.")
        self.offload.show_actual(memory, int(metadata.get("n_ctx", 0)), int(metadata.get("n_gpu_layers", 0)))
        self._update_controls()
        if self._pending_reply:
            self._pending_reply = False
            self._start_reply()

    @Slot()
    def _on_load_cancelled(self) -> None:
        self.load_progress.hide()
        self._pending_reply = False
        self.status.setText("Loading was cancelled.")
        self._update_controls()

    # ================================================================== sending and replies
    @Slot()
    def send_from_input(self) -> None:
        text = self.input.toPlainText().strip()
        if text and self.send(text):
            self.input.clear()

    def send(self, text: str) -> bool:
        """Add the user's message, save it, and ask for a reply (loading the model first if needed)."""
        if self.reply is not None or self._pending_reply or not text.strip():
            return False
        if self.current_entry() is None:
            self.notice.show_notice("info", "Pick a model first: add one on the Models page.")
            return False
        self.notice.clear()
        self._add_turn("user", text)
        ref, entry = self.conversation, self.current_entry()
        title = " ".join(text.split())[:TITLE_CHARS]
        system, settings = self.settings.system_text(), self._conversation_settings()
        model_path = str(entry.path) if entry else ""

        def save(store: ConversationStore) -> list[Conversation]:
            if ref.id is None:
                ref.id = store.create(title, model_path=model_path, system_prompt=system, settings=settings).id
            else:
                store.update(ref.id, model_path=model_path, system_prompt=system, settings=settings)
            store.add_message(ref.id, "user", text)
            return store.list()

        self.store.call("Save message", save, self._show_conversations)
        self._start_reply()
        return True

    def _add_turn(self, role: str, text: str) -> Turn:
        turn = Turn(role, text, self.transcript.add(role, text))
        self.turns.append(turn)
        return turn

    def _conversation_settings(self) -> dict[str, Any]:
        return {
            "sampling": self.settings.sampling().as_dict(),
            "n_ctx": self.offload.context.value(),
            "template": self.offload.template_choice(),
        }

    def engine_messages(self) -> list[dict[str, str]]:
        entry = self.current_entry()
        system = system_prompt_for(entry.path if entry else "", self.settings.system_text())
        out = [{"role": "system", "content": system}] if system else []
        return out + [{"role": t.role, "content": t.content} for t in self.turns]

    def _start_reply(self) -> None:
        options = self.load_options()
        if options is None or not self.turns or self.turns[-1].role != "user":
            return
        if not self.worker.is_ready_with(options):
            self._pending_reply = True
            if self.worker.state != "loading" or self.worker.last_load != options:
                self.load_model()
            self._update_controls()
            return
        bubble = self.transcript.add("assistant")
        bubble.set_footer("Reading the prompt…")
        started = time.perf_counter()
        request_id = self.worker.chat(self.engine_messages(), self.settings.sampling(), on_overflow=self._overflow)
        self.reply = ActiveReply(request_id, self.conversation, len(self.turns), bubble, started)
        self.graph.begin_reply(started)
        self.stats.clear()
        self._render_timer.start()
        self._update_controls()

    @Slot(str, int, int)
    def _on_prompt_started(self, request_id: str, prompt_tokens: int, dropped: int) -> None:
        reply = self.reply
        if reply is None or reply.request_id != request_id or reply.detached:
            return
        reply.bubble.set_footer(f"Reading the prompt ({prompt_tokens:,} tokens)…")
        if dropped:
            self.notice.show_notice(
                "info", f"The {dropped} oldest messages were left out so the conversation fits the context."
            )

    @Slot(str, str, object)
    def _on_tokens(self, request_id: str, text: str, stamps: list) -> None:  # type: ignore[type-arg]
        reply = self.reply
        if reply is None or reply.request_id != request_id:
            return
        reply.parts.append(text)
        reply.stamps.extend(stamps)
        reply.dirty = True
        if not reply.detached:
            self.graph.add_tokens(stamps)

    @Slot()
    def _render(self) -> None:
        """The redraw timer: the streaming bubble and a live speed figure, at most 10 times a second."""
        reply = self.reply
        if reply is None or reply.detached or not reply.dirty:
            return
        reply.dirty = False
        reply.bubble.set_text("".join(reply.parts))
        _x, _raw, smooth = token_rates([s - reply.started for s in reply.stamps[-32:]])
        if smooth.size:
            self.stats.set_value("Generation", f"{smooth[-1]:.1f} tok/s", "live, over the last tokens")
            reply.bubble.set_footer(f"Writing… {len(reply.stamps)} tokens")
        if len(reply.stamps) == 1 or (reply.stamps and self.stats.value("First token") == "–"):
            self.stats.set_value("First token", f"{reply.stamps[0] - reply.started:.2f} s", "live, measured here")

    @Slot(str, str, object)
    def _on_reply_done(self, request_id: str, text: str, metrics: ReplyMetrics) -> None:
        reply = self.reply
        if reply is None or reply.request_id != request_id:
            return
        self.reply = None
        self._render_timer.stop()
        metrics_dict = dataclasses.asdict(metrics)
        ref = reply.conversation

        def save(store: ConversationStore) -> None:
            if ref.id is not None:
                store.add_message(ref.id, "assistant", text, metrics_dict)

        self.store.call("Save reply", save)
        if not reply.detached:
            reply.bubble.set_text(text)
            reply.bubble.set_footer(_metrics_line(metrics))
            self.turns.append(Turn("assistant", text, reply.bubble, metrics_dict))
            self.last_metrics = metrics
            self.stats.show_metrics(metrics)
            self.graph.end_reply(metrics)
            if metrics.dropped_messages:
                self._overflow = "drop_oldest"  # keep fitting the conversation from now on
            self.sig_reply_finished.emit(text, metrics)
        self._update_controls()

    @Slot()
    def stop(self) -> None:
        if self.reply is not None or self.worker.state == "loading":
            self.worker.stop()

    @Slot()
    def regenerate(self) -> None:
        if self.reply is not None or self._pending_reply or not self.turns:
            return
        self.notice.clear()
        if self.turns[-1].role == "assistant":
            last = self.turns.pop()
            self.transcript.remove(last.bubble)
            ref, position = self.conversation, len(self.turns)
            self.store.call("Remove reply", lambda store: store.delete_from(ref.id, position) if ref.id else 0)
        self._start_reply()

    # ================================================================== failures
    @Slot(object, str, str)
    def _on_error(self, error: JobError, request: str, request_id: str) -> None:
        reply = self.reply
        ours = reply is not None and (request_id == reply.request_id or error.kind == "crash")
        if ours and reply is not None:
            self.reply = None
            self._render_timer.stop()
            self.graph.end_reply(None)
            if error.kind == "crash" and reply.parts and not reply.detached:
                reply.bubble.set_text("".join(reply.parts))
                reply.bubble.set_footer("Interrupted: the engine stopped while writing this reply.")
                self._interrupted = reply.bubble
            else:
                self.transcript.remove(reply.bubble)
        self.load_progress.hide()
        if error.kind == "crash":
            self._pending_reply = self._pending_reply or ours
            self.status.setText("The chat engine stopped.")
            self.notice.show_notice("crash", error.message, "Retry in safe mode", self.retry_safe_mode)
        elif error.kind == "context_full":
            self.notice.show_notice("context_full", error.sentence(), "Drop oldest turns", self.drop_oldest_and_retry)
        else:
            self._pending_reply = False
            if request == "load":
                self.status.setText("The model did not load.")
            self.notice.show_notice("error", error.sentence())
        self._update_controls()

    @Slot()
    def retry_safe_mode(self) -> None:
        """After a crash: a fresh engine without CPU repacking and with half the GPU layers, then the reply again."""
        if self._interrupted is not None:
            self.transcript.remove(self._interrupted)
            self._interrupted = None
        self.notice.clear()
        self._safe_mode = True
        if self.worker.last_load is None:
            self.load_model()
            return
        options = self.worker.retry_safe_mode()
        self.offload.set_n_gpu_layers(options.n_gpu_layers)
        self._pending_reply = bool(self.turns) and self.turns[-1].role == "user"
        self.load_progress.setValue(0)
        self.load_progress.show()
        self.status.setText("Restarting the chat engine in safe mode…")
        self._update_controls()

    @Slot()
    def drop_oldest_and_retry(self) -> None:
        self._overflow = "drop_oldest"
        self.notice.clear()
        self._start_reply()

    @Slot(object)
    def _on_store_error(self, error: JobError) -> None:
        self.notice.show_notice("error", f"The conversation could not be saved: {error.sentence()}")

    # ================================================================== conversations
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            self.refresh_conversations()

    def refresh_conversations(self) -> None:
        self.store.call("Read conversations", lambda store: store.list(), self._show_conversations)

    @Slot(object)
    def _show_conversations(self, conversations: list[Conversation]) -> None:
        self.conversations.set_conversations(conversations, self.conversation.id)
        self.sig_conversations_changed.emit()

    def _detach_reply(self) -> None:
        if self.reply is not None:
            self.reply.detached = True
            self.worker.stop()
        self._pending_reply = False

    @Slot()
    def new_conversation(self) -> None:
        self._detach_reply()
        self.conversation = ConversationRef()
        self._show_turns([])
        self.conversations.list.setCurrentRow(-1)
        self.input.setFocus()

    @Slot(int)
    def open_conversation(self, conversation_id: int) -> None:
        if conversation_id == self.conversation.id:
            return
        self._detach_reply()

        def read(store: ConversationStore) -> tuple[Conversation, list[Message]]:
            return store.get(conversation_id), store.messages(conversation_id)

        self.store.call("Open conversation", read, self._show_conversation)

    @Slot(object)
    def _show_conversation(self, result: tuple[Conversation, list[Message]]) -> None:
        conversation, messages = result
        self.conversation = ConversationRef(conversation.id)
        self.settings.system_prompt.setPlainText(conversation.system_prompt)
        if conversation.settings.get("sampling"):
            self.settings.set_sampling(conversation.settings["sampling"])
        self._show_turns(messages)
        self.refresh_conversations()

    def _show_turns(self, messages: list[Message]) -> None:
        self.transcript.clear()
        self.turns = []
        self._overflow = "error"
        self.notice.clear()
        self.stats.clear()
        for message in messages:
            if message.role == "system":
                continue
            bubble = self.transcript.add(message.role, message.content)
            if message.metrics:
                bubble.set_footer(_metrics_line(ReplyMetrics.from_dict(message.metrics)))
            self.turns.append(Turn(message.role, message.content, bubble, message.metrics))
        self.graph.set_history([t.metrics for t in self.turns if t.role == "assistant"])
        self._update_controls()

    @Slot(int, str)
    def rename_conversation(self, conversation_id: int, title: str) -> None:
        def rename(store: ConversationStore) -> list[Conversation]:
            store.update(conversation_id, title=title)
            return store.list()

        self.store.call("Rename conversation", rename, self._show_conversations)

    @Slot(int)
    def _confirm_delete(self, conversation_id: int) -> None:
        answer = QMessageBox.question(self, "Delete conversation", "Delete this conversation? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        if conversation_id == self.conversation.id:
            self.new_conversation()

        def delete(store: ConversationStore) -> list[Conversation]:
            store.delete(conversation_id)
            return store.list()

        self.store.call("Delete conversation", delete, self._show_conversations)

    @Slot(int)
    def _choose_export(self, conversation_id: int) -> None:
        name = next((t for i, t in zip(self.conversations.ids(), self.conversations.titles()) if i == conversation_id), "")
        suggested = "".join(c if c.isalnum() or c in " -_" else "_" for c in name).strip() or "conversation"
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", str(Path.home() / f"{suggested}.md"),
                                              "Markdown (*.md)")
        if path:
            self.export_conversation(conversation_id, Path(path))

    def export_conversation(self, conversation_id: int, path: Path) -> Job:
        def export(store: ConversationStore) -> Path:
            return store.export_markdown_file(conversation_id, path)

        return self.store.call("Export conversation", export, lambda p: self.status.setText(f"Exported to {p}."))

    # ================================================================== state of the controls
    @Slot()
    def _update_controls(self) -> None:
        busy = self.reply is not None or self._pending_reply
        loading = self.worker.state == "loading"
        has_model = self.current_entry() is not None
        self.send_button.setEnabled(has_model and not busy)
        self.stop_button.setEnabled(busy or loading)
        self.regenerate_button.setEnabled(not busy and bool(self.turns))
        options = self.load_options()
        ready = options is not None and self.worker.is_ready_with(options)
        self.load_button.setEnabled(has_model and not loading)
        self.load_button.setText("Loaded" if ready else ("Reload" if self.worker.last_load else "Load"))
        if ready:
            self.load_button.setEnabled(False)

    # ================================================================== shutdown
    def shutdown(self) -> None:
        """Stop the engine process and write what is still queued; called by the window before it closes."""
        if self._closed:
            return
        self._closed = True
        self._render_timer.stop()
        self.worker.shutdown(timeout_s=3.0)
        self.store.close()


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(12, 10, 12, 10)
    layout.addWidget(widget)
    area.setWidget(holder)
    return area
