"""Progress as data: the tracker that turns reports into fraction, speed, ETA and one line, the one CLI printer, and
the rule that no job writes speed or ETA into its note."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from desktop.jobs import Progress, ProgressPrinter, ProgressTracker, RateMeter, with_fields


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_no_eta_until_the_rate_means_something() -> None:
    """The first reports of an 8-second run (a tiny first tensor right after start-up) once gave "3 min 38 s left"."""
    clock = Clock()
    meter = RateMeter(clock=clock)
    meter.add(0.0)
    clock.now = 0.05
    meter.add(0.0002)  # a norm vector: almost nothing done, in almost no time
    assert meter.eta(1.0) is None
    clock.now = 1.0
    meter.add(0.05)
    assert meter.eta(1.0) is None  # still warming up: start-up and tiny tensors say nothing yet
    for step in range(3, 17):  # then a steady 1/8 per second
        clock.now = step * 0.5
        meter.add(min(1.0, 0.05 + (clock.now - 1.0) / 8))
        eta = meter.eta(1.0)
        truth = 8.6 - clock.now  # 0.05 + (t - 1) / 8 reaches 1 at t = 8.6
        if clock.now < 2.0:
            assert eta is None
        elif clock.now >= 2.5 and truth > 0.5:  # the slow start weighs on the first half second of estimates
            assert eta is not None and abs(eta - truth) / truth < 0.35, (clock.now, eta, truth)


def test_tracker_makes_one_eta_for_a_multi_step_job() -> None:
    clock = Clock()
    tracker = ProgressTracker(clock=clock)
    for i in range(41):  # two steps of 20 s each, 100 units per step
        clock.now = i
        index, done = divmod(i * 5, 100) if i < 40 else (1, 100)
        tracker.update(Progress(done, 100, f"tensor {done}", step=["Q8_0", "Q4_K_M"][index], index=index, count=2))
        if i == 30:
            eta = tracker.eta()
            assert eta is not None and abs(eta - 10) < 1.0
            assert tracker.fraction == 0.75
            assert tracker.line().startswith("Q4_K_M (2/2) · tensor 50 · ")
            assert tracker.line().endswith("10 s left")
            assert "/s" not in tracker.line()  # not bytes: no speed
    assert tracker.fraction == 1.0 and tracker.eta() is None


def test_bytes_get_a_speed() -> None:
    clock = Clock()
    tracker = ProgressTracker(clock=clock)
    for i in range(6):
        clock.now = i
        tracker.update(Progress(i * 10_000_000, 100_000_000, "1 of 3 files", unit="B"))
    assert tracker.speed() == pytest.approx(10_000_000)
    assert tracker.line() == "1 of 3 files · 50.0 MB of 100.0 MB · 10.0 MB/s · 5 s left"


def test_the_cli_printer_prints_steps_and_tenths_without_repeating() -> None:
    clock = Clock()
    out = io.StringIO()
    printer = ProgressPrinter(out, clock=clock)
    for index, step in enumerate(["Q8_0", "Q4_K_M"]):
        for done in range(0, 101, 5):
            clock.now += 0.2
            printer(done, 100, f"tensor {done}", step=step, index=index, count=2)
    printer.end()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Q8_0 (1/2) · 0% · tensor 0")
    assert any(line.startswith("Q4_K_M (2/2) · 75% · tensor 50") for line in lines)
    assert len(lines) == len(set(lines)) and len(lines) <= 24
    assert any(line.endswith(" left") for line in lines)


def test_a_plain_callable_still_receives_reports() -> None:
    seen: list[tuple[float, float, str]] = []
    with_fields(lambda *a: seen.append(a))(1, 2, "x", step="Q8_0", index=0, count=2)
    with_fields(lambda d, t, m: seen.append((d, t, m)))(2, 2, "y", unit="B")
    assert seen == [(1, 2, "x"), (2, 2, "y")]
    with pytest.raises(TypeError):
        Progress.of(1, 2, "x", speed=3)  # the fields are a closed set


def test_every_verb_uses_the_one_printer() -> None:
    """Five verbs had their own progress printer; the CLI has one (:class:`desktop.jobs.ProgressPrinter`)."""
    verbs = Path(__file__).resolve().parents[1] / "desktop" / "verbs"
    own = [p.name for p in verbs.glob("*.py") if "\\033[K" in p.read_text(encoding="utf-8")]
    assert own == []
    for name in ("convert", "quantize", "imatrix", "pull", "eval"):
        assert "ProgressPrinter(" in (verbs / f"{name}.py").read_text(encoding="utf-8")
