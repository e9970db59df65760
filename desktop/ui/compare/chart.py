"""The Compare chart: file size against KL divergence (one labelled point per quant, log scale), or, as the second
view, file size against generation speed. Items are made once per data set; switching views only re-plots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QButtonGroup, QHBoxLayout, QLabel, QRadioButton, QVBoxLayout, QWidget

from desktop.eval.compare import Row

POINT_COLOR = "#2563eb"
BASE_COLOR = "#f59e0b"
QUALITY = "quality"
SPEED = "speed"
MB = 1000**2  # decimal, as every size in the app (desktop.jobs.format_bytes): the table says MB too


class CompareChart(QWidget):
    sig_view_changed = Signal(str)
    """The user switched between the quality and the speed view."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        background = self.palette().base().color()
        self.plot = pg.PlotWidget(background=background)
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.plot.setLabel("bottom", "file size (MB)")
        self.plot.setMinimumHeight(160)
        self.scatter = pg.ScatterPlotItem(size=9, pen=pg.mkPen("w", width=1))
        self.plot.addItem(self.scatter)
        self._labels: list[pg.TextItem] = []

        self.quality_button = QRadioButton("Size vs KLD")
        self.speed_button = QRadioButton("Size vs generation speed")
        self.quality_button.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.quality_button)
        group.addButton(self.speed_button)
        self.quality_button.toggled.connect(self._on_toggle)
        self.caption = QLabel()
        self.caption.setObjectName("note")
        self.caption.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.quality_button)
        top.addWidget(self.speed_button)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)
        self._rows: list[Row] = []
        self.view = QUALITY

    def set_rows(self, rows: Sequence[Row]) -> None:
        self._rows = [r for r in rows if r.result is not None]
        self.redraw()

    @Slot(bool)
    def _on_toggle(self, quality: bool) -> None:
        self.view = QUALITY if quality else SPEED
        self.redraw()
        self.sig_view_changed.emit(self.view)

    def points(self) -> list[tuple[str, float, float]]:
        """(label, x, y) of the points drawn now."""
        if self.view == QUALITY:
            rows = [r for r in self._rows if not r.is_base and r.result and r.result.kld_mean is not None]
            return [(r.quant_type, r.size_bytes / MB, float(r.result.kld_mean)) for r in rows]  # type: ignore[union-attr]
        rows = [r for r in self._rows if r.result and r.result.gen_tps]
        return [(f"{r.quant_type} (base)" if r.is_base else r.quant_type, r.size_bytes / MB,
                 float(r.result.gen_tps)) for r in rows]  # type: ignore[union-attr]

    def redraw(self) -> None:
        for label in self._labels:
            self.plot.removeItem(label)
        self._labels = []
        points = self.points()
        quality = self.view == QUALITY
        log_y = quality and bool(points) and all(y > 0 for _, _, y in points)
        self.plot.setLogMode(False, log_y)
        self.plot.setLabel("left", "KL divergence vs base" + (" (log)" if log_y else "") if quality
                           else "generation tok/s")
        xs = np.array([x for _, x, _ in points], dtype=float)
        ys = np.array([y for _, _, y in points], dtype=float)
        shown_y = np.log10(ys) if log_y and ys.size else ys
        brushes = [pg.mkBrush(BASE_COLOR if name.endswith("(base)") else POINT_COLOR) for name, _, _ in points]
        self.scatter.setData(x=xs, y=shown_y, brush=brushes)
        for (name, _, _), x, y in zip(points, xs, shown_y, strict=True):
            label = pg.TextItem(name, color=self.palette().text().color(), anchor=(0.5, 1.2))
            label.setPos(float(x), float(y))
            self.plot.addItem(label, ignoreBounds=True)
            self._labels.append(label)
        if xs.size:
            pad_x = max(float(xs.max() - xs.min()) * 0.15, float(xs.max()) * 0.05, 0.01)  # room for the labels
            pad_y = max(float(shown_y.max() - shown_y.min()) * 0.2, abs(float(shown_y.max())) * 0.1, 0.01)
            self.plot.setXRange(float(xs.min()) - pad_x, float(xs.max()) + pad_x, padding=0)
            bottom = float(shown_y.min()) - pad_y if quality else 0.0  # speeds from zero: no exaggerated gaps
            self.plot.setYRange(bottom, float(shown_y.max()) + 1.5 * pad_y, padding=0)
        if not points:
            self.caption.setText("Measure to see the chart." if not self._rows else
                                 "Nothing to plot in this view yet.")
        elif quality:
            self.caption.setText("Lower left is better: small and close to the base. Measured.")
        else:
            self.caption.setText("Higher is faster: generation measured on this machine.")
