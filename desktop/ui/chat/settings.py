"""What the model is asked with: the system prompt and the sampling settings of the next reply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QPlainTextEdit, QSpinBox, QVBoxLayout, QWidget

from desktop.chat.engine import Sampling

DEFAULTS = Sampling()


def _double(low: float, high: float, step: float, decimals: int, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setToolTip(tip)
    return box


class SettingsPanel(QWidget):
    sig_changed = Signal()
    """The system prompt or a sampling setting changed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText("Optional: how the model should behave, e.g. “Answer briefly.”")
        self.system_prompt.setFixedHeight(84)
        self.system_prompt.textChanged.connect(self.sig_changed)

        self.temperature = _double(0.0, 2.0, 0.05, 2, "Randomness: 0 always picks the most likely token")
        self.top_p = _double(0.0, 1.0, 0.05, 2, "Keep the most likely tokens up to this total probability")
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setToolTip("Keep only the k most likely tokens (0: all)")
        self.min_p = _double(0.0, 1.0, 0.01, 2, "Drop tokens less likely than this fraction of the best one")
        self.repeat_penalty = _double(0.5, 2.0, 0.05, 2, "Above 1 discourages repeating recent tokens")
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 131072)
        self.max_tokens.setToolTip("The longest reply, in tokens")
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("random")
        self.seed.setToolTip("The same seed and settings give the same reply (random: a new one each time)")
        for box in (self.temperature, self.top_p, self.min_p, self.repeat_penalty):
            box.valueChanged.connect(self.sig_changed)
        for box in (self.top_k, self.max_tokens, self.seed):
            box.valueChanged.connect(self.sig_changed)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k", self.top_k)
        form.addRow("Min-p", self.min_p)
        form.addRow("Repeat penalty", self.repeat_penalty)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)
        title = QLabel("System prompt")
        title.setObjectName("cardTitle")
        sampling_title = QLabel("Sampling")
        sampling_title.setObjectName("cardTitle")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(title)
        layout.addWidget(self.system_prompt)
        layout.addSpacing(8)
        layout.addWidget(sampling_title)
        layout.addLayout(form)
        layout.addStretch(1)
        self.set_sampling(DEFAULTS)

    def sampling(self) -> Sampling:
        seed = self.seed.value()
        return Sampling(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            min_p=self.min_p.value(),
            repeat_penalty=self.repeat_penalty.value(),
            max_tokens=self.max_tokens.value(),
            seed=None if seed < 0 else seed,
        )

    def set_sampling(self, sampling: Sampling | Mapping[str, Any]) -> None:
        values = sampling.as_dict() if isinstance(sampling, Sampling) else {**DEFAULTS.as_dict(), **sampling}
        self.temperature.setValue(float(values["temperature"]))
        self.top_p.setValue(float(values["top_p"]))
        self.top_k.setValue(int(values["top_k"]))
        self.min_p.setValue(float(values["min_p"]))
        self.repeat_penalty.setValue(float(values["repeat_penalty"]))
        self.max_tokens.setValue(int(values["max_tokens"]))
        seed = values.get("seed")
        self.seed.setValue(-1 if seed is None else int(seed))

    def system_text(self) -> str:
        return self.system_prompt.toPlainText().strip()
