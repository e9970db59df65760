"""The default number of GPU layers for a job that loads a model (evaluation, imatrix, Compare): the planner's
largest number that fits on the GPUs the selected engine can use, at the job's context size."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def planned_gpu_layers(model_path: Path | str, n_ctx: int) -> int:
    """The most layers of ``model_path`` that fit at ``n_ctx`` (0 when the selected engine reaches no GPU). The
    hardware is read in a child on the selected engine, so a GPU this engine cannot use gets no layer."""
    from desktop import memory
    from desktop.gguf.reader import read_gguf

    machine = memory.this_machine()  # read in a child on the selected engine
    if not machine.gpus:
        return 0
    shape = memory.shape_from_gguf(read_gguf(model_path))
    plan = memory.plan_offload(shape, gpus=machine.gpus, host=machine.host, options=memory.PlanOptions(n_ctx=n_ctx))
    log.info("planned %d of %d layers on the GPU for %s", plan.n_gpu_layers, plan.total_layers, model_path)
    return max(0, plan.n_gpu_layers)
