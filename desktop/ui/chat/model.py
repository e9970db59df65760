"""The Chat page's model: the picker filled from the library, the planner's view of the picked GGUF (read off the
GUI thread), the load options from the side panel, and loading with progress. A mixin of
:class:`~desktop.ui.chat.page.ChatPage`: it uses the page's worker, offload panel and status row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Slot

from desktop.chat.engine import LoadOptions
from desktop.chat.remote import RemoteEngine
from desktop.chat.templates import FALLBACK_TEMPLATES
from desktop.chat_model import CHAT_SOURCE
from desktop.library import ModelEntry
from desktop import memory
from desktop.ui.chat.panels import ModelBar
from desktop.ui.chat.remote import REMOTE_LABEL
from desktop.workers import Job
from desktop.workers.engine_worker import EngineWorker


def _read_model(path: str, progress, cancelled):  # type: ignore[no-untyped-def]
    """The planner's view of a GGUF (read off the GUI thread), and whether the user allows CPU repacking."""
    from desktop.gguf.reader import read_gguf
    from desktop.settings import load_settings

    return path, memory.shape_from_gguf(read_gguf(Path(path))), load_settings().cpu_repack


REMOTE = "remote:"  # the picker's data for the "OpenAI-compatible server" entry


class ModelMixin:
    """Needs the page's ``worker``, ``offload``, ``session``, ``notice`` and the Page status row."""

    entries: list[ModelEntry]
    worker: Any
    _local_worker: Any
    _remote_worker: Any
    offload: Any
    session: Any

    def connect_model(self, bar: ModelBar) -> None:
        self.entries = []
        self.loaded_metadata: dict[str, Any] = {}
        self._shapes: dict[str, memory.ModelShape] = {}
        self._cpu_repack = False
        self._safe_mode = False
        bar.sig_selected.connect(self._on_model_selected)
        bar.sig_load.connect(self.load_model)

    # ================================================================== inputs from the window
    @Slot(list)
    def set_models(self, entries: list[ModelEntry]) -> None:
        """The library changed: refill the picker, keeping the choice; preselect the chat model on first launch."""
        current, was_remote = self.current_entry(), self.is_remote()
        self.entries = list(entries)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for entry in self.entries:
            self.model_combo.addItem(f"{entry.name} · {entry.quant_type}", str(entry.path))
            self.model_combo.setItemData(self.model_combo.count() - 1, str(entry.path), Qt.ItemDataRole.ToolTipRole)
        self.model_combo.addItem(REMOTE_LABEL, REMOTE)
        self.model_combo.setItemData(self.model_combo.count() - 1, "Chat with a model on another machine's server",
                                     Qt.ItemDataRole.ToolTipRole)
        keep = next((i for i, e in enumerate(self.entries) if current and e.path == current.path), -1)
        if was_remote:
            keep = self.model_combo.count() - 1
        elif keep < 0:
            keep = next((i for i, e in enumerate(self.entries) if e.source == CHAT_SOURCE), 0 if self.entries else -1)
        self.model_combo.setCurrentIndex(keep)
        self.model_combo.blockSignals(False)
        if (self.current_entry() != current or current is None) and not (was_remote and self.is_remote()):
            self._on_model_selected()

    # ---- the remote choice
    def use_remote(self, on: bool) -> None:
        """The picker chose the OpenAI-compatible server (or a local model again): its bar, its worker; offload
        and memory controls and Serve only for a local model."""
        target = (self._remote_worker or self._local_worker) if on else self._local_worker
        if target is not self.worker and self.session.busy:
            self.stop()
            self.session.detach()
        self.worker = target
        self.remote_bar.setVisible(on)
        self.tabs.setTabVisible(0, not on)
        self.tabs.setTabEnabled(self.tabs.count() - 1, not on)
        if on and self.tabs.currentIndex() != 1:
            self.tabs.setCurrentIndex(1)
        if on and self._remote_worker is None:
            self.set_status("Enter the server's address and connect.")

    @Slot(str)
    def _on_remote_connected(self, url: str) -> None:
        old = self._remote_worker
        if old is None or old.engine.url != url:
            self._remote_worker = EngineWorker(self, engine=lambda on_event: RemoteEngine(url, on_event))
            self._wire(self._remote_worker)
            if old is not None:
                old.retire()  # closes off the window's thread
        if self.is_remote():
            self.worker = self._remote_worker
            self.set_status(f"Connected to {url}. Send a message to chat with {self.remote_bar.model_name()}.")
        self._update_controls()

    @Slot(object)
    def set_hardware_report(self, report: Any) -> None:
        """Budgets for the planner; GPUs the selected llama.cpp cannot offload to are left out."""
        self.offload.set_hardware_report(report)

    def current_entry(self) -> ModelEntry | None:
        index = self.model_combo.currentIndex()
        return self.entries[index] if 0 <= index < len(self.entries) else None

    def is_remote(self) -> bool:
        """The picker's "OpenAI-compatible server" entry is chosen."""
        return self.model_combo.currentData() == REMOTE

    @Slot()
    def _on_model_selected(self) -> None:
        entry = self.current_entry()
        self._safe_mode = False
        self.use_remote(self.is_remote())
        if entry is None:
            self.offload.set_model(None)
            self._update_controls()
            return
        key = str(entry.path)
        self.offload.set_model(self._shapes.get(key), entry.context_length)
        if key not in self._shapes:
            job = Job(f"Read {entry.name}", lambda progress, cancelled: _read_model(key, progress, cancelled), visible=False)
            job.sig_result.connect(self._on_model_read)
            job.sig_error.connect(lambda error: self.set_status(error.sentence()))
            self._jobs.start(job)
        self._update_controls()

    @Slot(object)
    def _on_model_read(self, result: tuple[str, memory.ModelShape, bool]) -> None:
        path, shape, cpu_repack = result
        self._shapes[path] = shape
        self._cpu_repack = cpu_repack
        entry = self.current_entry()
        if entry is not None and str(entry.path) == path:
            self.offload.set_model(shape, entry.context_length)

    def no_model_sentence(self) -> str:
        if self.is_remote():
            return "Connect to the server and pick one of its models first."
        return "Pick a model first: add one on the Models page."

    # ================================================================== loading
    def load_options(self) -> LoadOptions | None:
        if self.is_remote():  # the server's model by name; context, layers and memory are the server's business
            name = self.remote_bar.model_name()
            return LoadOptions(path=name) if name else None
        entry = self.current_entry()
        if entry is None:
            return None
        return LoadOptions(
            path=str(entry.path),
            n_ctx=self.offload.context.value(),
            n_gpu_layers=self.offload.n_gpu_layers(),
            n_threads=self.offload.threads.value() or None,
            cpu_repack=self._cpu_repack and not self._safe_mode,
            cache_type_k=self.offload.cache_type(),
            flash_attn=self.offload.flash_attn(),
            template=self.offload.template_choice(),
        )

    @Slot()
    def load_model(self) -> bool:
        options = self.load_options()
        if options is None:
            self.notice.show_notice("info", self.no_model_sentence())
            return False
        if self.reply is not None:
            self.worker.stop()
        self.notice.clear()
        self.offload.clear_actual()
        self.loaded_metadata = {}
        self.set_running(True)
        self.set_status(f"Connecting to {options.path}…" if self.is_remote() else f"Loading {Path(options.path).name}…")
        self.worker.load(options)
        self._update_controls()
        return True

    @Slot(float, str)
    def _on_load_progress(self, fraction: float, message: str) -> None:
        self.set_progress(fraction, 1.0)
        self.set_status(f"Loading the model… {fraction * 100:.0f}%")

    @Slot(object, object)
    def _on_loaded(self, metadata: dict, memory: dict) -> None:  # type: ignore[type-arg]
        self.loaded_metadata = metadata
        self.set_running(False)
        if metadata.get("remote"):  # nothing to plan or measure here, and not served again
            self.serve.set_model(None, "")
            self.set_status(f"Connected: {metadata.get('name', 'the model')} on {metadata.get('url', 'the server')}.")
            self._update_controls()
            if self.session.waiting:
                self._start_reply()
            return
        self.serve.set_model(self.worker.turns, str(metadata.get("name") or "model"))
        where = f"{metadata.get('n_gpu_layers', 0)} layers on the GPU" if metadata.get("n_gpu_layers") else "on the CPU"
        safe = ", safe mode" if self._safe_mode else ""
        self.set_status(
            f"Loaded {metadata.get('name', 'the model')} in {metadata.get('load_s', 0):.1f} s: "
            f"{int(metadata.get('n_ctx', 0)):,}-token context, {where}{safe}."
        )
        name = str(metadata.get("template", ""))
        label = "the model's own template" if metadata.get("template_from_model") else FALLBACK_TEMPLATES[name].label
        how = "" if metadata.get("template_from_model") or self.offload.template_choice() else " (chosen by architecture: the GGUF has none)"
        self.offload.set_template_note(f"In use: {label}{how}.")
        self.offload.show_actual(memory, int(metadata.get("n_ctx", 0)), int(metadata.get("n_gpu_layers", 0)))
        self._update_controls()
        if self.session.waiting:
            self._start_reply()

    @Slot()
    def _on_load_cancelled(self) -> None:
        self.set_running(False)
        self.session.stop_waiting()
        self.set_status("Loading was cancelled.")
        self._update_controls()

