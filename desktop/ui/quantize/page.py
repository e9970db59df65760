"""Quantize: pick a source (a library GGUF, a GGUF file, a Hugging Face checkpoint), tick target types with their
predicted sizes, optionally a calibration text for an importance matrix, then run [convert] → [imatrix] →
quantize as one job with a queue, per-tensor log and cancel (:mod:`desktop.quant.pipeline`)."""

from __future__ import annotations

import functools
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import QWidget

from desktop import settings
from desktop.errors import UserError
from desktop.jobs import JobError
from desktop.quant.types import by_name
from desktop.ui.quantize.options import AdvancedOptions, CalibrationPanel, OutputFolder
from desktop.quant.pipeline import (
    LogEvent,
    PipelineOutcome,
    PipelineRequest,
    Source,
    SourceInfo,
    StepEvent,
    describe_types,
    library_checkpoints,
    planned_steps,
    prediction_job,
    run_pipeline,
)
from desktop.ui.quantize.queue import CANCELLED, DONE, FAILED, LogView, QueueView
from desktop.ui.quantize.source import SourcePicker
from desktop.ui.page import Page
from desktop.ui.quantize.types import TypeTable
from desktop.ui.widgets import Card, note_label, splitter
from desktop.workers import Job, JobManager, LibraryWatcher

PREDICT_DELAY_MS = 250  # options typed in quick succession give one prediction


def _models_folder(progress: object = None, cancelled: object = None) -> Path:
    return settings.models_dir()


class _EventRelay(QObject):
    """Lives in the GUI thread; the pipeline emits from the worker thread, Qt queues the events here."""

    sig_event = Signal(object)


class QuantizePage(Page):
    sig_finished = Signal()
    """A run ended (done, failed or cancelled); files may have been added to the library."""
    sig_sizes_predicted = Signal()
    """Predicted sizes for the current source and options are shown."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__("Quantize", start_tip="Run the queue", parent=parent)
        self._jobs = jobs
        self._info: SourceInfo | None = None
        self._sizes: dict[str, int | str] = {}
        self._predict_job: Job | None = None
        self._generation = 0
        self.run_job: Job | None = None
        self._relay: _EventRelay | None = None
        self.last_outcome: PipelineOutcome | None = None

        self.library_watch = LibraryWatcher(self)  # a checkpoint downloaded or imported anywhere is offered here
        self.library_watch.sig_changed.connect(self.refresh_checkpoints)
        self.source = SourcePicker()
        self.source.sig_source_changed.connect(self._on_source_changed)
        self.source.sig_convert_type_changed.connect(self._schedule_prediction)
        self.source.sig_refused.connect(self._show_source_error)
        self.requantize_note = note_label()
        self.requantize_note.setVisible(False)
        source_card = Card("Source")
        source_card.body.addWidget(self.source)
        source_card.body.addWidget(self.requantize_note)

        self.types = TypeTable()
        self.types.sig_selection_changed.connect(self._update_start)
        self.calibration = CalibrationPanel()
        self.calibration.sig_changed.connect(self._on_calibration_changed)
        self.advanced = AdvancedOptions()
        self.advanced.sig_changed.connect(self._schedule_prediction)
        self.options_error = note_label()
        self.options_error.setStyleSheet("color: #b91c1c;")
        self.options_error.setVisible(False)
        targets = Card("Target types")
        targets.body.addWidget(self.types, 1)
        targets.body.addWidget(self.calibration)
        targets.body.addWidget(self.advanced)
        targets.body.addWidget(self.options_error)
        targets.stretch_body()

        self.queue = QueueView()
        self.queue.sig_cancel_item.connect(self.cancel_item)
        self._skipped: set[str] = set()  # types cancelled one by one; the worker reads it (set lookups are atomic)
        self.log = LogView()
        queue_card = Card("Queue")
        queue_card.body.addWidget(self.queue)
        log_card = Card("Log")
        log_card.body.addWidget(self.log)
        queue_card.stretch_body()
        log_card.stretch_body()
        right = splitter(Qt.Orientation.Vertical, queue_card, log_card)
        panes = splitter(Qt.Orientation.Horizontal, targets, right, stretch=(3, 2), sizes=(540, 460))

        self.output = OutputFolder()  # the models folder is read (and made) in a job: see _read_models_folder
        self._remembered_folder: Path | None = None
        self.sig_start.connect(self.start)
        self.sig_cancel.connect(self.cancel)
        self.body.addWidget(source_card)
        self.body.addWidget(panes, 1)
        self.body.addWidget(self.output)

        self._predict_timer = QTimer(self)
        self._predict_timer.setSingleShot(True)
        self._predict_timer.setInterval(PREDICT_DELAY_MS)
        self._predict_timer.timeout.connect(self._predict)
        self._update_start()
        self._read_models_folder()

    # ---- sources
    @Slot(list)
    def set_models(self, entries: list) -> None:  # type: ignore[type-arg]
        """The library's GGUFs (from the Models page); its checkpoints are read again too."""
        self.source.set_models(entries)
        self.refresh_checkpoints()

    @Slot()
    def refresh_checkpoints(self) -> Job:
        """Read the library's checkpoints (in a job): the same list the Models page shows."""
        job = Job("Read checkpoints", library_checkpoints, visible=False)
        job.sig_result.connect(self.source.set_checkpoints)
        self._jobs.start(job)
        return job

    def select_source(self, path: Path | str) -> None:
        self.source.select_path(path)

    @Slot(object)
    def _on_source_changed(self, source: Source | None) -> None:
        self._info = None
        self._sizes = {}
        self.requantize_note.setVisible(False)
        self.types.set_sizes(None)
        if source is not None:
            self.source.summary.setText(f"Reading {source.path.name}…")
            self._schedule_prediction()
        else:
            self.source.summary.setText("Pick a GGUF from the library, a GGUF file, or a Hugging Face checkpoint folder.")
        self._update_start()

    @Slot(str)
    def _show_source_error(self, sentence: str) -> None:
        self.status.setText(sentence)

    @Slot()
    def _on_calibration_changed(self) -> None:
        self.types.set_imatrix_available(self.calibration.text_path() is not None)
        self._schedule_prediction()

    # ---- predicted sizes
    @Slot()
    def _schedule_prediction(self) -> None:
        self._generation += 1  # whatever is in flight is now stale
        if self.source.current() is not None:
            self.types.set_sizes_pending()
            self._predict_timer.start()
        self._update_start()

    @Slot()
    def _predict(self) -> None:
        source = self.source.current()
        if source is None:
            return
        try:
            options = self.advanced.options()
        except UserError as exc:
            self._show_options_error(str(exc))
            self.types.set_sizes(None)
            return
        self._show_options_error("")
        if self._predict_job is not None and self._predict_job.is_active():
            self._predict_job.cancel()
        generation = self._generation
        info = self._info if self._info is not None and self._info.source == source else source
        job = Job("Predict sizes", prediction_job(info, options, self.calibration.text_path() is not None,
                                                  self.source.convert_to()), visible=False)
        job.generation = generation  # type: ignore[attr-defined]
        job.sig_result.connect(self._on_predicted)  # bound methods: no call reaches a page that is gone
        job.sig_error.connect(self._on_predict_error)
        self._predict_job = job
        self._jobs.start(job)

    def _sender_generation(self) -> int:
        return int(getattr(self.sender(), "generation", -1))

    @Slot(object)
    def _on_predicted(self, result: tuple[SourceInfo, dict[str, int | str]]) -> None:
        generation = self._sender_generation()
        info, sizes = result
        if info.source == self.source.current():
            self._info = info
            self.source.summary.setText(info.summary)
            self._show_requantize_note(info)
        if generation != self._generation:
            return
        self._sizes = sizes
        self.types.set_sizes(sizes, sum(t.n_elements for t in info.tensors))
        self.sig_sizes_predicted.emit()

    @Slot(object)
    def _on_predict_error(self, error: JobError) -> None:
        if self._sender_generation() != self._generation:
            return
        self.types.set_sizes(None)
        self.source.summary.setText(error.sentence())

    def _show_requantize_note(self, info: SourceInfo) -> None:
        if not info.quantized_types:
            self.requantize_note.setVisible(False)
            return
        self.requantize_note.setText(
            f"This model is already quantized ({', '.join(info.quantized_types)}): quantizing it again compounds "
            "the error. Use its F16/BF16 original if you have it, or tick “Allow requantize” under Advanced options.")
        self.requantize_note.setVisible(True)

    def _show_options_error(self, sentence: str) -> None:
        self.options_error.setText(sentence)
        self.options_error.setVisible(bool(sentence))

    # ---- running
    def _update_start(self) -> None:
        running = self.run_job is not None and self.run_job.is_active()
        source = self.source.current()
        ready = source is not None and (bool(self.types.checked_types()) or source.is_checkpoint)
        self.set_can_start(ready)
        if running != self.is_running():
            self.set_running(running)

    def request(self) -> PipelineRequest:
        """The run the widgets describe; raises UserError with the sentence to show when it cannot start."""
        source = self.source.current()
        if source is None:
            raise UserError("Choose a source model first.")
        types = tuple(self.types.checked_types())
        if not types and not source.is_checkpoint:
            raise UserError("Tick at least one target type.")
        needing = [t for t in types if by_name(t).needs_imatrix]
        calibration = self.calibration.text_path()
        if needing and calibration is None:
            raise UserError(f"{needing[0]} needs an importance matrix.", "Choose a calibration text first.",
                            kind="needs_imatrix")
        out_dir = self.output.folder()
        if not str(out_dir).strip() or not out_dir.is_absolute():
            raise UserError("Choose an output folder (a full path).")
        return PipelineRequest(source, types, out_dir, self.advanced.options(), calibration,
                               self.source.convert_to(), self.calibration.max_chunks())

    @Slot()
    def start(self) -> Job | None:
        if self.run_job is not None and self.run_job.is_active():
            return None
        try:
            request = self.request()
        except UserError as exc:
            self.status.setText(str(exc))
            return None
        self.status.setText("")
        self.log.clear()
        steps = planned_steps(request)
        self.queue.start(steps, self._sizes, request.convert_type)
        self._relay = _EventRelay(self)
        self._relay.sig_event.connect(self._on_event)
        self._skipped = set()
        what = describe_types(list(request.types)) if request.types else f"GGUF ({request.convert_type})"
        job = Job(f"Quantize {request.source.path.stem} → {what}",
                  functools.partial(run_pipeline, request, emit=self._relay.sig_event.emit,
                                    skip=self._skipped.__contains__))
        job.sig_result.connect(self._on_done)
        job.sig_error.connect(self._on_error)
        job.sig_cancelled.connect(self._on_cancelled)
        job.sig_finished.connect(self._on_finished)
        self.run_job = job
        self._jobs.start(job)
        self._remember_folder(request.out_dir)
        self._update_start()
        self.status.setText(f"Running: {', '.join(steps)} → {request.out_dir}")
        return job

    def _read_models_folder(self) -> Job:
        """The models folder from settings, made if missing, off the window's thread (it may be on a slow or absent
        drive); it fills the output folder unless one was typed meanwhile."""
        job = Job("Read the output folder", _models_folder, visible=False)
        job.sig_result.connect(self._on_models_folder)
        job.sig_error.connect(self._on_models_folder_error)
        self._jobs.start(job)
        return job

    @Slot(object)
    def _on_models_folder(self, folder: Path) -> None:
        if self._remembered_folder is None:
            self._remembered_folder = folder
        if not self.output.edit.text().strip():
            self.output.edit.setText(str(folder))

    @Slot(object)
    def _on_models_folder_error(self, error: JobError) -> None:
        self.status.setText(error.sentence())

    def _remember_folder(self, folder: Path) -> None:
        """A run in another output folder makes it the models folder for the next start (and Compare's quants)."""
        if folder == self._remembered_folder:
            return
        self._remembered_folder = folder
        self._jobs.start(Job("Remember the output folder", functools.partial(settings.remember_models_dir, folder),
                             visible=False))

    @Slot()
    def cancel(self) -> None:
        if self.run_job is not None:
            self.run_job.cancel()
            self.status.setText("Cancelling…")

    @Slot(str)
    def cancel_item(self, key: str) -> None:
        """Cancel one type of the running queue; the others go on."""
        if self.run_job is None or not self.run_job.is_active():
            return
        self._skipped.add(key)
        self.log.add(f"{key}: cancelled; the rest of the queue goes on.")

    @Slot(object)
    def _on_event(self, event: object) -> None:
        if isinstance(event, StepEvent):
            self.queue.apply(event)
            if event.detail:
                self.log.add(f"{event.key}: {event.detail}")
        elif isinstance(event, LogEvent):
            self.log.add(event.text)

    @Slot(object)
    def _on_done(self, outcome: PipelineOutcome) -> None:
        self.last_outcome = outcome
        self.queue.finish(DONE)
        files = [r.path for r in outcome.results] or ([outcome.converted] if outcome.converted else [])
        names = ", ".join(p.name for p in files)
        self.status.setText(f"Done: {names} in {outcome.out_dir}. They are in the library (Models page).")
        self.log.add(f"Done: {len(files)} file{'s' if len(files) != 1 else ''} in {outcome.out_dir}")

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.queue.finish(FAILED)
        self.status.setText(error.sentence())
        self.log.add(f"Failed: {error.sentence()}")
        if error.detail:
            self.log.add(error.detail.rstrip())

    @Slot()
    def _on_cancelled(self) -> None:
        self.queue.finish(CANCELLED)
        done = [k for k in self.queue.keys if self.queue.state(k) == DONE]
        kept = f" Finished before the cancel: {', '.join(done)}." if done else ""
        self.status.setText(f"Cancelled; no partial file is left.{kept}")
        self.log.add("Cancelled.")

    @Slot()
    def _on_finished(self) -> None:
        if self._relay is not None:
            self._relay.sig_event.disconnect(self._on_event)
            self._relay.deleteLater()
            self._relay = None
        self.log.flush()
        self._update_start()
        self.sig_finished.emit()
