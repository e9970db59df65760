"""llama.cpp as QuantDesk runs it.

Engines (which build of llama.cpp a child process loads) and their builds:
* ``engines``: the registry (pip's CPU build, Vulkan/CUDA builds in the data folder), the selection (only engines
  whose smoke test passed) and the child environment (``LLAMA_CPP_LIB_PATH`` + library path, child only);
* ``toolchain``: what a build needs and the install command for this OS;
* ``build``: the build from llama-cpp-python's own source, the shared cache, install into the data folder;
* ``smoke``: the smoke test (every layer on the GPU, greedy tokens against the CPU engine's);
* ``gpu_layers``: the planner's default number of GPU layers for jobs on the selected engine.

Nothing is imported here: desktop.process reads ``engines`` when it starts a child, and importing the heavier
modules from this package file would tie process start-up to the chat engine.
"""
