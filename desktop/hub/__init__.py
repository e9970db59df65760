"""Hugging Face: repo references, inspect, download, search, errors and the access token."""
