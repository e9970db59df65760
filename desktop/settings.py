"""User settings: one typed dataclass with defaults and a version; a JSON file is only its storage."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from desktop import paths
from desktop.errors import UserError
from desktop.fileio import write_text_atomic

log = logging.getLogger(__name__)

SETTINGS_VERSION = 1


@dataclass
class Settings:
    version: int = SETTINGS_VERSION
    models_dir: str = ""  # empty: the default folder under the data dir
    cpu_repack: bool = False  # llama.cpp's AMX/repack buffers; off by default, they crash some CPUs on Q4_K
    hf_offline: bool = False


def load_settings() -> Settings:
    path = paths.settings_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        log.warning("settings file %s unreadable (%s); using defaults", path, exc)
        return Settings()
    known = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in raw.items() if k in known}
    values["version"] = SETTINGS_VERSION
    return Settings(**values)


def save_settings(settings: Settings) -> None:
    write_text_atomic(paths.settings_path(), json.dumps(dataclasses.asdict(settings), indent=2))


def models_dir() -> Path:
    """The folder GGUF outputs go to: the user's choice from settings, else the default."""
    chosen = load_settings().models_dir
    path = Path(chosen) if chosen else paths.default_models_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a drive that is gone, a file in the way, no permission
        raise UserError(f"The models folder {path} cannot be used ({exc.strerror or exc}).",
                        "Choose another output folder on the Quantize page, or reconnect the drive it is on.",
                        kind="models_folder") from exc
    return path


def remember_models_dir(folder: Path | str, *, progress: object = None, cancelled: object = None) -> bool:
    """Keep ``folder`` as the folder GGUF outputs go to (the Quantize page's output folder, Compare's quants);
    a job function, so that the window does not write on its thread. False when it was the setting already."""
    current = load_settings()
    chosen = str(Path(folder).expanduser())
    if current.models_dir == chosen or (not current.models_dir and Path(chosen) == paths.default_models_dir()):
        return False
    save_settings(dataclasses.replace(current, models_dir=chosen))
    return True
