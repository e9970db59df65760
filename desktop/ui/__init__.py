"""Widgets and pages. No file, network or llama.cpp work happens here: pages start jobs through
:class:`desktop.workers.JobManager` and show what comes back."""
