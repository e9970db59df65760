"""Memory: the one planner of what fits where (weights, KV cache, compute buffers, margins)."""
