"""The Chat page's "Serve" tab: the loaded model as an OpenAI-compatible API (:class:`desktop.chat.server.ChatServer`).

One copy of the model: the server submits its requests to the page's engine through the worker's
:class:`~desktop.chat.turns.EngineTurns`, so they take turns with the window's own chat. Each API request shows on
the page's live graph (the panel's signals) and as a line in the request log. Bound to 127.0.0.1 unless the user
chooses other computers too, which needs an API key: made once, kept in the keyring, shown once. The keyring and
closing the server (it waits for requests in flight) run as Jobs, off the GUI thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.chat import api_keys
from desktop.chat.engine import ReplyMetrics
from desktop.chat.server import DEFAULT_HOST, DEFAULT_PORT, ChatServer, ServeEvent, log_line
from desktop.jobs import JobError
from desktop.ui.chat.graph import SpeedGraph
from desktop.workers import Job, JobManager

FLUSH_MS = 100
LOG_LINES = 500
ALL_INTERFACES = "0.0.0.0"


class _Relay(QObject):
    event = Signal(object)


class ServePanel(QWidget):
    sig_request_started = Signal(str, float)
    """(request_id, perf_counter when it started): an API request is being answered."""
    sig_tokens = Signal(str, object)
    """(request_id, arrival stamps): tokens an API request streamed, in batches."""
    sig_request_done = Signal(str, object)
    """(request_id, :class:`ReplyMetrics` or None when it failed)."""
    sig_serving = Signal(bool)

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self.server: ChatServer | None = None
        self._turns: Any = None
        self._model_name = ""
        self._lock = threading.Lock()
        self._stamps: dict[str, list[float]] = {}
        self._started: set[str] = set()
        self._relay = _Relay()
        self._relay.event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        self._flush = QTimer(self)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self._flush_tokens)

        self.switch = QCheckBox("Serve the loaded model")
        self.switch.setToolTip("An OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models) for "
                               "editors, scripts and agents; requests and this window take turns on the model")
        self.switch.toggled.connect(self._on_switch)
        self.where = QComboBox()
        self.where.addItem("This computer only", DEFAULT_HOST)
        self.where.addItem("Other computers too (API key)", ALL_INTERFACES)
        self.where.setToolTip("Other computers can reach the model only with the API key shown when it is made")
        self.port = QSpinBox()
        self.port.setRange(1024, 65535)
        self.port.setValue(DEFAULT_PORT)
        self.url = QLineEdit()
        self.url.setReadOnly(True)
        self.url.setPlaceholderText("Not serving")
        self.key = QLineEdit()
        self.key.setReadOnly(True)
        self.key_note = QLabel()
        self.key_note.setObjectName("note")
        self.key_note.setWordWrap(True)
        copy = QPushButton("Copy")
        copy.setObjectName("smallButton")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.key.text()))
        self.new_key_button = QPushButton("New key")
        self.new_key_button.setObjectName("smallButton")
        self.new_key_button.setToolTip("Make a new API key (the old one stops working) and show it once")
        self.new_key_button.clicked.connect(self.new_key)
        key_row = QHBoxLayout()
        key_row.addWidget(self.key, 1)
        key_row.addWidget(copy)
        key_row.addWidget(self.new_key_button)
        self.key_widget = QWidget()
        key_layout = QVBoxLayout(self.key_widget)
        key_layout.setContentsMargins(0, 0, 0, 0)
        key_layout.addLayout(key_row)
        key_layout.addWidget(self.key_note)
        self.key_widget.hide()
        self.note = QLabel("Load a model first; the API serves the model loaded here.")
        self.note.setObjectName("note")
        self.note.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setPlaceholderText("Each API request gets a line here.")

        form = QFormLayout()
        form.addRow("Listen on", self.where)
        form.addRow("Port", self.port)
        form.addRow("Address", self.url)
        title = QLabel("Request log")
        title.setObjectName("cardTitle")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.switch)
        layout.addLayout(form)
        layout.addWidget(self.key_widget)
        layout.addWidget(self.note)
        layout.addWidget(title)
        layout.addWidget(self.log, 1)
        self.set_model(None, "")

    # ---- from the page
    def set_model(self, turns: Any, model_name: str) -> None:
        """The model the page has loaded (``turns`` None: none, or a remote one, which is not served again)."""
        self._turns, self._model_name = turns, model_name
        if self.server is not None and turns is not None:  # another model loaded while serving: it is served now
            self.server.model_name = model_name
            self.note.setText(f"Serving {model_name} at {self.server.url}/v1 (OpenAI-compatible).")
        self.switch.setEnabled(turns is not None or self.server is not None)
        if turns is None and self.server is None:
            self.note.setText("Load a model first; the API serves the model loaded here.")

    def follow_on_graph(self, graph: SpeedGraph, window_replying: Callable[[], bool]) -> None:
        """Draw each API request on the page's live graph while the window's own reply does not have it; one
        answered while the window's reply has the curve still gets its bar."""
        self.graph_request = ""

        def started(request_id: str, at: float) -> None:
            if not window_replying():
                self.graph_request = request_id
                graph.begin_reply(at)

        def tokens(request_id: str, stamps: list[float]) -> None:
            if request_id == self.graph_request:
                graph.add_tokens(stamps)

        def done(request_id: str, metrics: ReplyMetrics | None) -> None:
            if request_id == self.graph_request:
                self.graph_request = ""
                graph.end_reply(metrics)
            elif metrics is not None:
                graph.add_history(metrics)

        self.sig_request_started.connect(started)
        self.sig_tokens.connect(tokens)
        self.sig_request_done.connect(done)

    @property
    def serving(self) -> bool:
        return self.server is not None

    # ---- switching
    @Slot(bool)
    def _on_switch(self, on: bool) -> None:
        if on and self.server is None:
            self._start()
        elif not on and self.server is not None:
            self._stop()

    def _start(self) -> None:
        if self._turns is None:
            self.switch.setChecked(False)
            return
        host = str(self.where.currentData())
        self.where.setEnabled(False)
        self.port.setEnabled(False)
        if host == DEFAULT_HOST:
            self._listen(host, None, False)
            return
        job = Job("Read the API key", lambda progress, cancelled: api_keys.ensure_serve_key(), visible=False)
        job.sig_result.connect(lambda result: self._listen(host, result[0], result[1]))
        job.sig_error.connect(self._failed)
        self._jobs.start(job)

    def _listen(self, host: str, key: str | None, new_key: bool) -> None:
        if not self.switch.isChecked() or self._turns is None:
            self._reset()
            return
        server = ChatServer(self._turns, model_name=self._model_name, host=host, port=self.port.value(),
                            api_key=key, on_event=self._on_server_event)
        try:
            url = server.start()
        except Exception as exc:  # noqa: BLE001 - a bind error is a UserError with a sentence
            from desktop.jobs import error_from_exception

            self._failed(error_from_exception(exc))
            return
        self.server = server
        self.url.setText(f"{url}/v1")
        self.key.setText(key if new_key and key else "")
        self.key_widget.setVisible(bool(key))
        self.key_note.setText(
            "The API key, shown this once: copy it now. QuantDesk keeps it in the system keyring." if new_key else
            "Clients send the API key made the first time (kept in the system keyring) as a Bearer token."
        )
        self.note.setText(f"Serving {self._model_name} at {url}/v1 (OpenAI-compatible).")
        self._flush.start()
        self.sig_serving.emit(True)

    @Slot()
    def new_key(self) -> None:
        """A lost key is replaced, not shown again: a new one goes to the keyring, and the server takes it now."""
        self.new_key_button.setEnabled(False)
        job = Job("Make a new API key", lambda progress, cancelled: api_keys.new_serve_key(), visible=False)
        job.sig_result.connect(self._on_new_key)
        job.sig_error.connect(self._failed)
        self._jobs.start(job)

    @Slot(object)
    def _on_new_key(self, key: str) -> None:
        self.new_key_button.setEnabled(True)
        server, self.server = self.server, None
        if server is None:
            return
        host = server.host  # listening again with the new key: the old one stops working at once
        job = Job("Restart serving", lambda progress, cancelled: server.close(timeout=5.0), visible=False)
        job.sig_finished.connect(lambda: self._listen(host, key, True))
        self._jobs.start(job)

    def _stop(self) -> None:
        server, self.server = self.server, None
        self.note.setText("Stopping the server…")
        if server is not None:
            job = Job("Stop serving", lambda progress, cancelled: server.close(timeout=5.0), visible=False)
            job.sig_finished.connect(self._reset)
            self._jobs.start(job)
        self._flush.stop()
        self.sig_serving.emit(False)

    @Slot()
    def _reset(self) -> None:
        self.where.setEnabled(True)
        self.port.setEnabled(True)
        self.url.clear()
        self.key.clear()
        self.key_widget.hide()
        if self.server is None:
            self.switch.blockSignals(True)
            self.switch.setChecked(False)
            self.switch.blockSignals(False)
            if not self.note.text().startswith("Could not"):
                self.note.setText("Not serving.")
        self.switch.setEnabled(self._turns is not None)

    @Slot(object)
    def _failed(self, error: JobError) -> None:
        self.note.setText(f"Could not serve: {error.sentence()}")
        self._reset()

    def shutdown(self) -> None:
        """At window close: stop listening and end the requests in flight (their clients get what was written)."""
        server, self.server = self.server, None
        self._flush.stop()
        if server is not None:
            server.close(timeout=2.0)

    # ---- events
    def _on_server_event(self, event: ServeEvent) -> None:
        """On a request's thread: tokens are collected (the timer hands them on in batches), the rest queued."""
        if event.kind == "token":
            with self._lock:
                self._stamps.setdefault(event.request_id, []).append(float(event.data.get("at") or time.perf_counter()))
            return
        self._relay.event.emit(event)

    @Slot(object)
    def _on_event(self, event: ServeEvent) -> None:
        kind, request_id = event.kind, event.request_id
        if kind == "request_started":
            self._started.add(request_id)
            self.sig_request_started.emit(request_id, time.perf_counter())
        elif kind == "request_done":
            self._flush_tokens()
            data = event.data.get("metrics")
            metrics = ReplyMetrics.from_dict(data) if isinstance(data, dict) else None
            self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {log_line(event)}")
            self._started.discard(request_id)
            with self._lock:
                self._stamps.pop(request_id, None)
            self.sig_request_done.emit(request_id, metrics)

    @Slot()
    def _flush_tokens(self) -> None:
        with self._lock:  # only requests whose start the page has seen: their tokens follow it
            batches = {r: s for r, s in self._stamps.items() if r in self._started}
            for request_id in batches:
                del self._stamps[request_id]
        for request_id, stamps in batches.items():
            self.sig_tokens.emit(request_id, stamps)
