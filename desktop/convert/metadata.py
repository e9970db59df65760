"""``general.*`` metadata from config.json and the model card (README.md front matter)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import gguf
import yaml

log = logging.getLogger(__name__)


MAX_CARD_BYTES = 1024 * 1024  # a model card's front matter is a few KB; the rest of README.md is not read


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: nine aliases of nine aliases (a 'billion laughs' card) would otherwise
    expand into billions of items wherever the card's values are walked. Real model cards do not use them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not accepted in a model card")
        return super().compose_node(parent, index)


def model_card(src: Path) -> dict[str, Any]:
    """The YAML front matter of README.md, or {} (also for a card that uses YAML aliases or is not readable)."""
    readme = src / "README.md"
    if not readme.is_file():
        return {}
    try:
        with open(readme, "rb") as f:
            text = f.read(MAX_CARD_BYTES).decode("utf-8", "replace")
    except OSError:
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.load(match.group(1), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError):
        log.info("the model card of %s is not used: its front matter is not plain YAML", src.name)
        return {}
    return data if isinstance(data, dict) else {}


def model_name(src: Path, config: dict[str, Any], card: dict[str, Any]) -> str:
    """A readable name: the card's, else the Hugging Face repo the folder came from, else the folder's."""
    if isinstance(card.get("model_name"), str):
        return card["model_name"]
    for part in reversed(src.resolve().parts):
        if part.startswith("models--"):  # the Hugging Face cache: models--org--name/snapshots/<sha>
            return part.split("--")[-1]
    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path and not Path(name_or_path).is_absolute():
        return name_or_path.rstrip("/").split("/")[-1]
    return src.resolve().name


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return []


def write_general(w: gguf.GGUFWriter, src: Path, config: dict[str, Any], n_params: int) -> dict[str, Any]:
    """Write general.name, size_label, license and base models; return what was written (for the result)."""
    card = model_card(src)
    name = model_name(src, config, card)
    label = gguf.utility.size_label(n_params, 0, 0, 0)
    w.add_name(name)
    w.add_size_label(label)
    written: dict[str, Any] = {"name": name, "size_label": label}
    licence = card.get("license")
    if isinstance(licence, str):
        w.add_license(licence)
        written["license"] = licence
    if isinstance(card.get("license_name"), str):
        w.add_license_name(card["license_name"])
    if isinstance(card.get("license_link"), str):
        w.add_license_link(card["license_link"])
    bases = _as_list(card.get("base_model"))
    if bases:
        w.add_base_model_count(len(bases))
        for i, base in enumerate(bases):
            w.add_base_model_name(i, base.split("/")[-1])
            if "/" in base and not base.startswith(("http://", "https://")):
                w.add_base_model_organization(i, base.split("/")[0])
                w.add_base_model_repo_url(i, f"https://huggingface.co/{base}")
        written["base_model"] = bases
    tags = _as_list(card.get("tags"))
    if tags:
        w.add_tags(tags)
    languages = _as_list(card.get("language"))
    if languages:
        w.add_languages(languages)
    return written
