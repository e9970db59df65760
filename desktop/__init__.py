"""QuantDesk: see what your machine can run, make GGUF quants, measure them, chat with them.

The modules directly under ``desktop`` are the Qt-free domain layer. ``desktop.workers`` bridges them to Qt,
``desktop.ui`` holds widgets only.
"""

__version__ = "0.1.0"
APP_NAME = "QuantDesk"
