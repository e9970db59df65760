"""Cycles holding Qt objects are freed on the GUI thread, never on a worker thread that happened to allocate."""

from __future__ import annotations

import gc
import threading

from PySide6.QtCore import QObject, Qt
from pytestqt.qtbot import QtBot

from desktop.workers.collector import GuiThreadCollector


def test_a_qt_cycle_dropped_on_a_worker_thread_is_destroyed_on_the_gui_thread(
    qtbot: QtBot, gui_thread_collector: GuiThreadCollector
) -> None:
    assert not gc.isenabled()
    gc.collect()
    destroyed_on: list[str] = []

    def worker() -> None:
        holder = QObject()
        holder.destroyed.connect(lambda: destroyed_on.append(threading.current_thread().name),
                                 Qt.ConnectionType.DirectConnection)
        cycle: dict[str, object] = {"qt": holder}
        cycle["self"] = cycle  # only the cycle collector can free it
        del holder, cycle
        # far past the threshold (allocations minus frees of containers): Python itself would collect right here
        kept = [[] for _ in range(20 * gui_thread_collector.thresholds[0])]
        assert gc.get_count()[0] > gui_thread_collector.thresholds[0]
        del kept

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    thread.join()
    assert destroyed_on == []  # nothing was collected on the worker
    kept = [[] for _ in range(2 * gui_thread_collector.thresholds[0])]  # the GUI thread allocates in turn
    qtbot.waitUntil(lambda: bool(destroyed_on), timeout=5_000)  # and the collector's timer collects, here
    del kept
    assert destroyed_on == [threading.main_thread().name]
    assert gui_thread_collector.collections >= 1


def test_the_collector_follows_pythons_generations() -> None:
    collector = GuiThreadCollector(interval_ms=60_000)
    try:
        gc.collect()
        collector.check()  # below every threshold: nothing to do
        assert collector.collections == 0
        junk = [[] for _ in range(collector.thresholds[0] + 10)]
        collector.check()
        assert collector.collections == 1 and gc.get_count()[0] < collector.thresholds[0]
        del junk
    finally:
        collector._timer.stop()
