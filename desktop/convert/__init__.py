"""Hugging Face checkpoint to GGUF, without torch.

Public API:

* :func:`convert` ``(src_dir, out_path, outtype="f16", *, progress, cancelled) -> dict`` is a job (see
  :mod:`desktop.jobs`): ``progress(done, total, message)`` once per tensor (message like
  ``"blk.3.ffn_down.weight → f16"``), :class:`~desktop.errors.Cancelled` after removing the partial file,
  :class:`~desktop.errors.UserError` for every checkpoint it refuses. The result dict has ``path``, ``size``,
  ``outtype``, ``architecture``, ``tensors``, ``parameters``, ``seconds``, ``name``, ``size_label`` and, when the
  model card has them, ``license`` and ``base_model``.
* :func:`inspect_checkpoint` ``(src_dir) -> Checkpoint`` runs every check without writing anything (the GUI can
  call it to show a refusal before the user presses Convert).
* :func:`predict_size` ``(src_dir or Checkpoint, outtype="f16") -> int``: the bytes the tensors will take (the
  vocabulary adds a few MB), after the same checks; reads no weights.
* :func:`output_tensors` ``(Checkpoint, outtype) -> list[OutputTensor]``: the GGUF tensors it would write (names,
  shapes, types); :func:`remote_checkpoint` ``(config, {name: (dtype, shape)}, where)`` checks a checkpoint known only
  by its headers (a Hub repo) the same way. The converter is the one authority on checkpoint -> GGUF: Hub inspect
  and the Quantize page ask it.
* ``desktop.convert.job:run`` is the same job for :func:`desktop.process.run_in_child`.
* :data:`OUTTYPES` (``f32``, ``f16``, ``bf16``, ``q8_0``) and :data:`SUPPORTED` (Hugging Face class names).
"""

from __future__ import annotations

from desktop.convert.checkpoint import (SUPPORTED, SUPPORTED_SENTENCE, Checkpoint, inspect_checkpoint,
                                        remote_checkpoint)
from desktop.convert.writer import OUTTYPES, OutputTensor, convert, output_tensors, predict_size

__all__ = ["OUTTYPES", "SUPPORTED", "SUPPORTED_SENTENCE", "Checkpoint", "OutputTensor", "convert", "inspect_checkpoint",
           "output_tensors", "predict_size", "remote_checkpoint"]
