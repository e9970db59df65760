"""Quantization: the types, size prediction, llama.cpp quantize, importance matrices and the page's pipeline."""
