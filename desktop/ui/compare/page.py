"""Compare: pick a base model and its quants (or types to make now), an evaluation text and a context; Measure
makes what is missing and measures each model against the base in one job (stored results are reused); the
results show as a table and a chart, and come back when the base is picked again. Find my quant recommends one
within the user's limits (:func:`desktop.eval.recommend.find_quant`)."""

from __future__ import annotations

import functools
import time
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QPushButton, QSplitter, QWidget

from desktop.errors import UserError
from desktop.jobs import JobError
from desktop.library import ModelEntry
from desktop.eval.recommend import DEFAULT_TYPES, Recommendation
from desktop.ui.compare.chart import CompareChart
from desktop.ui.compare.find import FindPanel
from desktop import memory
from desktop.eval.compare import Request, Row, find_job, load_job, measure_job, speed_job
from desktop.ui.compare.select import SelectionPanel
from desktop.ui.compare.table import ResultsTable
from desktop.ui.page import Page
from desktop.ui.widgets import Card, note_label
from desktop.workers import Job, JobManager


def _stretch_body(card: Card) -> None:
    card.layout().setStretch(1, 1)
    card.layout().setStretch(2, 0)


class ComparePage(Page):
    sig_finished = Signal()
    """A measure or find run ended (done, failed or cancelled); quants may have been added to the library."""
    sig_results_shown = Signal()
    """The table and chart were filled (from the store or from a run)."""
    sig_recommended = Signal(object)
    """Find my quant answered (a :class:`~desktop.eval.recommend.Recommendation`)."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__("Compare", start="Measure",
                         start_tip="Make the ticked types, then measure every ticked model", parent=parent)
        self._jobs = jobs
        self._report: Any | None = None
        self._generation = 0
        self.load_job: Job | None = None
        self.run_job: Job | None = None
        self.last_load_message = ""
        self.rows: list[Row] = []

        self.selection = SelectionPanel()
        self.selection.sig_base_changed.connect(self._on_base_changed)
        self.selection.sig_changed.connect(self._on_selection_changed)
        self.measure_button = self.start_button
        self.sig_start.connect(self.measure)
        self.sig_cancel.connect(self.cancel)
        pick = Card("What to compare")
        pick.body.addWidget(self.selection)

        self.find = FindPanel()
        self.find.sig_find.connect(self.find_quant)
        find_card = Card("Find my quant")
        find_card.body.addWidget(self.find)

        self.table = ResultsTable()
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.footnote = note_label()
        self.footnote.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.respeed_button = QPushButton("Measure speed again")
        self.respeed_button.setToolTip("Time the selected row again (speeds vary with what else the machine is "
                                       "doing; quality numbers do not)")
        self.respeed_button.clicked.connect(self.remeasure_speed)
        table_foot = QHBoxLayout()
        table_foot.addWidget(self.footnote, 1)
        table_foot.addWidget(self.respeed_button, 0, Qt.AlignmentFlag.AlignTop)
        table_card = Card("Results")
        table_card.body.addWidget(self.table, 1)
        table_card.body.addLayout(table_foot)
        _stretch_body(table_card)
        self.chart = CompareChart()
        chart_card = Card("Size against quality")
        chart_card.body.addWidget(self.chart, 1)
        _stretch_body(chart_card)
        self.chart.sig_view_changed.connect(
            lambda view: chart_card.title_label.setText("Size against quality" if view == "quality"
                                                        else "Size against speed"))
        left = QSplitter(Qt.Orientation.Vertical)  # what to measure, then what was measured
        left.addWidget(pick)
        left.addWidget(table_card)
        left.setStretchFactor(1, 1)
        right = QSplitter(Qt.Orientation.Vertical)  # the chart of the table, then the recommendation
        right.addWidget(chart_card)
        right.addWidget(find_card)
        right.setStretchFactor(0, 1)
        right.setStretchFactor(1, 1)
        right.setSizes([400, 360])
        left.setSizes([300, 450])
        for split in (left, right):
            split.setChildrenCollapsible(False)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([810, 300])
        splitter.setChildrenCollapsible(False)
        self.body.addWidget(splitter, 1)
        self._show_rows([])
        self._update_buttons()

    # ---- inputs from the window
    @Slot(list)
    def set_models(self, entries: list) -> None:  # type: ignore[type-arg]
        self.selection.set_models(entries)

    @Slot(object)
    def set_hardware_report(self, report: Any) -> None:
        self._report = report
        self.table.update_fits(self.selection.context.value(), report)

    def select_base(self, path: Any) -> None:
        self.selection.select_base(path)

    # ---- stored results
    @Slot(object)
    def _on_base_changed(self, base: ModelEntry | None) -> None:
        self._generation += 1
        self._show_rows([])
        self._update_buttons()
        if base is None:
            return
        if self.load_job is not None and self.load_job.is_active():
            self.load_job.cancel()
        job = Job(f"Read results of {base.name}", functools.partial(
            load_job, base.path, self.selection.all_quants(), base.parameters), visible=False)
        job.generation = self._generation  # type: ignore[attr-defined]
        job.sig_progress.connect(self._on_load_progress)
        job.sig_result.connect(self._on_loaded)
        job.sig_error.connect(self._on_error)
        self.load_job = job
        self._jobs.start(job)
        self.status.setText(f"Reading stored results for {base.path.name}…")

    @Slot(float, float, str)
    def _on_load_progress(self, _done: float, _total: float, message: str) -> None:
        self.last_load_message = message

    @Slot(object)
    def _on_loaded(self, rows: list[Row]) -> None:
        if getattr(self.sender(), "generation", -1) != self._generation:
            return
        self._show_rows(rows)
        if rows:
            self.selection.context.blockSignals(True)
            self.selection.context.setValue(next(r.result.n_ctx for r in rows if r.result is not None))
            self.selection.context.blockSignals(False)
            self.table.update_fits(self.selection.context.value(), self._report)
            self.status.setText(f"Showing {len(rows)} stored result{'s' if len(rows) != 1 else ''}; "
                                "Measure to add the models and types ticked above.")
        else:
            self.status.setText("Nothing measured yet for this model: tick quants or types and press Measure.")

    @Slot()
    def _on_selection_changed(self) -> None:
        self.table.update_fits(self.selection.context.value(), self._report)
        self._update_buttons()

    def _show_rows(self, rows: list[Row]) -> None:
        self.rows = list(rows)
        self.table.set_rows(self.rows, self.selection.context.value(), self._report)
        self.chart.set_rows(self.rows)
        self.footnote.setText(self._footnote())
        if rows:
            self.sig_results_shown.emit()

    def _footnote(self) -> str:
        measured = [r.result for r in self.rows if r.result is not None]
        if not measured:
            return ("PPL, KLD, top-1 and tok/s are measured here, against the base; "
                    "“Fits” is an estimate (file + KV cache + compute buffer) against the latest hardware report.")
        sources = sorted({f"{r.text_name}, context {r.n_ctx}, {r.n_tokens} tokens scored" for r in measured})
        machines = sorted({r.hardware for r in measured})
        dates = sorted(time.strftime("%Y-%m-%d", time.localtime(r.measured_at)) for r in measured)
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        return (f"Measured on {'; '.join(sources)} · {'; '.join(machines)} · {when}. "
                "Fits is an estimate at the chosen context. Hover a number for its details.")

    # ---- measuring
    def _running(self) -> bool:
        return self.run_job is not None and self.run_job.is_active()

    def _update_buttons(self) -> None:
        running = self._running()
        ready = self.selection.base() is not None
        self.set_can_start(ready)
        self.set_running(running)
        self.find.find_button.setEnabled(ready and not running)
        selected = self.table.selected_row()
        self.respeed_button.setEnabled(not running and selected is not None and selected.result is not None)

    def request(self) -> Request:
        """The run the widgets describe; UserError with the sentence to show when it cannot start."""
        base = self.selection.base()
        if base is None:
            raise UserError("Choose a base model first.")
        quants = tuple(self.selection.checked_quants())
        make = tuple(self.selection.types_to_make())
        if not quants and not make:
            raise UserError("Tick at least one quant, or a type to make.")
        return Request(base.path, quants, make, self.selection.text_path(), self.selection.context.value(),
                       self.selection.chunks.value())  # the job reads the models folder

    @Slot()
    def measure(self) -> Job | None:
        if self._running():
            return None
        try:
            request = self.request()
        except UserError as exc:
            self.status.setText(str(exc))
            return None
        base = self.selection.base()
        assert base is not None
        job = Job(f"Compare quants of {base.path.stem}", functools.partial(measure_job, request, base.parameters))
        job.sig_result.connect(self._on_measured)
        return self._start(job, f"Measuring {len(request.quants) + len(request.make) + 1} models on "
                                f"{self.selection.text_name()} at context {request.n_ctx}…")

    @Slot()
    def find_quant(self) -> Job | None:
        if self._running():
            return None
        base = self.selection.base()
        if base is None:
            self.status.setText("Choose a base model first.")
            return None
        chosen = {p.name: p for p in self.selection.checked_quants()}
        types = [e.quant_type for e in self.selection.entries if e.path.name in chosen]
        types += [t for t in self.selection.types_to_make() if t not in types]
        limits = self.find.limits(self.selection.context.value())
        job = Job(f"Find my quant for {base.path.stem}", functools.partial(
            find_job, base.path, base.parameters, self.selection.all_quants(), limits=limits, types=tuple(types) or DEFAULT_TYPES, text_path=self.selection.text_path(),
            eval_ctx=self.selection.context.value(), max_chunks=self.selection.chunks.value(),
            machine=memory.machine_from_report(self._report) if self._report is not None else None))
        job.sig_result.connect(self._on_recommended)
        self.find.show_running(f"Looking for the quant that meets {limits.describe()}…")
        return self._start(job, "Finding your quant: making and measuring what it needs…")

    @Slot()
    def remeasure_speed(self) -> Job | None:
        """Time the selected row again; the row's speed cells are replaced when it is done."""
        row, base = self.table.selected_row(), self.selection.base()
        if self._running() or row is None or row.result is None or base is None:
            return None
        job = Job(f"Measure the speed of {row.quant_type} again",
                  functools.partial(speed_job, row, base.path, base.parameters))
        job.sig_result.connect(self._on_respeed)
        return self._start(job, f"Measuring the speed of {row.quant_type} again…")

    @Slot(object)
    def _on_respeed(self, updated: Row) -> None:
        self._show_rows([updated if r.path == updated.path else r for r in self.rows])
        r = updated.result
        assert r is not None
        self.status.setText(f"{updated.quant_type}: generation {r.gen_tps:.1f} tok/s, prompt {r.prompt_tps:.1f} tok/s "
                            f"(medians of {len(r.gen_tps_runs)} runs).")

    def _start(self, job: Job, message: str) -> Job:
        job.sig_progress.connect(self._on_progress)
        job.sig_error.connect(self._on_error)
        job.sig_cancelled.connect(self._on_cancelled)
        job.sig_finished.connect(self._on_finished)
        self.run_job = job
        self._jobs.start(job)
        self._update_buttons()
        self.status.setText(message)
        return job

    @Slot()
    def cancel(self) -> None:
        if self.run_job is not None:
            self.run_job.cancel()
            self.status.setText("Cancelling…")

    @Slot(float, float, str)
    def _on_progress(self, done: float, total: float, message: str) -> None:
        self.set_progress(done, total)
        self.status.setText(message)

    @Slot(object)
    def _on_measured(self, rows: list[Row]) -> None:
        self._show_rows(rows)
        unsteady = self.table.unsteady_types()
        if unsteady:
            self.status.setText(f"Measured {len(rows)} models. The speed runs of {', '.join(unsteady)} disagree "
                                "by more than 10%: select the row and measure its speed again.")
        else:
            self.status.setText(f"Measured {len(rows)} models. Results are stored and come back when you pick "
                                "this base again.")

    @Slot(object)
    def _on_recommended(self, outcome: tuple[Recommendation, list[Row]]) -> None:
        rec, rows = outcome
        if rows:
            self._show_rows(rows)
        self.find.show_recommendation(rec)
        self.status.setText(f"Recommended: {rec.chosen.quant_type}." if rec.chosen is not None else
                            "No quant meets these limits.")
        self.sig_recommended.emit(rec)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.status.setText(error.sentence())
        if self.sender() is self.run_job and self.find.answer.text().startswith("Looking"):
            self.find.show_running(f"No recommendation: {error.sentence()}")

    @Slot()
    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled. Quants already made and models already measured are kept.")

    @Slot()
    def _on_finished(self) -> None:
        self._update_buttons()
        self.sig_finished.emit()
