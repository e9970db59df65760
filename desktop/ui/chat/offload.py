"""How the model is loaded: context size, KV cache type, flash attention, GPU offload slider with a live memory
breakdown and verdict, threads, chat template; after loading, the planner's prediction against the memory llama.cpp
actually allocated (and the GPU memory NVML saw taken, where there is an NVIDIA driver).

The planner (:mod:`desktop.memory`) is pure arithmetic over a :class:`~desktop.memory.ModelShape`; the shape is read
from the GGUF in a Job by the page, so moving the slider or changing the KV type only recomputes numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from PySide6.QtCore import QRectF, Qt, Signal, Slot
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QComboBox, QFormLayout, QGridLayout, QLabel, QSlider, QSpinBox, QVBoxLayout, QWidget

from desktop import memory
from desktop.chat.templates import FALLBACK_TEMPLATES
from desktop.errors import UserError
from desktop.jobs import format_bytes
from desktop.memory import DevicePlan, GpuBudget, HostBudget, Machine, ModelShape, OffloadPlan, PlanOptions
from desktop.ui.widgets import choice_combo, note_label, section_title

PARTS = (("weights", "Weights", "#2563eb"), ("kv_cache", "KV cache", "#10b981"), ("compute", "Compute", "#f59e0b"),
         ("overhead", "GPU overhead", "#a855f7"), ("margin", "Margin", "#9ca3af"))
ACTUAL_NAMES = {**{key: label.lower() for key, label, _ in PARTS}, "used": "in all (NVML)"}
MODEL_TEMPLATE = "model"
KV_LABELS = {"f16": "f16 (full precision)", "q8_0": "q8_0 (about half)", "q4_0": "q4_0 (about a quarter)"}
FLASH_LABELS = {"auto": "Auto (llama.cpp decides)", "on": "On", "off": "Off"}


class BreakdownBar(QWidget):
    """One device: stacked weights / KV cache / compute / margin against the memory it has (the black tick)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFixedHeight(14)
        self.device: DevicePlan | None = None

    def set_device(self, device: DevicePlan | None) -> None:
        self.device = device
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self.palette().midlight())
        painter.drawRoundedRect(rect, 3, 3)
        device = self.device
        if device is None:
            return
        scale = max(device.need_bytes, device.budget_bytes, 1)
        x = rect.left()
        for key, _label, color in PARTS:
            width = rect.width() * getattr(device.breakdown, key) / scale
            painter.setBrush(QColor(color))
            painter.drawRect(QRectF(x, rect.top(), width, rect.height()))
            x += width
        budget_x = rect.left() + rect.width() * max(device.budget_bytes, 0) / scale
        painter.setPen(QPen(self.palette().windowText().color(), 2))
        painter.drawLine(int(budget_x), int(rect.top()) - 1, int(budget_x), int(rect.bottom()) + 1)


class DeviceRow(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.title = QLabel()
        self.title.setObjectName("keyLabel")
        self.title.setWordWrap(True)
        self.bar = BreakdownBar()
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setObjectName("note")
        layout.addWidget(self.title)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)

    def show_device(self, device: DevicePlan) -> None:
        b = device.breakdown
        where = "System memory" if device.kind == "host" else device.name
        layers = f", {device.layers} layer{'s' if device.layers != 1 else ''}" if device.kind == "gpu" else ""
        self.title.setText(
            f"{where}{layers}: {format_bytes(device.need_bytes)} of {format_bytes(max(device.budget_bytes, 0))} free"
        )
        self.bar.set_device(device)
        self.detail.setText(" · ".join(f"{label} {format_bytes(getattr(b, key))}" for key, label, _ in PARTS
                                       if device.kind == "gpu" or key != "overhead"))


class OffloadPanel(QWidget):
    sig_changed = Signal()
    """A setting that needs a reload changed (context, GPU layers, threads, template)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.shape: ModelShape | None = None
        self.gpus: list[GpuBudget] = []
        self.host: HostBudget | None = None
        self.machine: Machine | None = None
        self.plan: OffloadPlan | None = None
        self.actual_rows: list[dict[str, Any]] = []
        self._touched_layers = False

        self.context = QSpinBox()
        self.context.setRange(256, 4096)
        self.context.setSingleStep(256)
        self.context.setValue(4096)
        self.context.setSuffix(" tokens")
        self.context.setToolTip("How much of the conversation the model sees at once (up to its trained length)")
        self.context.valueChanged.connect(self._replan)
        self.context_note = note_label()

        self.kv_type = choice_combo(((KV_LABELS[kind], kind) for kind in memory.KV_CHOICES),
                                    "How the KV cache is stored: q8_0 and q4_0 take less memory (they need flash "
                                    "attention) at a small cost in quality")
        self.kv_type.currentIndexChanged.connect(self._replan)
        self.flash = choice_combo(((FLASH_LABELS[choice], choice) for choice in memory.FLASH_ATTN_CHOICES),
                                  "Flash attention: smaller compute buffers; Auto follows llama.cpp (on for CPU, "
                                  "CUDA and Vulkan)")
        self.flash.currentIndexChanged.connect(self._replan)

        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText("automatic")
        self.threads.setToolTip("CPU threads for llama.cpp (automatic: llama.cpp's default)")
        self.threads.valueChanged.connect(self.sig_changed)

        self.template = QComboBox()
        self.template.addItem("From the model (or by architecture)", MODEL_TEMPLATE)
        for name, template in FALLBACK_TEMPLATES.items():
            self.template.addItem(template.label, name)
        self.template.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.template.setMinimumContentsLength(14)
        self.template.setToolTip("The chat template that turns messages into the prompt")
        self.template.currentIndexChanged.connect(self.sig_changed)
        self.template_note = note_label()

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setPageStep(1)
        self.slider.setToolTip("Layers on the GPU: 0 keeps the model on the CPU, the maximum puts it all on the GPU")
        self.slider.valueChanged.connect(self._on_slider)
        self.layers_label = QLabel("0 of 0")
        self.verdict = QLabel("Pick a model to see whether it fits.")
        self.verdict.setObjectName("verdict")
        self.verdict.setWordWrap(True)
        self.devices = QVBoxLayout()
        self.devices.setSpacing(8)
        self._rows: list[DeviceRow] = []
        legend = note_label(" ".join(f"<span style='color:{c}'>■</span> {label}" for _, label, c in PARTS)
                            + " &nbsp;<b>|</b> memory free")

        self.actual_title = section_title("Predicted against actual (after loading)")
        self.actual = QGridLayout()
        self.actual.setHorizontalSpacing(12)
        self.actual.setVerticalSpacing(2)
        self.actual_note = note_label("Load the model to compare the prediction with what llama.cpp allocates.")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Context", self.context)
        form.addRow("", self.context_note)
        form.addRow("KV cache", self.kv_type)
        form.addRow("Flash attention", self.flash)
        form.addRow("Template", self.template)
        form.addRow("", self.template_note)
        form.addRow("Threads", self.threads)
        slider_row = QGridLayout()
        slider_row.addWidget(self.slider, 0, 0)
        slider_row.addWidget(self.layers_label, 0, 1)
        form.addRow("GPU layers", slider_row)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.verdict)
        layout.addLayout(self.devices)
        layout.addWidget(legend)
        layout.addSpacing(8)
        layout.addWidget(self.actual_title)
        layout.addLayout(self.actual)
        layout.addWidget(self.actual_note)
        layout.addStretch(1)

    # ---- inputs
    def set_model(self, shape: ModelShape | None, n_ctx_train: int = 0) -> None:
        """A new model: the context may go up to its trained length; the slider to all its layers."""
        self.shape = shape
        self._touched_layers = False
        trained = (shape.n_ctx_train if shape else 0) or n_ctx_train or 4096
        self.context.blockSignals(True)
        self.context.setMaximum(trained)
        self.context.setValue(min(self.context.value(), trained))
        self.context.blockSignals(False)
        self.context_note.setText(f"This model was trained for up to {trained:,} tokens.")
        self.clear_actual()
        self._replan()

    def set_hardware_report(self, report: Any) -> None:
        """The devices to plan for: only GPUs the selected llama.cpp can use (:func:`desktop.memory.machine_from_report`)."""
        self.set_machine(memory.machine_from_report(report))

    def set_machine(self, machine: Machine) -> None:
        self.machine = machine
        self.gpus, self.host = list(machine.gpus), machine.host
        self._replan()

    def cache_type(self) -> str:
        return str(self.kv_type.currentData())

    def flash_attn(self) -> str:
        return str(self.flash.currentData())

    def set_template_note(self, text: str) -> None:
        self.template_note.setText(text)

    def template_choice(self) -> str | None:
        data = self.template.currentData()
        return None if data == MODEL_TEMPLATE else str(data)

    def n_gpu_layers(self) -> int:
        return self.slider.value() if self.gpus else 0

    def set_n_gpu_layers(self, value: int) -> None:
        self._touched_layers = True
        self.slider.setValue(value)

    # ---- planning
    @Slot()
    def _on_slider(self) -> None:
        self._touched_layers = True
        self._show_plan()
        self.sig_changed.emit()

    @Slot()
    def _replan(self) -> None:
        shape = self.shape
        if shape is None or self.host is None:
            self.plan = None
            self.verdict.setText(
                "Pick a model to see whether it fits." if shape is None else "Reading this machine’s memory…"
            )
            self.sig_changed.emit()
            return
        top = shape.total_layers if self.gpus else 0
        self.slider.blockSignals(True)
        self.slider.setRange(0, top)
        self.slider.setEnabled(bool(self.gpus))
        if not self._touched_layers:  # start at the most that fits
            try:
                best = memory.max_gpu_layers(shape, gpus=self.gpus, host=self.host, options=self.plan_options())
            except UserError:
                best = 0
            self.slider.setValue(max(best, 0))
        self.slider.blockSignals(False)
        self._show_plan()
        self.sig_changed.emit()

    def plan_options(self) -> PlanOptions:
        return PlanOptions(n_ctx=self.context.value(), cache_type_k=self.cache_type(), flash_attn=self.flash_attn())

    def _show_plan(self) -> None:
        if self.shape is None or self.host is None:
            return
        try:
            plan = memory.evaluate(self.shape, self.n_gpu_layers(), gpus=self.gpus, host=self.host,
                                   options=self.plan_options())
        except UserError as exc:  # e.g. a quantized KV cache with flash attention off
            self.plan = None
            self.verdict.setText(f"✖ {exc.message} {exc.next_step}".strip())
            self.verdict.setProperty("fits", "no")
            return
        self.plan = plan
        self.layers_label.setText(f"{plan.n_gpu_layers} of {plan.total_layers}")
        message = plan.message
        if not self.gpus:
            message += " No GPU this llama.cpp build can offload to, so the slider stays at 0."
            if self.machine is not None and self.machine.left_out:
                message += " " + " ".join(self.machine.left_out)
        elif plan.max_gpu_layers >= 0 and plan.n_gpu_layers > plan.max_gpu_layers:
            message += f" At most {plan.max_gpu_layers} layers fit."
        self.verdict.setText(("✔ " if plan.fits else "✖ ") + message)
        self.verdict.setProperty("fits", "yes" if plan.fits else "no")
        self.verdict.style().unpolish(self.verdict)
        self.verdict.style().polish(self.verdict)
        devices = [*plan.gpus, plan.host]
        while len(self._rows) < len(devices):
            row = DeviceRow()
            self._rows.append(row)
            self.devices.addWidget(row)
        for row, device in zip(self._rows, devices):
            row.show_device(device)
            row.show()
        for row in self._rows[len(devices):]:
            row.hide()

    # ---- after loading
    def clear_actual(self) -> None:
        self.actual_rows = []
        while self.actual.count():
            item = self.actual.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.actual_note.setText("Load the model to compare the prediction with what llama.cpp allocates.")
        self.actual_note.show()

    def show_actual(self, actual: Mapping[str, Any], n_ctx: int, n_gpu_layers: int) -> list[dict[str, Any]]:
        """Rows of predicted against actual bytes for the settings the model was loaded with."""
        self.clear_actual()
        if self.shape is None or self.host is None:
            return []
        try:
            plan = memory.evaluate(self.shape, n_gpu_layers, gpus=self.gpus, host=self.host,
                                   options=replace(self.plan_options(), n_ctx=n_ctx))
        except UserError:
            return []
        rows = [r for r in memory.predicted_vs_actual(plan, actual, self.gpus) if r["predicted"] or r["actual"]]
        for col, head in enumerate(("", "Predicted", "Actual")):
            label = QLabel(head)
            label.setObjectName("keyLabel")
            self.actual.addWidget(label, 0, col)
        for index, row in enumerate(rows, start=1):
            self.actual.addWidget(QLabel(f"{row['device']} {ACTUAL_NAMES[row['part']]}"), index, 0)
            for col, key in ((1, "predicted"), (2, "actual")):
                value = row[key]
                label = QLabel(format_bytes(value) if value is not None else "–")
                label.setAlignment(Qt.AlignmentFlag.AlignRight)
                self.actual.addWidget(label, index, col)
        self.actual_note.setText(
            "Actual sizes are the buffers llama.cpp reported while loading, and the GPU memory NVML saw the load "
            "take where there is an NVIDIA driver; the margin is kept free, not allocated."
        )
        self.actual_rows = rows
        return rows
