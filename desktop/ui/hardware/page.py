"""Hardware: what this machine has, what llama.cpp can use, live usage, and what size of model fits."""

from __future__ import annotations

from collections import deque

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from desktop import memory
from desktop.hardware.engine_use import engine_use_sentence
from desktop.hardware.report import HardwareReport, UsageSample
from desktop.jobs import JobError, format_bytes
from desktop.process import run_in_child
from desktop.ui.hardware.engine_card import EngineCard
from desktop.ui.widgets import Card, KeyValueGrid, UsageBar, note_label
from desktop.workers import Job, JobManager

HISTORY_S = 60


class HardwarePage(QWidget):
    sig_report = Signal(object)
    """A new :class:`HardwareReport` arrived (other pages use it for fit checks)."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self.report: HardwareReport | None = None
        self._cpu_history: deque[float] = deque(maxlen=HISTORY_S)
        self._ram_history: deque[float] = deque(maxlen=HISTORY_S)

        header = QHBoxLayout()
        title = QLabel("Hardware")
        title.setObjectName("pageTitle")
        self.status = QLabel("Reading this machine’s hardware…")
        self.status.setObjectName("note")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the hardware again (F5)")
        self.refresh_button.clicked.connect(self.refresh)
        QShortcut(QKeySequence(Qt.Key.Key_F5), self, self.refresh)
        header.addWidget(title)
        header.addSpacing(12)
        header.addWidget(self.status, 1)
        header.addWidget(self.refresh_button)

        self.fits_card = Card("What fits")
        self.fits_ram = note_label()
        self.fits_gpu = note_label()
        self.fits_card.body.addWidget(self.fits_ram)
        self.fits_card.body.addWidget(self.fits_gpu)

        self.cpu_card = Card("Processor")
        self.cpu_grid = KeyValueGrid()
        self.cpu_card.body.addWidget(self.cpu_grid)
        self.cpu_bar = UsageBar("CPU use")
        self.cpu_card.body.addWidget(self.cpu_bar)

        self.memory_card = Card("Memory")
        self.memory_grid = KeyValueGrid()
        self.memory_card.body.addWidget(self.memory_grid)
        self.ram_bar = UsageBar("RAM in use")
        self.memory_card.body.addWidget(self.ram_bar)

        self.gpu_card = Card("Graphics")
        self.gpu_box = QVBoxLayout()
        self.gpu_card.body.addLayout(self.gpu_box)
        self.gpu_bars: dict[int, UsageBar] = {}

        self.llama_card = Card("llama.cpp on this machine")
        self.llama_grid = KeyValueGrid()
        self.llama_card.body.addWidget(self.llama_grid)

        self.engine_card = EngineCard(jobs)
        # the device list is the selected engine's; the card re-reads its own list after a choice or a test
        self.engine_card.sig_engine_changed.connect(self.read_report)

        self.graph_card = Card("Live usage (last minute)")
        self.plot = pg.PlotWidget(background=self.palette().base().color())
        self.plot.setFixedHeight(170)
        self.plot.setYRange(0, 100, padding=0.05)
        self.plot.setXRange(-HISTORY_S + 1, 0)
        self.plot.setMouseEnabled(False, False)
        self.plot.hideButtons()
        self.plot.setLabel("left", "%")
        self.plot.setLabel("bottom", "seconds")
        self.plot.addLegend(offset=(8, 4))
        self.plot.showGrid(y=True, alpha=0.2)
        self.cpu_curve = self.plot.plot(name="CPU", pen=pg.mkPen("#3b82f6", width=2))
        self.ram_curve = self.plot.plot(name="RAM", pen=pg.mkPen("#10b981", width=2))
        self.graph_card.body.addWidget(self.plot)

        grid = QGridLayout()
        grid.setSpacing(12)
        grid.addWidget(self.fits_card, 0, 0, 1, 2)
        grid.addWidget(self.cpu_card, 1, 0)
        grid.addWidget(self.memory_card, 1, 1)
        grid.addWidget(self.gpu_card, 2, 0)
        grid.addWidget(self.llama_card, 2, 1)
        grid.addWidget(self.engine_card, 3, 0, 1, 2)
        grid.addWidget(self.graph_card, 4, 0, 1, 2)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        grid.setRowStretch(5, 1)

        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.setContentsMargins(20, 16, 20, 16)
        content_layout.addLayout(header)
        content_layout.addLayout(grid)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

    # ---- loading the static report (in a child process: the GUI never loads llama.cpp)
    @Slot()
    def refresh(self) -> None:
        """F5: the engines and the hardware read again."""
        self.engine_card.refresh()
        self.read_report()

    @Slot()
    def read_report(self) -> None:
        self.status.setText("Reading this machine’s hardware…")
        self.refresh_button.setEnabled(False)
        job = Job(
            "Read hardware",
            lambda progress, cancelled: run_in_child(
                "desktop.hardware.report:report_job", progress=progress, cancelled=cancelled
            ),
        )
        job.sig_result.connect(self.show_report)
        job.sig_error.connect(self._on_error)
        job.sig_finished.connect(lambda: self.refresh_button.setEnabled(True))
        self._jobs.start(job)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.status.setText(error.sentence())

    @Slot(object)
    def show_report(self, report: HardwareReport) -> None:
        self.report = report
        self.status.setText(report.os)
        cpu = report.cpu
        self.cpu_grid.set_row("Model", cpu.model)
        self.cpu_grid.set_row("Cores", f"{cpu.physical_cores} cores, {cpu.logical_cores} threads ({cpu.architecture})")
        self.cpu_grid.set_row("Features", ", ".join(cpu.features) or "none detected")
        self.memory_grid.set_row("Total", format_bytes(report.memory.total))
        self.memory_grid.set_row("Available", format_bytes(report.memory.available))
        self._show_gpus(report)
        self._show_llama(report)
        self._show_fits(report)
        self.engine_card.set_has_nvidia(any(g.source == "nvml" for g in report.gpus))
        self.sig_report.emit(report)

    def _show_gpus(self, report: HardwareReport) -> None:
        while self.gpu_box.count():
            item = self.gpu_box.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.gpu_bars.clear()
        for gpu in report.gpus:
            grid = KeyValueGrid()
            grid.set_row("GPU", f"{gpu.name} ({gpu.backend})")
            details = [f"{format_bytes(gpu.vram_total)} {'shared with the CPU' if gpu.unified_memory else 'VRAM'}"]
            if gpu.driver:
                details.append(f"driver {gpu.driver}")
            if gpu.compute_capability:
                details.append(f"compute capability {gpu.compute_capability}")
            if gpu.source == "estimate":
                details.append("Metal limit estimated")
            grid.set_row("Memory", ", ".join(details))
            grid.set_row("Engine", engine_use_sentence(gpu, report.llama.engine))
            self.gpu_box.addWidget(grid)
            bar = UsageBar("VRAM in use")
            bar.set_value(gpu.vram_used / gpu.vram_total if gpu.vram_total else 0, _used_text(gpu.vram_used, gpu.vram_total))
            self.gpu_box.addWidget(bar)
            self.gpu_bars[gpu.index] = bar
        if not report.gpus:
            label = QLabel("No GPU found, so models run on the CPU, which works well for small ones.")
            label.setWordWrap(True)
            self.gpu_box.addWidget(label)
        nvidia_notes = [n for n in report.notes if "NVIDIA" in n]
        for note in nvidia_notes:
            self.gpu_box.addWidget(note_label(note))

    def _show_llama(self, report: HardwareReport) -> None:
        llama = report.llama
        if not llama.available:
            self.llama_grid.set_row("Status", llama.error or "llama-cpp-python is not available.")
            return
        self.llama_grid.set_row("Engine", f"{llama.engine or 'cpu'} ({llama.lib_dir})")
        self.llama_grid.set_row("Version", f"llama-cpp-python {llama.version}")
        self.llama_grid.set_row(
            "GPU offload",
            "available" if llama.supports_gpu_offload else "not in this build (CPU only)",
        )
        self.llama_grid.set_row("CPU code", ", ".join(llama.cpu_features) or "baseline")
        devices = [f"{d.name}: {d.description} ({d.kind})" for d in llama.devices] or ["none reported"]
        self.llama_grid.set_row("Devices", "\n".join(devices))

    def _show_fits(self, report: HardwareReport) -> None:
        """The memory planner's answer (:func:`desktop.memory.what_fits`); only GPUs llama.cpp can use count."""
        machine = memory.machine_from_report(report)
        self.fits_ram.setText(memory.what_fits(machine, on_gpu=False))
        if machine.gpus:
            self.fits_gpu.setText(memory.what_fits(machine, on_gpu=True))
        elif report.gpus:
            self.fits_gpu.setText("On the GPU: this llama.cpp build cannot offload to it, so models run on the CPU.")
        else:
            self.fits_gpu.setText("On a GPU: none found, so models run on the CPU.")

    # ---- live usage
    @Slot(object)
    def show_usage(self, sample: UsageSample) -> None:
        self.cpu_bar.set_value(sample.cpu_percent / 100, f"{sample.cpu_percent:.0f} %")
        ram_fraction = sample.ram_used / sample.ram_total if sample.ram_total else 0
        self.ram_bar.set_value(ram_fraction, _used_text(sample.ram_used, sample.ram_total))
        # one moment's numbers: available + in use = total (the report's "Available" was read earlier)
        self.memory_grid.set_row("Total", format_bytes(sample.ram_total))
        self.memory_grid.set_row("Available", format_bytes(sample.ram_total - sample.ram_used))
        for gpu in sample.gpus:
            bar = self.gpu_bars.get(gpu.index)
            if bar is not None and gpu.vram_total:
                text = _used_text(gpu.vram_used, gpu.vram_total)
                if gpu.utilization is not None:
                    text += f", {gpu.utilization} % busy"
                bar.set_value(gpu.vram_used / gpu.vram_total, text)
        self._cpu_history.append(sample.cpu_percent)
        self._ram_history.append(ram_fraction * 100)
        n = len(self._cpu_history)
        xs = list(range(-n + 1, 1))
        self.cpu_curve.setData(xs, list(self._cpu_history))
        self.ram_curve.setData(xs, list(self._ram_history))


def _used_text(used: int, total: int) -> str:
    return f"{format_bytes(used)} of {format_bytes(total)}"
