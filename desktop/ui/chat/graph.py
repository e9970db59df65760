"""The live speed graph: tokens/second over the reply as it streams (raw and smoothed), time to first token and
prompt speed marked, and the speed of the conversation's earlier replies.

Curves are created once; a 10 Hz timer calls ``setData`` when new tokens arrived, never a token handler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, QTimer, Slot
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from desktop.chat.engine import ReplyMetrics

REDRAW_MS = 100
SMOOTH_TOKENS = 8
RAW_COLOR = "#93c5fd"
SMOOTH_COLOR = "#2563eb"
MARK_COLOR = "#f59e0b"
HISTORY_COLOR = "#10b981"
HISTORY_MIN_WIDTH = 480  # narrower than this, the graph shows the live curve only
PLOT_MARGINS = (8, 8, 12, 6)  # left, top, right, bottom, around each plot's axes


def _nice_step(value: float) -> float:
    """The next of 1, 2, 5 x 10^n at or above ``value``."""
    if value <= 0:
        return 1.0
    exponent = np.floor(np.log10(value))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        candidate = float(mantissa * 10**exponent)
        if candidate >= value:
            return candidate
    return float(10 ** (exponent + 1))


def token_rates(stamps: Sequence[float], window: int = SMOOTH_TOKENS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From token arrival times (seconds since the request): x, the raw rate (1/gap) and the rate over the last
    ``window`` tokens, for every token after the first."""
    t = np.asarray(stamps, dtype=float)
    if t.size < 2:
        empty = np.zeros(0)
        return empty, empty, empty
    gaps = np.maximum(np.diff(t), 1e-4)
    raw = 1.0 / gaps
    index = np.arange(1, t.size)
    back = np.maximum(index - window, 0)
    smooth = (index - back) / np.maximum(t[index] - t[back], 1e-4)
    return t[1:], raw, smooth


class SpeedGraph(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        background = self.palette().base().color()
        self.plot = pg.PlotWidget(background=background)
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.setLabel("left", "tok/s")
        self.plot.setLabel("bottom", "seconds since sent")
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.raw_curve = self.plot.plot(name="per token", pen=pg.mkPen(RAW_COLOR, width=1))
        self.smooth_curve = self.plot.plot(name=f"over {SMOOTH_TOKENS} tokens", pen=pg.mkPen(SMOOTH_COLOR, width=2))
        self.ttft_line = pg.InfiniteLine(angle=90, pen=pg.mkPen(MARK_COLOR, width=1, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.plot.addItem(self.ttft_line, ignoreBounds=True)
        self.ttft_line.hide()
        # The legend and the first-token note sit in a line above the plot, never over the curves.
        self.legend = QLabel()
        self._label_text = ""
        self.legend.setObjectName("note")
        self.legend.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.marker_note = QLabel()  # its own line, so the graph's height never depends on its width
        self.marker_note.setObjectName("note")
        self.marker_note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.marker_note.setStyleSheet(f"color: {MARK_COLOR}")
        self.marker_note.setText(" ")
        self._legend_keys = (
            f"<span style='color:{RAW_COLOR}'>&#9473;</span> per token &nbsp; "
            f"<span style='color:{SMOOTH_COLOR}'>&#9473;</span> over {SMOOTH_TOKENS} tokens &nbsp; "
            f"<span style='color:{MARK_COLOR}'>&#9482;</span> first token"
        )
        self.legend.setText(self._legend_keys)

        self.history = pg.PlotWidget(background=background)
        self.history.setMouseEnabled(False, False)
        self.history.hideButtons()
        self.history.setLabel("left", "tok/s")
        self.history.setLabel("bottom", "reply")
        self.history.setFixedWidth(150)
        self.history.showGrid(y=True, alpha=0.15)
        self.history_bars = pg.BarGraphItem(x=[], height=[], width=0.6, brush=HISTORY_COLOR, pen=None)
        self.history.addItem(self.history_bars)
        self.history.getAxis("bottom").setTickSpacing(1, 1)
        for widget in (self.plot, self.history):
            # room around the axes: a tick label at the edge and the rotated axis title stay whole
            widget.getPlotItem().layout.setContentsMargins(*PLOT_MARGINS)
            widget.setMinimumHeight(90)
            for name in ("left", "bottom"):
                widget.getPlotItem().getAxis(name).enableAutoSIPrefix(False)  # "tok/s", never "tok/s (x0.001)"

        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        left = QVBoxLayout()
        left.setSpacing(0)
        left.addWidget(self.legend)
        left.addWidget(self.marker_note)
        left.addWidget(self.plot, 1)
        layout.addLayout(left, 1)
        layout.addWidget(self.history)
        self._set_legend("")

        self._t0 = 0.0
        self._stamps: list[float] = []
        self._ttft: float | None = None
        self._prompt_text = ""
        self._history: list[float] = []
        self._drawn_history: list[float] | None = None
        self._dirty = False
        self._x_right = 0.0
        self._y_top = 0.0
        self.redraws = 0
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        # narrow: the live curve gets the whole width; the bars of earlier replies come back when there is room
        self.history.setVisible(event.size().width() >= HISTORY_MIN_WIDTH)

    # ---- data in (cheap: no drawing here)
    def begin_reply(self, t0: float) -> None:
        self._t0 = t0
        self._stamps = []
        self._ttft = None
        self._prompt_text = ""
        # Lay the axes out now, while the prompt is evaluated, at the last reply's scale: the first frame with
        # tokens then only moves the curves (re-laying both axes at once was the longest stall of a reply).
        self._y_top = _nice_step(max(self._history[-1:] or [10.0]) * 1.15)
        self._x_right = 2.0
        self.plot.setYRange(0, self._y_top, padding=0)
        self.plot.setXRange(0, self._x_right, padding=0)
        # Likewise the first-token marker: shown now, moved when the token comes.
        self._set_legend("waiting for the first token…")
        self.ttft_line.setValue(0.0)
        self.ttft_line.show()
        self._dirty = True
        self._timer.start()

    def add_tokens(self, stamps: Iterable[float]) -> None:
        self._stamps.extend(s - self._t0 for s in stamps)
        if self._ttft is None and self._stamps:
            self._ttft = self._stamps[0]
        self._dirty = True

    def end_reply(self, metrics: ReplyMetrics | None) -> None:
        """The reply ended: mark llama.cpp's own TTFT and prompt speed, add it to the history, stop redrawing."""
        if metrics is not None:
            if metrics.ttft_s is not None:
                self._ttft = metrics.ttft_s
            self._prompt_text = (
                f"first token {self._ttft:.2f} s · prompt {metrics.prompt_tokens} tok at "
                f"{metrics.prompt_tokens_per_s:.0f} tok/s"
                if self._ttft is not None
                else ""
            )
            if metrics.generated_tokens > 0:
                self._history.append(metrics.generation_tokens_per_s)
        self._dirty = True
        self.redraw()
        self._timer.stop()

    def add_history(self, metrics: ReplyMetrics) -> None:
        """A reply drawn elsewhere (an API request answered while the window's own reply has the curve): its bar."""
        if metrics.generated_tokens > 0:
            self._history.append(metrics.generation_tokens_per_s)
            self._dirty = True
            if not self._timer.isActive():
                self.redraw()

    def set_history(self, metrics: Iterable[Mapping[str, Any] | None]) -> None:
        """The conversation's earlier replies (their stored metrics), oldest first; clears the current curve."""
        self._history = [float(m["generation_tokens_per_s"]) for m in metrics if m and m.get("generated_tokens")]
        self._stamps = []
        self._ttft = None
        self._prompt_text = ""
        self._dirty = True
        self.redraw()

    def _set_legend(self, note: str) -> None:
        if note != self._label_text:  # the label relays out only when its text changes
            self._label_text = note
            self.marker_note.setText(note or " ")
            self.marker_note.setToolTip(note)

    def history_values(self) -> list[float]:
        return list(self._history)

    @property
    def streaming(self) -> bool:
        return self._timer.isActive()

    # ---- drawing (timer)
    @Slot()
    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.redraws += 1
        x, raw, smooth = token_rates(self._stamps)
        self.raw_curve.setData(x, raw)
        self.smooth_curve.setData(x, smooth)
        if self._ttft is not None:
            self.ttft_line.setValue(self._ttft)
            self._set_legend(self._prompt_text or f"first token {self._ttft:.2f} s")
            self.ttft_line.show()
        elif not self._timer.isActive():
            self.ttft_line.hide()
            self._set_legend("")
        if raw.size:
            # Ranges move in steps, not every frame: an axis whose range is unchanged keeps its cached picture,
            # and redrawing the tick labels is most of what a frame costs. The raw rate spikes when two tokens
            # arrive together, so the view follows its 95th percentile.
            # (a sort, not np.percentile: its first call imports a numpy submodule, 30 ms on the GUI thread)
            p95 = float(np.sort(raw)[int(round(0.95 * (raw.size - 1)))])
            top = max(p95, float(smooth.max())) * 1.15
            if not (self._y_top * 0.5 <= top <= self._y_top):
                self._y_top = _nice_step(top)
                self.plot.setYRange(0, self._y_top, padding=0)
            right = max(float(x[-1]), self._ttft or 0.0) + 0.05
            if right > self._x_right or self._x_right > 4 * right + 2:
                self._x_right = _nice_step(right * 1.25)
                self.plot.setXRange(0, self._x_right, padding=0)
        if self._history != self._drawn_history:  # the bar chart changes once per reply, not per frame
            self._drawn_history = list(self._history)
            n = len(self._history)
            self.history_bars.setOpts(x=np.arange(1, n + 1), height=np.asarray(self._history, dtype=float), width=0.6)
            if n:
                self.history.setXRange(0.4, max(n, 3) + 0.6, padding=0)
                self.history.setYRange(0, max(self._history) * 1.15, padding=0)


class SpeedStats(QWidget):
    """A row of figures for the last reply: caption above, value below; from llama.cpp's counters when done.

    The figures wrap onto a second row when the row is narrower than they are, so a long figure never makes the
    page wider than the window."""

    NAMES = ("Generation", "Prompt", "First token", "Reply", "Context")
    SPACING = 14

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(self.SPACING)
        self._grid.setVerticalSpacing(4)
        self._values: dict[str, QLabel] = {}
        self._cells: list[QWidget] = []
        for name in self.NAMES:
            cell = QWidget()
            column = QVBoxLayout(cell)
            column.setContentsMargins(0, 0, 0, 0)
            column.setSpacing(0)
            caption = QLabel(name)
            caption.setObjectName("keyLabel")
            value = QLabel("–")
            value.setObjectName("statValue")
            value.setTextInteractionFlags(value.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse)
            column.addWidget(caption)
            column.addWidget(value)
            self._cells.append(cell)
            self._values[name] = value
        self._columns = 0
        self._reflow(len(self.NAMES))

    def _reflow(self, columns: int) -> None:
        if columns == self._columns:
            return
        self._columns = columns
        for cell in self._cells:
            self._grid.removeWidget(cell)
        for index, cell in enumerate(self._cells):
            self._grid.addWidget(cell, index // columns, index % columns, Qt.AlignmentFlag.AlignLeft)
        for column in range(len(self.NAMES) + 1):
            self._grid.setColumnStretch(column, 1 if column == columns else 0)
        # the height follows the rows: an explicit minimum, so the card above the graph never squeezes them
        rows = -(-len(self._cells) // columns)
        row_height = max(cell.sizeHint().height() for cell in self._cells)
        self.setMinimumHeight(rows * row_height + (rows - 1) * self._grid.verticalSpacing())
        self.updateGeometry()

    def _fitting_columns(self, width: int) -> int:
        widths = [cell.sizeHint().width() for cell in self._cells]
        for columns in range(len(widths), 1, -1):
            if sum(max(widths[c::columns]) for c in range(columns)) + self.SPACING * (columns - 1) <= width:
                return columns
        return 1

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = super().minimumSizeHint()
        return QSize(max(cell.sizeHint().width() for cell in self._cells), hint.height())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._reflow(self._fitting_columns(event.size().width()))

    def value(self, name: str) -> str:
        return self._values[name].text()

    def set_value(self, name: str, text: str, tooltip: str = "") -> None:
        self._values[name].setText(text)
        self._values[name].setToolTip(tooltip)
        if self._columns:
            self._reflow(self._fitting_columns(self.width()))

    def show_metrics(self, m: ReplyMetrics) -> None:
        self.set_value("Generation", f"{m.generation_tokens_per_s:.1f} tok/s",
                       f"llama.cpp: {m.generated_tokens} tokens decoded in {m.generation_ms:.0f} ms")
        self.set_value("Prompt", f"{m.prompt_tokens_per_s:.1f} tok/s",
                       f"llama.cpp: {m.prompt_tokens} prompt tokens in {m.prompt_ms:.0f} ms")
        self.set_value("First token", f"{m.ttft_s:.2f} s" if m.ttft_s is not None else "–")
        self.set_value("Reply", f"{m.completion_tokens} tokens in {m.total_s:.2f} s", f"finished: {m.finish_reason}")
        self.set_value("Context", f"{m.context_used:,} of {m.n_ctx:,}")

    def clear(self) -> None:
        for name in self.NAMES:
            self.set_value(name, "–")
