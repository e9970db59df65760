"""Python's cycle collector, run on the GUI thread only.

Python collects reference cycles in whichever thread happens to allocate when a threshold is crossed: a job's worker
thread as often as the GUI thread. A cycle that holds Qt objects (a closed page whose lambdas point back at it, a
finished job and its relay) is then destroyed on that worker thread. Qt forbids deleting a QObject from another thread,
and with PySide it can deadlock: the worker holds Qt's connection lock inside ``QObject::~QObject`` and waits for the
GIL, while the GUI thread holds the GIL and waits for that lock inside ``connect`` (a full test run hung exactly so).

So automatic collection is switched off and a timer on the GUI thread runs it, generation by generation, with
Python's own thresholds; worker threads still free everything that is not in a cycle as before.
"""

from __future__ import annotations

import gc
import logging

from PySide6.QtCore import QObject, QTimer, Slot

log = logging.getLogger(__name__)

CHECK_MS = 200  # how often the counts are looked at; a look is three integer comparisons


class GuiThreadCollector(QObject):
    """Owns garbage collection while it exists (create it on the GUI thread, once, after QApplication)."""

    def __init__(self, parent: QObject | None = None, *, interval_ms: int = CHECK_MS) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        self.collections = 0
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self._timer.start()

    @Slot()
    def check(self) -> None:
        """Collect the generations whose counts passed their thresholds, as Python itself would have."""
        counts = gc.get_count()
        if counts[0] <= self.thresholds[0]:
            return
        generation = 0
        if counts[1] > self.thresholds[1]:
            generation = 2 if counts[2] > self.thresholds[2] else 1
        gc.collect(generation)
        self.collections += 1

    def stop(self) -> None:
        """Hand collection back to Python (for a process that goes on without a GUI thread)."""
        self._timer.stop()
        if self._was_enabled:
            gc.enable()


_installed: GuiThreadCollector | None = None


def install_gui_thread_collector(app: QObject) -> GuiThreadCollector:
    """The process-wide collector, parented to ``app`` (the QApplication); installing twice returns the first."""
    global _installed
    if _installed is None:
        _installed = GuiThreadCollector(app)
        log.debug("cycle collection moved to the GUI thread (thresholds %s)", _installed.thresholds)
    return _installed
