"""llama.cpp as QuantDesk runs it.

Engines (which build of llama.cpp a child process loads) and their builds:
* ``engines``: the registry (pip's CPU build, Vulkan/CUDA builds in the data folder), the selection (only engines
  whose smoke test passed) and the child environment (``LLAMA_CPP_LIB_PATH`` + library path, child only);
* ``toolchain``: what a build needs and the install command for this OS;
* ``build``: the build from llama-cpp-python's own source, the shared cache, install into the data folder;
* ``smoke``: the smoke test (every layer on the GPU, greedy tokens against the CPU engine's);
* ``gpu_layers``: the planner's default number of GPU layers for jobs on the selected engine.

Inside a child, the one way llama.cpp is opened and run (none of these imports llama_cpp at import time):
* ``session``: :class:`~desktop.llama.session.LlamaSession`, a model and its context through the low-level API,
  one reused batch, the abort callback only for long decodes; ``default_threads`` (CLI: all physical cores; the
  window keeps one free on small machines);
* ``params``: model params with CPU repacking off (the AMX/repack path segfaults on Q4_K here), and
  ``patched_model_params`` for code that must use ``Llama()``;
* ``log``: ``llama_log``, the process-wide llama.cpp log callback (capture, listeners, last errors);
* ``generate``: the lean generation loop that chat and the evaluation's speed measurement share;
* ``native``: the token loop in C (``resources/native/qdloop.c``, built once per machine, or bundled): pick, stamp
  and decode with no Python between tokens, and an abort callback that reads a flag;
* ``threadpool``: persistent CPU thread pools attached to every context, as llama.cpp's own tools do;
* ``ggml``: ggml's C API beyond llama-cpp-python's bindings (backend registry, ggml-base), opened from the
  selected engine's libraries.

Nothing is imported here: desktop.process reads ``engines`` when it starts a child, and importing the heavier
modules from this package file would tie process start-up to the chat engine.
"""
