"""The library's change notification as a Qt signal: pages follow the library instead of keeping lists of their own.

:func:`desktop.library.subscribe` calls back from whichever thread changed the library; :class:`LibraryWatcher`
turns those calls into one queued ``sig_changed`` in the GUI thread, coalesced (a queue of quants registering
three files gives one reload, not three)."""

from __future__ import annotations

import weakref

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from desktop import library

COALESCE_MS = 150


class LibraryWatcher(QObject):
    sig_changed = Signal()
    """The library changed (a model or checkpoint was added, removed or updated)."""

    _sig_poke = Signal()  # emitted from any thread; queued to this object's (the GUI) thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(COALESCE_MS)
        self._timer.timeout.connect(self.sig_changed)
        self._sig_poke.connect(self._on_poke)
        me = weakref.ref(self)  # the library's listener list must not keep a page alive

        def poke() -> None:
            watcher = me()
            if watcher is None:
                library.unsubscribe(poke)
                return
            try:
                watcher._sig_poke.emit()
            except RuntimeError:  # its Qt object is already deleted
                library.unsubscribe(poke)

        self._poke = poke
        library.subscribe(poke)

    def close(self) -> None:
        library.unsubscribe(self._poke)

    @Slot()
    def _on_poke(self) -> None:
        self._timer.start()
