"""The Chat page's "OpenAI-compatible server" choice: the server's address, an optional API key (kept in the
keyring for that address, never in a file) and its models, read from ``/v1/models`` in a Job. The chat itself runs
through a :class:`~desktop.chat.remote.RemoteEngine` in the page's engine worker."""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QComboBox, QGridLayout, QLabel, QLineEdit, QPushButton, QWidget

from desktop.chat import api_keys
from desktop.chat.remote import FROM_KEYRING, ServerAddress, list_models
from desktop.jobs import JobError
from desktop.workers import Job, JobManager

REMOTE_LABEL = "OpenAI-compatible server…"
MAX_SHOWN_MODELS = 200


def _models(url: str, key: str) -> tuple[str, list[str]]:
    """Off the GUI thread: keep a newly entered key in the keyring, then ask the server for its models."""
    address = ServerAddress.parse(url)  # a malformed address is one sentence, before anything is sent
    if key:
        api_keys.save_remote_key(address.url, key)
    return address.url, [str(m["id"]) for m in list_models(address.url, FROM_KEYRING)][:MAX_SHOWN_MODELS]


class RemoteBar(QWidget):
    sig_connected = Signal(str)
    """(the server's base URL): its models are listed; the page may now use it."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self.connected_url = ""
        self._wanted = ""
        self.url = QLineEdit()
        self.url.setPlaceholderText("http://127.0.0.1:8080")
        self.url.setToolTip("The server's address (llama-server, vLLM, Ollama, LM Studio, quantdesk serve …)")
        self.url.returnPressed.connect(self.connect_server)
        self.key = QLineEdit()
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("API key (optional; kept in the keyring)")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip("Read the server's models (/v1/models)")
        self.connect_button.clicked.connect(self.connect_server)
        self.models = QComboBox()
        self.models.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.models.setMinimumContentsLength(8)
        self.models.setToolTip("The server's model to chat with")
        self.note = QLabel("Enter the server's address and connect.")
        self.note.setObjectName("note")
        self.note.setWordWrap(True)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("Server"), 0, 0)
        grid.addWidget(self.url, 0, 1)
        grid.addWidget(self.key, 0, 2)
        grid.addWidget(self.connect_button, 0, 3)
        grid.addWidget(QLabel("Model"), 1, 0)
        grid.addWidget(self.models, 1, 1, 1, 3)
        grid.addWidget(self.note, 2, 0, 1, 4)
        grid.setColumnStretch(1, 2)
        grid.setColumnStretch(2, 1)

    def choose(self, url: str, model: str) -> None:
        """A reopened conversation's server and model: connect again unless connected already."""
        self._wanted = model
        self.url.setText(url)
        if url == self.connected_url and self.models.findText(model) >= 0:
            self.models.setCurrentText(model)
            return
        self.connect_server()

    def model_name(self) -> str:
        return self.models.currentText() if self.connected_url else ""

    @Slot()
    def connect_server(self) -> None:
        url, key = self.url.text().strip(), self.key.text().strip()
        if not url:
            self.note.setText("Enter the server's address first, for example http://127.0.0.1:8080.")
            return
        self.connect_button.setEnabled(False)
        self.note.setText(f"Connecting to {url}…")
        job = Job("Read the server's models", lambda progress, cancelled: _models(url, key), visible=False)
        job.sig_result.connect(self._on_models)
        job.sig_error.connect(self._on_error)
        self._jobs.start(job)

    @Slot(object)
    def _on_models(self, result: tuple[str, list[str]]) -> None:
        url, names = result
        self.connect_button.setEnabled(True)
        self.key.clear()  # in the keyring now; never kept in the field
        previous = self.models.currentText()
        self.models.clear()
        self.models.addItems(names)
        for wanted in (self._wanted, previous):
            if wanted in names:
                self.models.setCurrentText(wanted)
                break
        self._wanted = ""
        self.connected_url = url
        self.note.setText(f"{url} offers {len(names)} model{'s' if len(names) != 1 else ''}." if names else
                          f"{url} answered but lists no model.")
        self.sig_connected.emit(url)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.connect_button.setEnabled(True)
        self.connected_url = ""
        self.models.clear()
        self.note.setText(error.sentence())
