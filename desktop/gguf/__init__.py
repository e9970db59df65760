"""GGUF headers: the one reader, for local files and remote headers read by byte ranges."""
