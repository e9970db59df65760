"""The fit table of the Hugging Face panel: one row per quant type (checkpoint) or GGUF model (GGUF repo), with
its size, the KV cache at the chosen context and where it would run on this machine.

Rows come from :func:`desktop.hub.repo.fit_rows`, a pure function, so changing the context recomputes them on the
spot without any network or disk work.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.memory import Machine
from desktop.hub.repo import FitRow, RepoReport, fit_rows
from desktop.jobs import format_bytes
from desktop.ui.widgets import note_label, read_only_table

MIN_CONTEXT = 512
DEFAULT_CONTEXT = 4096
FALLBACK_MAX_CONTEXT = 32768  # when the model does not say what it was trained for

VERDICT_TEXT = {"GPU": "GPU", "GPU+CPU": "GPU + CPU", "RAM": "RAM", "neither": "Does not fit"}
VERDICT_COLOR = {"GPU": "#16a34a", "GPU+CPU": "#65a30d", "RAM": "#d97706", "neither": "#dc2626"}

COLUMNS = ["Quant type", "Size", "KV cache", "Total", "Runs in", "About"]
VERDICT_COLUMN = 4
ABOUT_COLUMN = 5


class FitTable(QWidget):
    sig_selection_changed = Signal()
    """The selected row changed (the Download button names what it would fetch)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report: RepoReport | None = None
        self.memory: Machine | None = None
        self.rows: list[FitRow] = []

        self.context = QSpinBox()
        self.context.setRange(MIN_CONTEXT, FALLBACK_MAX_CONTEXT)
        self.context.setSingleStep(512)
        self.context.setValue(DEFAULT_CONTEXT)
        self.context.setSuffix(" tokens")
        self.context.setGroupSeparatorShown(True)
        self.context.setToolTip("The context you plan to use: the KV cache grows with it")
        self.context.valueChanged.connect(self.recompute)
        context_label = QLabel("Context")
        context_label.setBuddy(self.context)
        self.memory_label = note_label("Reading this machine’s memory…")
        top = QHBoxLayout()
        top.addWidget(context_label)
        top.addWidget(self.context)
        top.addSpacing(12)
        top.addWidget(self.memory_label, 1)

        self.table = read_only_table(COLUMNS, stretch_column=ABOUT_COLUMN)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setWordWrap(False)
        self.table.itemSelectionChanged.connect(self.sig_selection_changed)
        self.empty = note_label("Inspect a repository to see which of its quant types fit this machine.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty, 1)
        self._show_empty()

    # ---- inputs
    def set_report(self, report: RepoReport | None) -> None:
        self.report = report
        trained = 0
        if report is not None:
            trained = report.context_length or (report.attention.n_ctx_train if report.attention else 0)
        maximum = max(MIN_CONTEXT, trained) if trained else FALLBACK_MAX_CONTEXT
        self.context.blockSignals(True)
        self.context.setMaximum(maximum)
        self.context.setValue(min(DEFAULT_CONTEXT, maximum))
        self.context.blockSignals(False)
        self.context.setToolTip(
            f"The context you plan to use, up to the {maximum:,} tokens the model was trained for"
            if trained else "The context you plan to use: the KV cache grows with it"
        )
        self.recompute()

    def set_memory(self, machine: Machine) -> None:
        """The devices the planner may use (only GPUs the selected llama.cpp can use count)."""
        self.memory = machine
        self.memory_label.setText(machine.describe())
        self.memory_label.setToolTip("\n".join(machine.left_out))
        self.recompute()

    # ---- rows
    @Slot()
    def recompute(self) -> None:
        report, memory = self.report, self.memory
        selected = self.selected_row()
        if report is None or memory is None or report.kind not in ("checkpoint", "gguf"):
            self.rows = []
            self._show_empty()
            return
        self.rows = fit_rows(report, self.context.value(), memory)
        # A checkpoint downloads as one snapshot whatever the row, so only a GGUF repo's rows are choices.
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection if report.kind == "gguf"
                                    else QAbstractItemView.SelectionMode.NoSelection)
        self.table.setHorizontalHeaderItem(0, QTableWidgetItem("Quant type" if report.kind == "checkpoint"
                                                               else "Model"))
        self.table.setRowCount(len(self.rows))
        for index, row in enumerate(self.rows):
            self._fill(index, row)
        self.table.setVisible(bool(self.rows))
        self.empty.setVisible(not self.rows)
        if not self.rows:
            self.empty.setText("This repository has no model to fit.")
        keep = next((i for i, r in enumerate(self.rows) if selected and r.label == selected.label), None)
        if keep is None:  # first time: the largest that fits, else the first
            keep = next((i for i, r in enumerate(self.rows) if r.fit.where != "neither"), 0)
        if self.rows:
            self.table.selectRow(keep)

    def _fill(self, index: int, row: FitRow) -> None:
        assert self.report is not None
        if row.predicted:
            prediction = next((p for p in self.report.predictions if p.name == row.quant), None)
            label = row.label
            about = (f"{prediction.bpw:.2f} bits per weight. {prediction.description}" if prediction else "")
            size = f"≈ {format_bytes(row.size_bytes)}"
        else:
            shards = len(row.files)
            label = row.label.rsplit("/", 1)[-1] + (f"  ({shards} files)" if shards > 1 else "")
            about = ", ".join(row.files)
            size = format_bytes(row.size_bytes)
        verdict = row.fit
        sentence = verdict.sentence()
        values = [label, size, format_bytes(row.kv_bytes), format_bytes(verdict.needed_bytes),
                  VERDICT_TEXT.get(verdict.where, verdict.where), about]
        for col, value in enumerate(values):
            item = QTableWidgetItem(value)
            if col in (1, 2, 3):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            item.setToolTip(about.replace(", ", "\n") if col in (0, ABOUT_COLUMN) and about else sentence)
            if col == VERDICT_COLUMN:
                item.setForeground(QBrush(QColor(VERDICT_COLOR.get(verdict.where, "#6b7280"))))
                font = item.font()
                font.setBold(True)
                item.setFont(font)
                item.setTextAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(index, col, item)

    def _show_empty(self) -> None:
        self.table.setRowCount(0)
        self.table.setVisible(False)
        self.empty.setVisible(True)
        if self.report is not None and self.report.kind == "unsupported":
            self.empty.setText("Nothing to fit: QuantDesk cannot use this repository.")
        elif self.report is not None and self.memory is None:
            self.empty.setText("Reading this machine’s memory…")
        else:
            self.empty.setText("Inspect a repository to see which of its quant types fit this machine.")

    def selected_row(self) -> FitRow | None:
        model = self.table.selectionModel()
        picked = model.selectedRows() if model is not None else []
        if not picked or picked[0].row() >= len(self.rows):
            return None
        return self.rows[picked[0].row()]

    def verdict_text(self, row: int) -> str:
        item = self.table.item(row, VERDICT_COLUMN)
        return item.text() if item else ""
