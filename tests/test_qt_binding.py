"""The Qt binding must not corrupt Python's reference counts.

PySide6 6.12.0 on Python 3.11 dropped a reference to None on every call of a method returning nothing; a window
that redraws a live graph aborted within minutes ("Fatal Python error: none_dealloc"). pyproject.toml excludes
that release; this test fails (instead of crashing) on any binding with the same fault.
"""

from __future__ import annotations

import sys

from pytestqt.qtbot import QtBot


def test_void_calls_leave_none_true_and_false_alone(qtbot: QtBot) -> None:
    from PySide6.QtWidgets import QLabel

    label = QLabel()
    qtbot.addWidget(label)
    before = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    for _ in range(2000):
        label.setText("tok/s")
        label.isVisible()
        label.update()
    after = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    assert [a - b for a, b in zip(after, before, strict=True)] == [0, 0, 0]
