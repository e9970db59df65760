"""What a measurement is of and what it gives: the evaluation text (:class:`EvalText`, the bundled one or the
user's) and one model's result on it (:class:`EvalResult`); :mod:`desktop.eval.evaluate` measures."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from desktop.errors import UserError

__all__ = ["DEFAULT_TEXT", "EvalResult", "EvalText", "load_text"]

DEFAULT_TEXT = "texts/eval.txt"


@dataclass(frozen=True)
class EvalText:
    name: str  # "eval.txt (bundled)" or the user's file name
    sha256: str
    content: str


def load_text(text_path: Path | str | None = None) -> EvalText:
    """The evaluation text: the user's file, or the bundled ``resources/texts/eval.txt``."""
    if text_path is None:
        from desktop import resources

        path, name = resources.path(DEFAULT_TEXT), f"{Path(DEFAULT_TEXT).name} (bundled)"
    else:
        path = Path(text_path)
        name = path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"The text {path} cannot be read ({exc.strerror or exc}).", "Choose another file.") from exc
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"The text {path.name} is not UTF-8 text.", "Save it as UTF-8 and retry.") from exc
    return EvalText(name=name, sha256=hashlib.sha256(raw).hexdigest(), content=content)


@dataclass(frozen=True)
class EvalResult:
    """One model measured on one text at one context size, on this machine.

    Quality (``ppl``, ``kld_*``, ``top1_agreement``) is measured on ``n_tokens`` scored tokens of
    ``text_name``; KLD and top-1 are None without a base. Speeds are measured on ``hardware`` with ``threads``:
    ``prompt_tps`` over batches of ``prompt_batch`` tokens, ``gen_tps`` over ``gen_tokens`` generated tokens (chat's loop).
    ``kld_p99`` is the 99th percentile of per-token KLD. ``measured_at`` is a Unix time.
    """

    model_path: str
    model_size: int
    model_mtime_ns: int
    quant_type: str
    ppl: float
    ppl_stderr: float
    n_tokens: int
    n_chunks: int
    n_ctx: int
    text_name: str
    text_sha256: str
    hardware: str
    threads: int
    measured_at: float
    seconds: float
    prompt_tps: float | None = None
    prompt_batch: int = 0
    gen_tps: float | None = None
    gen_tokens: int = 0
    max_chunks: int = 0  # the chunk limit asked for (0: the whole text)
    base_path: str | None = None
    base_size: int | None = None
    base_mtime_ns: int | None = None
    base_quant_type: str | None = None
    base_ppl: float | None = None
    kld_mean: float | None = None
    kld_stderr: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None
    prompt_tps_runs: tuple[float, ...] = ()  # every timed run (desktop.eval.speed); prompt_tps is their median
    gen_tps_runs: tuple[float, ...] = ()  # likewise for gen_tps; empty: a single run from an older version

    @property
    def ppl_increase_pct(self) -> float | None:
        """Perplexity against the base's on the same tokens, in percent (None without a base)."""
        if self.base_ppl is None or not self.base_ppl:
            return None
        return 100.0 * (self.ppl / self.base_ppl - 1.0)

    def provenance(self) -> str:
        """Where the numbers come from, in one line (every number shown should carry this)."""
        return (f"measured on {self.text_name} ({self.n_tokens} tokens scored, context {self.n_ctx}) "
                f"on {self.hardware}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for runs in ("prompt_tps_runs", "gen_tps_runs"):  # JSON gives lists; equal results compare equal
            if runs in values:
                values[runs] = tuple(values[runs])
        return cls(**values)
