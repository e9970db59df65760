"""Where QuantDesk keeps its data.

Everything hangs off :func:`data_dir`, which is the platform's user data folder, or ``QUANTDESK_HOME`` when that
is set (tests point it at a temporary folder so they never touch the real user's data). Model downloads go to
the standard Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), not here, so other tools share them.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from desktop import APP_NAME


def data_dir() -> Path:
    override = os.environ.get("QUANTDESK_HOME")
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_models_dir() -> Path:
    return data_dir() / "models"


def database_path() -> Path:
    return data_dir() / "quantdesk.sqlite3"


def logs_dir() -> Path:
    path = data_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def settings_path() -> Path:
    return data_dir() / "settings.json"
