"""Find my quant: the limits (memory to stay within, largest KLD and/or perplexity increase, smallest or fastest),
and the answer: the chosen quant with why, the runners-up and the rejected ones with their reasons."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QTextBrowser,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.eval.recommend import Limits, Recommendation
from desktop.ui.widgets import note_label

GB = 10**9  # decimal, as every size the app shows (desktop.jobs.format_bytes)


def _spin(value: float, maximum: float, decimals: int, suffix: str = "") -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setDecimals(decimals)
    spin.setRange(0.0, maximum)
    spin.setValue(value)
    spin.setSuffix(suffix)
    return spin


class FindPanel(QWidget):
    sig_find = Signal()
    """The user asked for a recommendation (the page builds the limits and runs the job)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.use_memory = QCheckBox("Memory at most (estimate)")
        self.use_memory.setChecked(True)
        self.memory = _spin(8.0, 4096.0, 4, " GB")
        self.memory.setToolTip("Memory the model may use at the chosen context (1 GB = 1,000,000,000 bytes): "
                               "weights + KV cache + compute buffers, the memory planner's estimate")
        self.use_kld = QCheckBox("KLD at most")
        self.use_kld.setChecked(True)
        self.kld = _spin(0.05, 100.0, 4)
        self.use_ppl = QCheckBox("PPL increase at most")
        self.ppl = _spin(5.0, 1000.0, 1, " %")
        self.prefer = QComboBox()
        self.prefer.addItem("the smallest", "smallest")
        self.prefer.addItem("the fastest", "fastest")
        for box, spin in ((self.use_memory, self.memory), (self.use_kld, self.kld), (self.use_ppl, self.ppl)):
            spin.setEnabled(box.isChecked())
            box.toggled.connect(spin.setEnabled)
        self.find_button = QPushButton("Find my quant")
        self.find_button.setToolTip("Make the quants it needs, measure them, recommend one")
        self.find_button.clicked.connect(self.sig_find)
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.use_memory, 0, 0)
        grid.addWidget(self.memory, 0, 1)
        grid.addWidget(self.use_kld, 1, 0)
        grid.addWidget(self.kld, 1, 1)
        grid.addWidget(self.use_ppl, 2, 0)
        grid.addWidget(self.ppl, 2, 1)
        prefer_row = QHBoxLayout()
        prefer_row.addWidget(QLabel("Prefer"))
        prefer_row.addWidget(self.prefer, 1)
        prefer_row.addWidget(self.find_button)

        self.answer = QLabel("Makes the types it needs (those listed or ticked, else a standard ladder), measures "
                             "them, and picks one.")
        self.answer.setWordWrap(True)
        self.answer.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details = QTextBrowser()  # scrolls, so a long answer never pushes the page taller
        self.details.setMinimumHeight(60)
        self.details.setVisible(False)
        self._lines: list[str] = []
        self.note = note_label("KLD, perplexity and speed are measured.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(grid)
        layout.addLayout(prefer_row)
        layout.addWidget(self.answer)
        layout.addWidget(self.details, 1)
        layout.addWidget(self.note)

    def limits(self, n_ctx: int) -> Limits:
        return Limits(
            max_memory_bytes=int(self.memory.value() * GB) if self.use_memory.isChecked() else None,
            max_kld=self.kld.value() if self.use_kld.isChecked() else None,
            max_ppl_increase_pct=self.ppl.value() if self.use_ppl.isChecked() else None,
            n_ctx=n_ctx,
            prefer=str(self.prefer.currentData()),
        )

    def show_running(self, message: str) -> None:
        self.answer.setText(message)
        self.details.setVisible(False)

    def show_recommendation(self, rec: Recommendation) -> None:
        """The answer: the chosen type as a headline, then why, the runners-up and the rejected ones."""
        self.answer.setText(f"<b>Recommended: {rec.chosen.quant_type}</b>" if rec.chosen is not None
                            else "<b>No quant meets these limits</b>")
        self._lines = []
        for line in rec.lines()[1:]:  # "runner-up: ..." then "rejected X: why"
            line = line.strip()
            self._lines.append(line[0].upper() + line[1:])
        items = "".join(f"<li>{_escape(line)}</li>" for line in self._lines)
        self.details.setHtml(f"<p>{_escape(rec.why)}</p>" + (f"<ul style='margin-left:-20px'>{items}</ul>"
                                                             if items else ""))
        self.details.setVisible(True)

    def why(self) -> str:
        return self.details.toPlainText().split("\n")[0] if self.details.isVisible() else ""

    def lines(self) -> list[str]:
        return list(self._lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
