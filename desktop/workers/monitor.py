"""Live CPU, RAM and VRAM usage, sampled once a second on a worker thread."""

from __future__ import annotations

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from desktop.hardware.report import UsageSampler


class _Sampler(QObject):
    sig_sample = Signal(object)

    def __init__(self, interval_ms: int) -> None:
        super().__init__()
        self._interval_ms = interval_ms
        self._timer: QTimer | None = None
        self._sampler: UsageSampler | None = None

    @Slot()
    def start(self) -> None:
        self._sampler = UsageSampler()  # NVML init happens here, off the GUI thread
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(self._interval_ms)
        self._tick()

    @Slot()
    def _tick(self) -> None:
        if self._sampler is not None:
            self.sig_sample.emit(self._sampler.sample())

    @Slot()
    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None


class UsageMonitor(QObject):
    """Owns the sampling thread. ``sig_sample`` carries a :class:`desktop.hardware.report.UsageSample`."""

    sig_sample = Signal(object)
    """A new usage sample, about once a second."""
    _sig_stop = Signal()

    def __init__(self, parent: QObject | None = None, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self._thread = QThread()
        self._thread.setObjectName("usage-monitor")
        self._worker = _Sampler(interval_ms)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.start)
        self._worker.sig_sample.connect(self.sig_sample)
        self._sig_stop.connect(self._worker.stop)
        self._thread.finished.connect(self._worker.deleteLater)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_ms: int = 3000) -> None:
        if self._thread.isRunning():
            self._sig_stop.emit()
            self._thread.quit()
            self._thread.wait(timeout_ms)
