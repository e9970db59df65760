"""Hardware: CPU, memory, GPUs, and what the installed llama.cpp can use."""
