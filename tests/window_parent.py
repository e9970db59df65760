"""A window-like QuantDesk process for tests/test_lifeline.py: a QApplication, the Quantize page and its JobManager,
running a real quantization of ``SOURCE`` into ``OUT_DIR`` through the app's own path (page → Job → pipeline →
child process). The test kills this process with SIGKILL while the child writes its partial file."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication

from desktop.quant.types import QUANT_TYPES
from desktop.ui.quantize.page import QuantizePage
from desktop.workers import JobManager


def main(source: str, out_dir: str) -> int:
    app = QApplication(["window-parent", "-platform", "offscreen"])
    jobs = JobManager()
    page = QuantizePage(jobs)
    page.output.edit.setText(out_dir)
    page.select_source(source)
    for quant in QUANT_TYPES:
        page.types.set_checked(quant.name, quant.name in ("Q4_K_M", "Q5_K_M"))
    job = page.start()
    assert job is not None, page.status.text()
    job.sig_finished.connect(app.quit)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
