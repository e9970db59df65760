"""What QuantDesk names the files it makes: the one place output names are built.

* :func:`model_name` is the model's name for its outputs: a Hugging Face snapshot is named by its repo, a folder by
  the folder, a GGUF by its file name without the type tag, and a GGUF from the Hugging Face cache with a generic
  file name ("ggml-model-f16.gguf") by repo and file, so two repos' files never share a name.
* :func:`output_path` is ``<folder>/<model>-<TAG>.gguf``, the name a quant or a conversion gets (other code looks
  outputs up by it); :func:`free_output_path` is the same with the collision rule of :func:`desktop.fileio.free_path`:
  an existing file (or link) is never replaced, the next free name is taken instead.
* :func:`safe_name` turns any label into a file-name stem.
* The default folder is the source's own, except in the Hugging Face cache (a shared store QuantDesk must not write
  into): there it is the models folder from Settings.

Paths are never resolved: a name in the cache is a link to a shared blob, and writing through it would change
every model that shares the blob.
"""

from __future__ import annotations

import re
from pathlib import Path

from desktop.fileio import free_path
from desktop.quant import types as quant_types

__all__ = ["default_output_dir", "free_output_path", "hf_cache_repo", "model_name", "model_stem", "output_path",
           "safe_name"]

_TYPE_SUFFIX = re.compile(
    r"[-_.](?:" + "|".join(sorted((re.escape(t.name) for t in quant_types.QUANT_TYPES), key=len, reverse=True))
    + r")$",
    re.IGNORECASE,
)


def safe_name(text: str, fallback: str = "model") -> str:
    """A file-name stem from any label: letters, digits and ``._+-`` kept, every other run becomes one "-"."""
    return re.sub(r"[^\w.+-]+", "-", text).strip("-.") or fallback


def model_stem(source: Path | str) -> str:
    """The file's model name without a trailing type tag: "gemma-3-270m-F16.gguf" -> "gemma-3-270m"."""
    stem = Path(source).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return _TYPE_SUFFIX.sub("", stem) or stem


def hf_cache_repo(path: Path | str) -> str | None:
    """The repo id ("org/name") when ``path`` lies in a Hugging Face cache snapshot, else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return parts[i - 1][len("models--"):].replace("--", "/")
    return None


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def model_name(source: Path | str) -> str:
    """The model's name for the files made from it (see the module docstring)."""
    source = Path(source)
    repo = hf_cache_repo(source)
    repo_name = repo.rsplit("/", 1)[-1] if repo else None
    if source.suffix.lower() != ".gguf":  # a checkpoint folder
        return safe_name(repo_name or source.name)
    stem = model_stem(source)
    if repo_name:
        base = re.sub(r"[-_.]gguf$", "", repo_name, flags=re.IGNORECASE)
        if _squash(base) not in _squash(stem):
            return safe_name(f"{base}-{stem}")
    return safe_name(stem)


def default_output_dir(source: Path | str) -> Path:
    """Where outputs go when no folder is given: next to the source, but never into the Hugging Face cache."""
    source = Path(source)
    if hf_cache_repo(source) is not None:
        from desktop import settings

        return Path(settings.models_dir())
    return source.parent


def output_path(source: Path | str, tag: str, out_dir: Path | str | None = None, suffix: str = ".gguf") -> Path:
    """``<out_dir>/<model>-<TAG>.gguf`` (``tag`` a type name, canonical case for known types)."""
    folder = Path(out_dir) if out_dir is not None else default_output_dir(source)
    try:
        tag = quant_types.by_name(tag).name
    except Exception:  # noqa: BLE001 - not a quant type ("imatrix", a conversion type): used as given
        pass
    return folder / f"{model_name(source)}-{tag}{suffix}"


def free_output_path(source: Path | str, tag: str, out_dir: Path | str | None = None, *, suffix: str = ".gguf",
                     taken: set[Path] | None = None) -> Path:
    """:func:`output_path`, or the next free name if that one exists (or is in ``taken``)."""
    return free_path(output_path(source, tag, out_dir, suffix), taken)
