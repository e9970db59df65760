"""The queue (each step's state: waiting, running with its per-tensor line, done with the real size against the
predicted one, failed, cancelled) and the log of per-tensor lines, redrawn from a timer and capped."""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QWidget,
)

from desktop.jobs import format_bytes
from desktop.quant.pipeline import CONVERT_STEP, IMATRIX_STEP, StepEvent

WAITING, RUNNING, DONE, FAILED, CANCELLED, NOT_STARTED = (
    "waiting", "running", "done", "failed", "cancelled", "not started")
STATE_COLOR = {DONE: "#15803d", FAILED: "#b91c1c", CANCELLED: "#b45309"}
LOG_MAX_LINES = 2000
LOG_FLUSH_MS = 150


def step_title(key: str, convert_type: str = "F16") -> str:
    if key == CONVERT_STEP:
        return f"Convert to GGUF ({convert_type})"
    if key == IMATRIX_STEP:
        return "Importance matrix"
    return key


class QueueView(QTableWidget):
    """One row per step of the run, in order: the step, its state, its detail (the predicted size while it
    waits, the per-tensor line while it runs, the real size against the predicted one when done), and for each
    type a button that cancels that item alone while it waits or runs."""

    sig_cancel_item = Signal(str)
    """The user cancelled one type of the queue (its key); the rest of the run goes on."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 4, parent)
        self.setHorizontalHeaderLabels(["Step", "State", "Detail", ""])
        self.verticalHeader().setVisible(False)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        for col in range(2):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.keys: list[str] = []
        self.states: dict[str, str] = {}

    def start(self, keys: list[str], predicted: dict[str, int | str], convert_type: str = "F16") -> None:
        self.keys = list(keys)
        self.states = {k: WAITING for k in keys}
        self.setRowCount(len(keys))
        for row, key in enumerate(keys):
            size = predicted.get(key)
            values = [step_title(key, convert_type), WAITING,
                      f"predicted {format_bytes(size)}" if isinstance(size, int) else ""]
            for col, value in enumerate(values):
                self.setItem(row, col, QTableWidgetItem(value))
            self.setItem(row, 3, QTableWidgetItem(""))
            if key not in (CONVERT_STEP, IMATRIX_STEP):  # those feed every later step: Cancel stops the whole run
                button = QToolButton()
                button.setText("Cancel")
                button.setToolTip(f"Cancel {key} only; the other types go on")
                button.clicked.connect(lambda _=False, k=key: self.cancel_item(k))
                self.setCellWidget(row, 3, button)

    def cancel_button(self, key: str) -> QToolButton | None:
        widget = self.cellWidget(self.keys.index(key), 3)
        return widget if isinstance(widget, QToolButton) else None

    def cancel_item(self, key: str) -> None:
        if self.states.get(key) in (WAITING, RUNNING):
            self._set(key, CANCELLED, "")  # the state says it; the other types go on
            self.sig_cancel_item.emit(key)

    def state(self, key: str) -> str:
        return self.states.get(key, "")

    def detail(self, key: str) -> str:
        return self.item(self.keys.index(key), 2).text()

    def apply(self, event: StepEvent) -> None:
        if event.key not in self.keys or self.states[event.key] == CANCELLED:
            return  # a cancelled item's last reports arrive after it was cancelled
        if event.state == RUNNING:
            for earlier in self.keys[: self.keys.index(event.key)]:  # a step that reported nothing is behind us
                if self.states[earlier] == WAITING:
                    self._set(earlier, DONE, "")
        self._set(event.key, event.state, event.detail)

    def finish(self, outcome: str) -> None:
        """The job ended: the running step failed or was cancelled, the waiting ones never started."""
        for key in self.keys:
            if self.states[key] == RUNNING:
                self._set(key, outcome, "")
            elif self.states[key] == WAITING:
                self._set(key, NOT_STARTED if outcome == FAILED else CANCELLED if outcome == CANCELLED else DONE, "")

    def _set(self, key: str, state: str, detail: str) -> None:
        row = self.keys.index(key)
        self.states[key] = state
        state_item = self.item(row, 1)
        state_item.setText(state)
        color = STATE_COLOR.get(state)
        state_item.setForeground(QColor(color) if color else self.palette().text())
        if detail or state not in (RUNNING, DONE):
            self.item(row, 2).setText(detail)
            self.item(row, 2).setToolTip(detail)
        button = self.cellWidget(row, 3)
        if button is not None:
            button.setEnabled(state in (WAITING, RUNNING))


class LogView(QPlainTextEdit):
    """Lines arrive as fast as tensors finish; they are buffered and appended a few times a second."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(LOG_MAX_LINES)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.setPlaceholderText("Per-tensor progress appears here while a run goes.")
        self._pending: list[str] = []
        self._timer = QTimer(self)
        self._timer.setInterval(LOG_FLUSH_MS)
        self._timer.timeout.connect(self.flush)

    def add(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) > LOG_MAX_LINES:
            del self._pending[: len(self._pending) - LOG_MAX_LINES]
        if not self._timer.isActive():
            self._timer.start()

    @Slot()
    def flush(self) -> None:
        self._timer.stop()
        if self._pending:
            self.appendPlainText("\n".join(self._pending))
            self._pending.clear()
            bar = self.verticalScrollBar()
            bar.setValue(bar.maximum())

    def lines(self) -> list[str]:
        self.flush()
        return self.toPlainText().splitlines()
