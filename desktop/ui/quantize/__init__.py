"""The Quantize page."""
