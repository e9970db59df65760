"""Find my quant: the pure selection over measured results, and the whole job on a tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from quant_helpers import write_tiny_llama

from desktop.eval.evaluate import EvalResult
from desktop.eval.recommend import Candidate, Limits, find_quant, select

MB = 1_000_000


def _result(kld: float, ppl: float, gen_tps: float, base_ppl: float = 10.0) -> EvalResult:
    return EvalResult(model_path="/m.gguf", model_size=1, model_mtime_ns=1, quant_type="X", ppl=ppl, ppl_stderr=0.1,
                      n_tokens=100, n_chunks=2, n_ctx=128, text_name="t.txt", text_sha256="0" * 64,
                      hardware="CPU", threads=2, measured_at=0.0, seconds=1.0, gen_tps=gen_tps, base_ppl=base_ppl,
                      kld_mean=kld)


CANDIDATES = [
    Candidate("Q8_0", "/q8.gguf", 800 * MB, 900 * MB, _result(0.001, 10.01, 20.0)),
    Candidate("Q6_K", "/q6.gguf", 600 * MB, 700 * MB, _result(0.004, 10.05, 24.0)),
    Candidate("Q4_K_M", "/q4.gguf", 450 * MB, 550 * MB, _result(0.02, 10.3, 30.0)),
    Candidate("Q2_K", "/q2.gguf", 300 * MB, 400 * MB, _result(0.3, 14.0, 28.0)),
]


def test_the_smallest_within_the_limits_is_chosen_with_reasons() -> None:
    rec = select(CANDIDATES, Limits(max_memory_bytes=800 * MB, max_kld=0.05))
    assert rec.chosen is not None and rec.chosen.quant_type == "Q4_K_M"
    assert "smallest" in rec.why and "KLD ≤ 0.05" in rec.why and "measured on t.txt" in rec.why
    assert [c.quant_type for c in rec.runners_up] == ["Q6_K"]
    reasons = dict((c.quant_type, r) for c, r in rec.rejected)
    assert "over 800.0 MB" in reasons["Q8_0"] and "estimate" in reasons["Q8_0"]
    assert "KLD 0.3000 is over 0.05" in reasons["Q2_K"]


def test_fastest_and_perplexity_limits() -> None:
    rec = select(CANDIDATES, Limits(max_ppl_increase_pct=5.0, prefer="fastest"))
    assert rec.chosen is not None and rec.chosen.quant_type == "Q4_K_M"  # 30 tok/s, +3%
    rec = select(CANDIDATES, Limits(max_ppl_increase_pct=1.0))
    assert rec.chosen is not None and rec.chosen.quant_type == "Q6_K"
    assert any("perplexity +3.0% is over +1%" in r for _, r in rec.rejected)


def test_nothing_meets_the_limits() -> None:
    rec = select(CANDIDATES, Limits(max_memory_bytes=100 * MB))
    assert rec.chosen is None and "No quant meets" in rec.why and len(rec.rejected) == 4


def test_find_my_quant_makes_measures_and_picks_one_within_the_limits(tmp_path: Path) -> None:
    base = write_tiny_llama(tmp_path / "tiny-F16.gguf")
    common = {"types": ("Q8_0", "Q4_K_M", "Q2_K"), "eval_ctx": 64, "max_chunks": 2,
              "progress": lambda d, t, m: None, "cancelled": lambda: False}
    first = find_quant(base, Limits(n_ctx=64), **common)
    measured = {c.quant_type: c for c in [first.chosen, *first.runners_up] if c is not None}
    assert set(measured) == {"Q8_0", "Q4_K_M", "Q2_K"}
    kld = {name: c.result.kld_mean for name, c in measured.items() if c.result is not None}
    assert kld["Q8_0"] < kld["Q4_K_M"] < kld["Q2_K"]
    # memory that leaves Q8_0 out (it is then not made at all) and a KLD limit between Q4_K_M and Q2_K
    memory = (measured["Q8_0"].memory_bytes + measured["Q4_K_M"].memory_bytes) // 2
    limits = Limits(max_memory_bytes=memory, max_kld=(kld["Q4_K_M"] + kld["Q2_K"]) / 2, n_ctx=64)
    (tmp_path / "tiny-Q8_0.gguf").unlink()
    second = find_quant(base, limits, **common)
    assert second.chosen is not None and second.chosen.quant_type == "Q4_K_M"
    assert second.chosen.memory_bytes <= limits.max_memory_bytes
    assert second.chosen.result is not None and second.chosen.result.kld_mean <= limits.max_kld
    reasons = {c.quant_type: r for c, r in second.rejected}
    assert "KLD" in reasons["Q2_K"] and "estimate" in reasons["Q8_0"]
    assert not (tmp_path / "tiny-Q8_0.gguf").exists()
    # the measurements came back from the store: same numbers, same time stamp
    assert dataclasses.asdict(second.chosen.result) == dataclasses.asdict(measured["Q4_K_M"].result)


def test_the_memory_limit_entered_is_the_one_the_recommendation_states(qtbot) -> None:  # noqa: ANN001 - pytest-qt
    """8.0 GB entered said "≤ 8.6 GB" in the recommendation (the field counted 2^30 bytes a GB, the text 10^9)."""
    from desktop.ui.compare.find import FindPanel

    panel = FindPanel()
    qtbot.addWidget(panel)
    panel.memory.setValue(8.0)
    limits = panel.limits(4096)
    assert limits.max_memory_bytes == 8_000_000_000
    assert "memory ≤ 8.0 GB at context 4096" in limits.describe()


def test_sizes_on_the_command_line_are_decimal_unless_binary_units_are_written() -> None:
    from desktop.errors import UserError
    from desktop.verbs.recommend import parse_size

    assert parse_size("8GB") == parse_size("8 gb") == 8_000_000_000
    assert parse_size("800MB") == 800_000_000 and parse_size("1GiB") == 2**30
    with pytest.raises(UserError, match="not a size"):
        parse_size("eight")
