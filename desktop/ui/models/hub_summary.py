"""What an inspected Hugging Face repo is: kind, architecture, parameters, dtype and its files with sizes."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHBoxLayout, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from desktop.gguf.reader import format_parameters
from desktop.hub.repo import RepoReport
from desktop.jobs import format_bytes
from desktop.ui.widgets import Card, KeyValueGrid, note_label

KIND_TEXT = {
    "checkpoint": "Safetensors checkpoint: convert it to GGUF, then quantize",
    "gguf": "GGUF repository: ready to run",
    "unsupported": "Not usable by QuantDesk",
}


class RepoSummary(Card):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Repository", parent)
        self.grid = KeyValueGrid()
        self.empty = note_label("Nothing inspected yet.")
        self.files = QTableWidget(0, 2)
        self.files.setHorizontalHeaderLabels(["File", "Size"])
        self.files.verticalHeader().setVisible(False)
        self.files.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.files.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.files.setAlternatingRowColors(True)
        self.files.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.files.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.files.verticalHeader().setDefaultSectionSize(22)
        self.files.setMaximumHeight(170)
        self.files.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.files.setWordWrap(False)
        row = QHBoxLayout()
        row.setSpacing(16)
        row.addWidget(self.empty)
        row.addWidget(self.grid, 1)
        row.addWidget(self.files, 1)
        self.body.addLayout(row)
        self.grid.setVisible(False)
        self.files.setVisible(False)

    def show_report(self, report: RepoReport) -> None:
        self.empty.setVisible(False)
        self.grid.setVisible(True)
        self.files.setVisible(True)
        self.grid.clear()
        commit = f" (commit {report.sha[:10]})" if report.sha else ""
        access = ", ".join(w for w, on in (("gated", report.gated), ("private", report.private)) if on)
        self.grid.set_row("Repository", f"{report.repo_id} @ {report.revision}{commit}"
                          + (f", {access}" if access else ""))
        self.grid.set_row("Kind", KIND_TEXT.get(report.kind, report.kind))
        if report.kind == "unsupported":
            self.grid.set_row("Why", report.reason)
            self.grid.set_row("Next step", report.next_step)
        else:
            arch = report.architecture + (f" ({report.gguf_arch})" if report.gguf_arch and
                                          report.gguf_arch != report.architecture else "")
            self.grid.set_row("Architecture", arch or "–")
            self.grid.set_row("Parameters", format_parameters(report.parameter_count)
                              if report.parameter_count else "–")
            if report.kind == "checkpoint":
                self.grid.set_row("Weights", report.dtype or "–")
            else:
                n = len(report.gguf_models)
                self.grid.set_row("Models", f"{n} quant{'s' if n != 1 else ''}"
                                  + (f" (plus {', '.join(report.extras)})" if report.extras else ""))
            self.grid.set_row("Trained context", f"{report.context_length:,} tokens" if report.context_length else "–")
            if report.kind == "checkpoint":
                self.grid.set_row("Download", f"{len(report.download_files)} files for conversion, "
                                  f"{format_bytes(report.download_bytes)}")
        self.files.setHorizontalHeaderLabels([f"File ({len(report.files)}, {format_bytes(report.total_bytes)})",
                                              "Size"])
        self.files.setRowCount(len(report.files))
        for index, f in enumerate(report.files):
            name = QTableWidgetItem(f.path)
            name.setToolTip(f.path)
            size = QTableWidgetItem(format_bytes(f.size))
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.files.setItem(index, 0, name)
            self.files.setItem(index, 1, size)

    def clear(self, text: str = "Nothing inspected yet.") -> None:
        """Show no repository, only ``text`` (after a failed or cancelled lookup nothing stale stays on screen)."""
        self.grid.clear()
        self.files.setRowCount(0)
        self.grid.setVisible(False)
        self.files.setVisible(False)
        self.empty.setText(text)
        self.empty.setVisible(True)

    def file_names(self) -> list[str]:
        return [self.files.item(r, 0).text() for r in range(self.files.rowCount())]
