"""Conversation storage for the Chat page: :class:`~desktop.chat.conversations.ConversationStore` calls run as Jobs,
one at a time and in the order asked, so a reply is never written before the conversation it belongs to."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Slot

from desktop.chat.conversations import ConversationStore
from desktop.jobs import JobError
from desktop.workers import Job, JobManager

log = logging.getLogger(__name__)

StoreFn = Callable[[ConversationStore], Any]


class StoreQueue(QObject):
    def __init__(self, jobs: JobManager, db_path: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self._db_path = db_path
        self._store: ConversationStore | None = None
        self._open_lock = threading.Lock()
        self._queue: deque[tuple[Job, StoreFn]] = deque()
        self._running: Job | None = None
        self.on_error: Callable[[JobError], None] = lambda error: None

    def _get_store(self) -> ConversationStore:
        with self._open_lock:  # opened (and its tables created) in the first job, off the GUI thread
            if self._store is None:
                self._store = ConversationStore(self._db_path)
            return self._store

    def call(
        self,
        title: str,
        fn: StoreFn,
        on_result: Callable[[Any], None] | None = None,
    ) -> Job:
        job = Job(title, lambda progress, cancelled: fn(self._get_store()), visible=False)
        if on_result is not None:
            job.sig_result.connect(on_result)
        job.sig_error.connect(self._on_error)
        job.sig_finished.connect(self._next)
        self._queue.append((job, fn))
        if self._running is None:
            self._next()
        return job

    def idle(self) -> bool:
        return self._running is None and not self._queue

    @Slot()
    def _next(self) -> None:
        self._running = None
        if self._queue:
            self._running = self._queue.popleft()[0]
            self._jobs.start(self._running)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.on_error(error)

    def close(self) -> None:
        """At shutdown: write what is still queued (small SQLite transactions), then close the database."""
        if self._running is not None:
            self._running.wait(5.0)
        pending, self._queue = list(self._queue), deque()
        for _job, fn in pending:  # here rather than lost: a reply that just ended still gets saved
            try:
                fn(self._get_store())
            except Exception:  # noqa: BLE001 - shutting down; the log has it
                log.exception("saving the conversation at shutdown failed")
        with self._open_lock:
            if self._store is not None:
                self._store.close()
                self._store = None
