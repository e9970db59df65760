"""GGUF headers: the one reader, for local files (memory-mapped) and remote headers (HTTP byte ranges), through
the one bounded parser in :mod:`desktop.gguf.parser`; the number bounds in :mod:`desktop.gguf.limits`.

Public surface: :func:`read_gguf` (cached), :class:`GGUFInfo`, :class:`TensorInfo`, :func:`head_counts`,
:func:`read_gguf_header` (remote), :func:`group_gguf_files`, :func:`quant_from_name`.
"""
