"""The Compare results table: one row per model, every measured cell carrying where it was measured, the fit
column labelled as an estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from desktop.eval import speed
from desktop.eval.compare import Row, fits_text, provenance
from desktop.jobs import format_bytes

COLUMNS = ["Type", "Size", "Bits/weight", "PPL", "PPL change", "KLD", "Top-1 agree", "Prompt tok/s", "Gen tok/s",
           "Fits (estimate)"]
HEADERS = ["Type", "Size", "Bits/\nweight", "PPL", "PPL\nchange", "KLD", "Top-1\nagree", "Prompt\ntok/s", "Gen\ntok/s",
           "Fits\n(estimate)"]
FITS = COLUMNS.index("Fits (estimate)")
SPEED_COLUMNS = ("Prompt tok/s", "Gen tok/s")
UNSTEADY_COLOR = "#b45309"
UNSTEADY_MARK = "⚠"
REFERENCE = "reference"
"""What the base's own PPL change, KLD and top-1 cells say: it is what the others are measured against."""


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _speed(value: float | None, runs: tuple[float, ...], what: str, where: str) -> tuple[str, float, str]:
    """A speed cell: the median of the runs and their spread ("31.2 ±4%"), marked when they disagree."""
    if value is None:
        return "–", 0.0, where
    spread = speed.spread(runs)
    text = _rate(value) + (f" ±{spread / 2:.0%}" if spread is not None else " (1 run)")
    if speed.unsteady(runs):
        text = f"{UNSTEADY_MARK} {text}"
    return text, value, f"{speed.describe(runs or (value,), what)} {where}"


def _rate(value: float | None) -> str:
    """Speeds and perplexities: whole numbers from 100 up, a decimal or two below."""
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


class ResultsTable(QTableWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(HEADERS)
        for i, name in enumerate(COLUMNS):
            self.horizontalHeaderItem(i).setToolTip(name)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setAlternatingRowColors(True)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.setWordWrap(False)
        header.setMinimumSectionSize(60)
        self.horizontalHeaderItem(FITS).setToolTip(
            "Estimate: file size + KV cache + compute buffer at the chosen context, against the latest hardware "
            "report (free RAM and GPU memory).")
        self.horizontalHeaderItem(COLUMNS.index("PPL change")).setToolTip("PPL change: perplexity against the base's, "
                                                                          "in percent")
        self.horizontalHeaderItem(COLUMNS.index("Bits/weight")).setToolTip("Bits per weight: file size × 8 / parameters")
        self.horizontalHeaderItem(COLUMNS.index("KLD")).setToolTip(
            "Mean KL divergence of the next-token distribution from the base's (lower is closer)")
        self.horizontalHeaderItem(COLUMNS.index("Top-1 agree")).setToolTip(
            "Share of tokens where the model's most likely next token is the base's")
        for column in SPEED_COLUMNS:
            self.horizontalHeaderItem(COLUMNS.index(column)).setToolTip(
                f"{column}: the median of {speed.SPEED_RUNS} timed runs on this machine, ± half the spread between "
                f"the fastest and the slowest; {UNSTEADY_MARK} when they differ by more than "
                f"{speed.UNSTEADY_SPREAD:.0%} (select the row and measure its speed again)")
        self.rows: list[Row] = []

    def set_rows(self, rows: Sequence[Row], n_ctx: int, report: Any | None) -> None:
        # no header sorting: Qt then reserves room for a sort arrow in every column, and the table is wide already
        self.rows = sorted(rows, key=lambda r: (not r.is_base, -r.size_bytes))
        self.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            r = row.result
            where = provenance(r) if r is not None else "not measured yet"
            label = f"{row.quant_type} (base)" if row.is_base else row.quant_type
            cells = [
                (label, -row.size_bytes, row.path),
                (format_bytes(row.size_bytes), row.size_bytes, f"File size on disk: {row.size_bytes:,} bytes"),
                (_num(row.bits_per_weight, ".2f"), row.bits_per_weight or 0, "File size × 8 / parameters"),
                (_rate(r.ppl if r else None), r.ppl if r else 0,
                 f"± {r.ppl_stderr:.3f}; {where}" if r else where),
                (_num(r.ppl_increase_pct if r else None, "+.2f") + ("%" if r and r.ppl_increase_pct is not None
                                                                     else ""),
                 (r.ppl_increase_pct or 0) if r else 0, where),
                (_num(r.kld_mean if r else None, ".5f"), (r.kld_mean or 0) if r else 0,
                 f"99th percentile {r.kld_p99:.4f}; {where}" if r and r.kld_p99 is not None else where),
                (_num(100 * r.top1_agreement if r and r.top1_agreement is not None else None, ".1f")
                 + ("%" if r and r.top1_agreement is not None else ""),
                 (r.top1_agreement or 0) if r else 0, where),
                _speed(r.prompt_tps if r else None, r.prompt_tps_runs if r else (),
                       f"Prompt, batches of {r.prompt_batch if r else 0} tokens", where),
                _speed(r.gen_tps if r else None, r.gen_tps_runs if r else (),
                       f"Generation, {r.gen_tokens if r else 0} single-token decodes", where),
            ]
            if row.is_base:  # against itself: the reference, not a number to compare
                for column in ("PPL change", "KLD", "Top-1 agree"):
                    _, key, tip = cells[COLUMNS.index(column)]
                    cells[COLUMNS.index(column)] = (REFERENCE, key, f"The base: the others are compared with it. {where}")
            for column, (text, _key, tip) in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                if text.startswith(UNSTEADY_MARK):
                    item.setForeground(QBrush(QColor(UNSTEADY_COLOR)))
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.setItem(i, column, item)
        self.update_fits(n_ctx, report)

    def update_fits(self, n_ctx: int, report: Any | None) -> None:
        """Recompute the estimate column (pure arithmetic on the shapes read by the job)."""
        for i in range(self.rowCount()):
            path = self.item(i, 0).toolTip()
            row = next(r for r in self.rows if r.path == path)
            short, sentence = fits_text(row.shape, n_ctx, report)
            item = QTableWidgetItem(short)
            item.setToolTip(sentence)
            self.setItem(i, FITS, item)

    def unsteady_types(self) -> list[str]:
        """The types whose speed runs disagree by more than 10% (their cells are marked)."""
        return [self.item(i, 0).text().split(" ")[0] for i in range(self.rowCount())
                if any(self.item(i, COLUMNS.index(c)).text().startswith(UNSTEADY_MARK) for c in SPEED_COLUMNS)]

    def selected_row(self) -> Row | None:
        """The row the user selected (None when none is)."""
        selected = self.selectionModel().selectedRows() if self.selectionModel() else []
        if not selected:
            return None
        path = self.item(selected[0].row(), 0).toolTip()
        return next((r for r in self.rows if r.path == path), None)

    def text(self, quant_type: str, column: str) -> str:
        """The cell text for a type's row (tests and the screenshot driver use it)."""
        for i in range(self.rowCount()):
            if self.item(i, 0).text().split(" ")[0] == quant_type:
                return self.item(i, COLUMNS.index(column)).text()
        raise KeyError(quant_type)

    def tooltip(self, quant_type: str, column: str) -> str:
        for i in range(self.rowCount()):
            if self.item(i, 0).text().split(" ")[0] == quant_type:
                return self.item(i, COLUMNS.index(column)).toolTip()
        raise KeyError(quant_type)
