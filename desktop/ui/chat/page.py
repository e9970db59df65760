"""Chat: talk to a model from the library while a live graph shows its speed.

The page is thin: it composes the conversation list, the transcript, the model bar, the composer, the side panels
and the speed card (:mod:`desktop.ui.chat.panels`), and wires them to three owners of state: the engine
(:class:`~desktop.workers.engine_worker.EngineWorker`, a child process), the conversation store
(:class:`~desktop.ui.chat.store.StoreQueue`, Jobs) and the Qt-free :class:`~desktop.chat.session.ChatSession`,
which decides what a reply, a regenerate or an engine error means and what gets saved. Streamed text is drawn by
a 10 Hz timer; nothing here waits on the engine, the disk or the GGUF file. Saved conversations (open, rename,
delete, export) are handled by :class:`~desktop.ui.chat.history.HistoryMixin`, picking and loading the model by
:class:`~desktop.ui.chat.model.ModelMixin`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QSplitter, QTabWidget, QVBoxLayout, QWidget

from desktop.chat.session import (
    ActiveReply,
    ChatSession,
    ConversationSettings,
    Turn,
    live_rate,
    metrics_line,
    server_model_path,
)
from desktop.chat.engine import LoadOptions, ReplyMetrics
from desktop.chat_model import system_prompt_for
from desktop.jobs import JobError
from desktop.ui.chat.conversations import ConversationList
from desktop.ui.chat.history import HistoryMixin
from desktop.ui.chat.model import ModelMixin
from desktop.ui.chat.offload import OffloadPanel
from desktop.ui.chat.panels import STYLE, Composer, ModelBar, SpeedCard, scrolled
from desktop.ui.chat.remote import RemoteBar
from desktop.ui.chat.serve import ServePanel
from desktop.ui.chat.settings import SettingsPanel
from desktop.ui.chat.store import StoreQueue
from desktop.ui.chat.transcript import NoticeBar, Transcript
from desktop.ui.page import Page
from desktop.workers import JobManager
from desktop.workers.engine_worker import EngineWorker

RENDER_MS = 100


class ChatPage(ModelMixin, HistoryMixin, Page):
    sig_reply_finished = Signal(str, object)
    """(text, :class:`ReplyMetrics`) after a reply ended and the page shows it."""
    sig_conversations_changed = Signal()
    """The conversation list was reloaded from the store."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None, *, db_path: Path | None = None) -> None:
        super().__init__("Chat", start=None, scroll=True, parent=parent)
        self._jobs = jobs
        self.setStyleSheet(STYLE)
        self.session = ChatSession()
        self.worker = EngineWorker(self)
        self.store = StoreQueue(jobs, db_path, self)
        self.store.on_error = self._on_store_error
        self.last_metrics: ReplyMetrics | None = None
        self._closed = False
        self._interrupted: Any = None
        self._build()
        self._local_worker = self.worker
        self._remote_worker: EngineWorker | None = None
        self._wire(self.worker)
        self._render_timer = QTimer(self)
        self._render_timer.setInterval(RENDER_MS)
        self._render_timer.timeout.connect(self._render)
        self.set_status("No model loaded.")
        self._update_controls()

    def _build(self) -> None:
        self.conversations = ConversationList()
        self.connect_history(self.conversations)
        self.model_bar = ModelBar()
        self.connect_model(self.model_bar)
        self.model_combo, self.load_button = self.model_bar.combo, self.model_bar.load_button
        self.load_progress = self.progress
        self.transcript = Transcript()
        self.notice = NoticeBar()
        self.speed = SpeedCard()
        self.stats, self.graph = self.speed.stats, self.speed.graph
        self.composer = Composer()
        self.composer.sig_send.connect(self.send_from_input)
        self.composer.sig_stop.connect(self.stop)
        self.composer.sig_regenerate.connect(self.regenerate)
        self.input = self.composer.input
        self.send_button, self.stop_button = self.composer.send_button, self.composer.stop_button
        self.regenerate_button = self.composer.regenerate_button

        chat_column = QWidget()
        chat_layout = QVBoxLayout(chat_column)
        chat_layout.setContentsMargins(0, 0, 0, 0)
        chat_layout.addWidget(self.transcript, 1)
        chat_layout.addWidget(self.notice)
        chat_layout.addWidget(self.composer)
        centre_split = QSplitter(Qt.Orientation.Vertical)
        centre_split.addWidget(chat_column)
        centre_split.addWidget(self.speed)
        centre_split.setStretchFactor(0, 3)
        centre_split.setStretchFactor(1, 1)
        centre_split.setSizes([480, 230])
        centre_split.setChildrenCollapsible(False)
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.addWidget(self.model_bar)
        self.remote_bar = RemoteBar(self._jobs)
        self.remote_bar.sig_connected.connect(self._on_remote_connected)
        self.remote_bar.models.currentIndexChanged.connect(self._update_controls)
        self.remote_bar.hide()
        centre_layout.addWidget(self.remote_bar)
        centre_layout.addWidget(centre_split, 1)

        self.offload = OffloadPanel()
        self.offload.sig_changed.connect(self._update_controls)
        self.settings = SettingsPanel()
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(scrolled(self.offload), "Model")
        self.tabs.setTabToolTip(0, "Context, template, threads, GPU layers and the memory they take")
        self.tabs.addTab(scrolled(self.settings), "Prompt")
        self.tabs.setTabToolTip(1, "The system prompt and the sampling settings")
        self.serve = ServePanel(self._jobs)
        self.serve.follow_on_graph(self.graph, lambda: self.reply is not None)
        self.tabs.addTab(scrolled(self.serve), "Serve")
        self.tabs.setTabToolTip(2, "Serve the loaded model as an OpenAI-compatible API")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.conversations)
        self.splitter.addWidget(centre)
        self.splitter.addWidget(self.tabs)
        for index, stretch in enumerate((0, 1, 0)):
            self.splitter.setStretchFactor(index, stretch)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([170, 600, 280])
        self.body.addWidget(self.splitter, 1)
        for keys, slot in {"Ctrl+N": self.new_conversation, "Ctrl+R": self.regenerate, "Esc": self.stop}.items():
            QShortcut(QKeySequence(keys), self, slot, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)

    def _wire(self, worker: EngineWorker) -> None:
        """Connect an engine worker; only the one in use (``self.worker``) reaches the page."""

        def only_current(slot):  # type: ignore[no-untyped-def]
            return lambda *args: slot(*args) if worker is self.worker else None

        for signal, slot in ((worker.sig_load_progress, self._on_load_progress), (worker.sig_loaded, self._on_loaded),
                             (worker.sig_load_cancelled, self._on_load_cancelled),
                             (worker.sig_prompt_started, self._on_prompt_started), (worker.sig_tokens, self._on_tokens),
                             (worker.sig_reply_done, self._on_reply_done), (worker.sig_error, self._on_error),
                             (worker.sig_restarted, self._on_restarted)):
            signal.connect(only_current(slot))

    # ---- the session's state, under the names the page has always had
    @property
    def turns(self) -> list[Turn]:
        return self.session.turns

    @property
    def reply(self) -> ActiveReply | None:
        return self.session.reply

    @property
    def conversation(self):  # type: ignore[no-untyped-def]
        return self.session.conversation

    # ================================================================== sending and replies
    @Slot()
    def send_from_input(self) -> None:
        text = self.input.toPlainText().strip()
        if text and self.send(text):
            self.input.clear()

    def send(self, text: str) -> bool:
        """Add the user's message, save it, and ask for a reply (loading the model first if needed)."""
        if not self.session.can_send(text):
            return False
        if self.load_options() is None:
            self.notice.show_notice("info", self.no_model_sentence())
            return False
        self.notice.clear()
        bubble = self.transcript.add("user", text)
        save = self.session.add_user(text, bubble, self.conversation_settings(), self.settings.system_text())
        self.store.call("Save message", save, self._show_conversations)
        self._start_reply()
        return True

    def conversation_settings(self) -> ConversationSettings:
        entry = self.current_entry()
        return ConversationSettings(
            model_path=(server_model_path(self.remote_bar.connected_url, self.remote_bar.model_name())
                        if self.is_remote() else str(entry.path) if entry else ""),
            sampling=self.settings.sampling().as_dict(),
            n_ctx=self.offload.context.value(),
            template=self.offload.template_choice(),
        )

    def engine_messages(self) -> list[dict[str, str]]:
        entry = self.current_entry()
        return self.session.engine_messages(system_prompt_for(entry.path if entry else "", self.settings.system_text()))

    def _start_reply(self) -> None:
        options = self.load_options()
        if options is None or not self.session.wants_reply():
            self.session.stop_waiting()
            return
        if not self.worker.is_ready_with(options):
            self.session.waiting = True
            if self.worker.state != "loading" or self.worker.last_load != options:
                self.load_model()
            self._update_controls()
            return
        bubble = self.transcript.add("assistant")
        bubble.set_footer("Reading the prompt…")
        started = time.perf_counter()
        self.serve.graph_request = ""  # the graph follows the window's reply now
        request_id = self.worker.chat(self.engine_messages(), self.settings.sampling(), on_overflow=self.session.overflow)
        self.session.begin_reply(request_id, bubble, started)
        self.graph.begin_reply(started)
        self.stats.clear()
        self._render_timer.start()
        self._update_controls()

    @Slot(str, int, int)
    def _on_prompt_started(self, request_id: str, prompt_tokens: int, dropped: int) -> None:
        if not self.session.is_current(request_id):
            return
        self.reply.bubble.set_footer(f"Reading the prompt ({prompt_tokens:,} tokens)…")  # type: ignore[union-attr]
        if dropped:
            self.notice.show_notice(
                "info", f"The {dropped} oldest messages were left out so the conversation fits the context."
            )

    @Slot(str, str, object)
    def _on_tokens(self, request_id: str, text: str, stamps: list) -> None:  # type: ignore[type-arg]
        if self.session.tokens(request_id, text, stamps) is not None:
            self.graph.add_tokens(stamps)

    @Slot()
    def _render(self) -> None:
        """The redraw timer: the streaming bubble and a live speed figure, at most 10 times a second."""
        reply = self.session.take_frame()
        if reply is None:
            return
        reply.bubble.set_text(reply.text)
        rate = live_rate(reply.stamps)
        if rate is not None:
            self.stats.set_value("Generation", f"{rate:.1f} tok/s", "live, over the last tokens")
            reply.bubble.set_footer(f"Writing… {len(reply.stamps)} tokens")
        if reply.stamps and self.stats.value("First token") == "–":
            self.stats.set_value("First token", f"{reply.stamps[0] - reply.started:.2f} s", "live, measured here")

    @Slot(str, str, object)
    def _on_reply_done(self, request_id: str, text: str, metrics: ReplyMetrics) -> None:
        reply, save = self.session.finish(request_id, text, metrics)
        if reply is None or save is None:
            return
        self._render_timer.stop()
        self.store.call("Save reply", save)
        if not reply.detached:
            reply.bubble.set_text(text)
            reply.bubble.set_footer(metrics_line(metrics))
            self.last_metrics = metrics
            self.stats.show_metrics(metrics)
            self.graph.end_reply(metrics)
            self.sig_reply_finished.emit(text, metrics)
        self._update_controls()

    @Slot()
    def stop(self) -> None:
        if self.reply is not None or self.worker.state == "loading":
            self.worker.stop()

    @Slot()
    def regenerate(self) -> None:
        plan = self.session.regenerate()
        if plan is None:
            return
        self.notice.clear()
        removed, delete = plan
        if removed is not None and delete is not None:
            self.transcript.remove(removed.bubble)
            self.store.call("Remove reply", delete)
        self._start_reply()

    # ================================================================== failures
    @Slot(object, str, str)
    def _on_error(self, error: JobError, request: str, request_id: str) -> None:
        failure = self.session.fail(error.kind, request_id)
        if failure.reply is not None:
            self._render_timer.stop()
            self.graph.end_reply(None)
            if failure.keep_partial:
                failure.reply.bubble.set_text(failure.reply.text)
                failure.reply.bubble.set_footer("Interrupted: the engine stopped while writing this reply.")
                self._interrupted = failure.reply.bubble
            else:
                self.transcript.remove(failure.reply.bubble)
        self.set_running(False)
        if error.kind == "crash":
            self.set_status("The chat engine stopped.")
            if self.worker.on_gpu_engine:  # the GPU build may be what crashed: pip's CPU build is the way out
                self.notice.show_notice("crash", error.message, "Retry on the CPU", self.retry_on_cpu)
            else:
                self.notice.show_notice("crash", error.message, "Retry in safe mode", self.retry_safe_mode)
        elif error.kind == "context_full":
            self.notice.show_notice("context_full", error.sentence(), "Drop oldest turns", self.drop_oldest_and_retry)
        else:
            if request == "load":
                self.set_status("The model did not load.")
            self.notice.show_notice("error", error.sentence())
        self._update_controls()

    @Slot(str, bool)
    def _on_restarted(self, _request_id: str, reloading: bool) -> None:
        """The engine did not answer Stop and was replaced (its "unresponsive" notice is already up); the model
        comes back on its own, so the page shows the reload instead of looking idle with nothing loaded."""
        if reloading and self.worker.last_load is not None:
            self.set_running(True)
            self.set_status(f"Restarted the chat engine; loading {Path(self.worker.last_load.path).name} again…")
        else:
            self.set_status("Restarted the chat engine. Load a model to go on.")
        self._update_controls()

    @Slot()
    def retry_safe_mode(self) -> None:
        """After a crash: a fresh engine without CPU repacking and with half the GPU layers, then the reply again."""
        self._safe_mode = True
        self._restart("in safe mode", self.worker.retry_safe_mode)

    @Slot()
    def retry_on_cpu(self) -> None:
        """After a crash on a GPU engine: a fresh engine on the CPU build with no GPU layers, then the reply again."""
        self._restart("on the CPU", self.worker.retry_on_cpu)

    def _restart(self, how: str, retry: Callable[[], LoadOptions]) -> None:
        if self._interrupted is not None:
            self.transcript.remove(self._interrupted)
            self._interrupted = None
        self.notice.clear()
        if self.worker.last_load is None:
            self.load_model()
            return
        options = retry()
        self.offload.set_n_gpu_layers(options.n_gpu_layers)
        self.session.waiting = self.session.wants_reply()
        self.set_running(True)
        self.set_status(f"Restarting the chat engine {how}…")
        self._update_controls()

    @Slot()
    def drop_oldest_and_retry(self) -> None:
        self.session.overflow = "drop_oldest"
        self.notice.clear()
        self._start_reply()

    @Slot(object)
    def _on_store_error(self, error: JobError) -> None:
        self.notice.show_notice("error", f"The conversation could not be saved: {error.sentence()}")

    # ================================================================== state of the controls
    @Slot()
    def _update_controls(self) -> None:
        busy = self.session.busy
        loading = self.worker.state == "loading"
        has_model = self.load_options() is not None
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
        self.serve.shutdown()
        if self._remote_worker is not None:
            self._remote_worker.shutdown(timeout_s=1.0)
        self._local_worker.shutdown(timeout_s=3.0)
        self.store.close()
