"""Evaluation on the real Gemma 3 270M ladder (F16 and five quants), checked against an independent numpy reference
computed from raw llama.cpp logits (tests/eval_helpers.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import demo_model_path  # tests/ is on sys.path under pytest
from eval_helpers import LADDER, make_ladder, reference_metrics

from desktop import resources
from desktop.errors import Cancelled, UserError
from desktop.eval.evaluate import EvalResult, base_cache_path, evaluate, load_text
from desktop.eval.metrics import BaseLogProbs

N_CTX = 256
CHUNKS = 2
THREADS = 2


@pytest.fixture(scope="session")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_ladder(demo_model_path(), tmp_path_factory.mktemp("ladder"))


class Measured:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.results: dict[str, EvalResult] = {}
        self.messages: dict[str, list[tuple[float, float, str]]] = {}


@pytest.fixture(scope="session")
def measured(ladder: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Measured]:
    """Every model of the ladder measured once against the F16, in a data folder of its own."""
    out = Measured(tmp_path_factory.mktemp("eval-home"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTDESK_HOME", str(out.home))
        for name in ("F16", *LADDER):
            seen: list[tuple[float, float, str]] = []
            out.results[name] = evaluate(
                ladder[name], base_path=ladder["F16"], n_ctx=N_CTX, max_chunks=CHUNKS, threads=THREADS,
                gen_tokens=8, progress=lambda d, t, m, seen=seen: seen.append((d, t, m)),
            )
            out.messages[name] = seen
    yield out


def test_numbers_agree_with_an_independent_reference(ladder: dict[str, Path], measured: Measured) -> None:
    picked = {name: ladder[name] for name in ("Q4_K_M", "Q2_K")}
    reference = reference_metrics(ladder["F16"], picked, load_text().content, N_CTX, CHUNKS, threads=THREADS)
    base = reference["base"]
    assert measured.results["F16"].ppl == pytest.approx(base.ppl, rel=2e-3)
    for name in picked:
        ours, ref = measured.results[name], reference[name]
        assert ours.n_tokens == ref.n_tokens == CHUNKS * (N_CTX // 2 - 1)
        assert ours.ppl == pytest.approx(ref.ppl, rel=2e-3)
        assert ours.base_ppl == pytest.approx(base.ppl, rel=2e-3)
        # llama.cpp's KLD leaves out base entries with log p <= -16 and stores log p in 16 bits: both tiny
        assert ours.kld_mean == pytest.approx(ref.kld_mean, rel=0.02, abs=3e-4)
        assert ours.top1_agreement == pytest.approx(ref.top1, abs=2.5 / ref.n_tokens)
    assert reference["Q2_K"].kld_mean > 5 * 3e-4  # the tolerance is small next to what is measured


def test_kld_grows_as_bits_fall(measured: Measured) -> None:
    klds = [measured.results[name].kld_mean for name in LADDER]
    assert all(k is not None for k in klds)
    assert klds == sorted(klds), dict(zip(LADDER, klds, strict=True))
    assert len(set(klds)) == len(klds)
    top1 = [measured.results[name].top1_agreement for name in LADDER]
    assert top1[0] > top1[-1]
    p99 = [measured.results[name].kld_p99 for name in LADDER]
    assert p99[0] < p99[-1]
    sizes = [measured.results[name].model_size for name in LADDER]
    assert sizes == sorted(sizes, reverse=True)


def test_the_base_against_itself_is_the_encoding_floor(measured: Measured) -> None:
    own = measured.results["F16"]
    assert own.kld_mean is not None and 0 <= own.kld_mean < 1e-4
    assert own.top1_agreement == 1.0
    assert own.base_ppl == pytest.approx(own.ppl, rel=1e-6)


def test_every_number_says_what_it_was_measured_on(measured: Measured) -> None:
    result = measured.results["Q4_K_M"]
    text_bytes = resources.path("texts/eval.txt").read_bytes()
    assert result.text_name == "eval.txt (bundled)"
    assert result.text_sha256 == hashlib.sha256(text_bytes).hexdigest()
    assert result.n_ctx == N_CTX and result.n_chunks == CHUNKS and result.max_chunks == CHUNKS
    assert result.quant_type == "Q4_K_M" and result.base_quant_type == "F16"
    assert f"{THREADS} threads" in result.hardware and "CPU only" in result.hardware
    assert result.prompt_tps and result.prompt_tps > 0 and result.prompt_batch == N_CTX // 2
    assert result.gen_tps and result.gen_tps > 0 and result.gen_tokens == 8
    assert "eval.txt" in result.provenance() and result.hardware in result.provenance()
    assert EvalResult.from_dict(result.to_dict()) == result


def test_progress_is_one_line_per_chunk(measured: Measured) -> None:
    first = measured.messages["F16"]  # the base pass and the model pass are one: it is its own base
    assert [(d, t) for d, t, _ in first] == [(1, 2), (2, 2)]
    assert first[0][2].startswith("chunk 1/2, PPL so far ")
    quant = measured.messages["Q8_0"]  # the base's distributions were cached by then: one pass
    assert [m.split(",")[0] for _, _, m in quant] == ["chunk 1/2", "chunk 2/2"]
    assert "KLD so far" in quant[-1][2]


def test_the_base_is_computed_once_and_cached_compactly(ladder: dict[str, Path], measured: Measured,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTDESK_HOME", str(measured.home))
    text = load_text()
    cache = base_cache_path(ladder["F16"], text.sha256, N_CTX)
    assert cache.exists() and not list(cache.parent.glob("*.partial"))
    stored = BaseLogProbs.load(cache)
    assert len(stored.chunks) == CHUNKS and stored.n_vocab == 262144
    per_token = cache.stat().st_size / (CHUNKS * (N_CTX // 2 - 1))
    assert per_token < 0.5 * 2 * stored.n_vocab  # well under llama.cpp's full uint16 row
    ids = np.concatenate([c.ids for c in stored.chunks])
    assert ids.min() >= 0 and ids.max() < stored.n_vocab
    # a chunk-limited run reuses it: one pass, no new cache file
    seen: list[tuple[float, float, str]] = []
    again = evaluate(ladder["Q8_0"], base_path=ladder["F16"], n_ctx=N_CTX, max_chunks=1, threads=THREADS,
                     gen_tokens=0, progress=lambda d, t, m: seen.append((d, t, m)))
    assert [(d, t) for d, t, _ in seen] == [(1, 1)]
    assert again.gen_tps is None and again.kld_mean is not None
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]


def test_a_model_with_another_vocabulary_is_refused(measured: Measured, ladder: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from quant_helpers import write_tiny_llama

    monkeypatch.setenv("QUANTDESK_HOME", str(measured.home))  # the base's cache is there: no base pass
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    with pytest.raises(UserError) as info:
        evaluate(tiny, base_path=ladder["F16"], n_ctx=N_CTX, max_chunks=1, threads=THREADS, gen_tokens=0)
    assert info.value.kind == "different_tokenizer"


def test_cancel_between_chunks_leaves_no_cache(ladder: dict[str, Path]) -> None:
    seen: list[str] = []
    with pytest.raises(Cancelled):
        evaluate(ladder["Q2_K"], base_path=ladder["F16"], n_ctx=N_CTX, max_chunks=CHUNKS, threads=THREADS,
                 progress=lambda d, t, m: seen.append(m), cancelled=lambda: bool(seen))
    assert seen == [seen[0]] and seen[0].startswith("base model: chunk 1/2")
    cache_dir = Path(os.environ["QUANTDESK_HOME"]) / "eval-cache"
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_cancel_stops_a_decode_in_progress(ladder: dict[str, Path]) -> None:
    calls: list[int] = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) >= 2  # 1: before the first chunk; 2: llama.cpp's abort callback inside the decode

    seen: list[str] = []
    with pytest.raises(Cancelled):
        evaluate(ladder["F16"], n_ctx=N_CTX, max_chunks=CHUNKS, threads=THREADS,
                 progress=lambda d, t, m: seen.append(m), cancelled=cancelled)
    assert seen == [] and len(calls) == 2
