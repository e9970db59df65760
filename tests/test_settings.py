"""User settings on disk: defaults when there is no file or a broken one, unknown keys ignored, and the output
folder remembered only when it changed."""

from __future__ import annotations

import json
from pathlib import Path

from desktop import paths
from desktop.settings import Settings, load_settings, models_dir, remember_models_dir, save_settings


def test_no_file_or_a_broken_one_gives_the_defaults() -> None:
    assert load_settings() == Settings()
    paths.settings_path().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_path().write_text("{not json", encoding="utf-8")
    assert load_settings() == Settings()


def test_unknown_keys_are_ignored_and_known_ones_kept() -> None:
    save_settings(Settings(cpu_repack=True))
    raw = json.loads(paths.settings_path().read_text(encoding="utf-8"))
    raw["from_a_newer_version"] = 1
    paths.settings_path().write_text(json.dumps(raw), encoding="utf-8")
    assert load_settings() == Settings(cpu_repack=True)


def test_the_output_folder_is_remembered_when_it_changes(tmp_path: Path) -> None:
    assert remember_models_dir(paths.default_models_dir()) is False  # the default needs no file
    assert not paths.settings_path().exists()
    chosen = tmp_path / "my models"
    assert remember_models_dir(chosen) is True
    assert load_settings().models_dir == str(chosen) and models_dir() == chosen and chosen.is_dir()
    assert remember_models_dir(chosen) is False
    save_settings(Settings(cpu_repack=True, models_dir=str(chosen)))
    assert remember_models_dir(tmp_path / "other") is True
    assert load_settings() == Settings(cpu_repack=True, models_dir=str(tmp_path / "other"))  # the rest is kept
