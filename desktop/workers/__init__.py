"""The bridge between Qt-free jobs and the GUI: runs them off the GUI thread and turns callbacks into signals."""

from desktop.workers.jobs import Job, JobManager, JobState
from desktop.workers.library_watch import LibraryWatcher

__all__ = ["Job", "JobManager", "JobState", "LibraryWatcher"]
