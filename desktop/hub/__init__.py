"""Hugging Face: repo references and listings (repo), inspect before download (inspect; sandbox runs it in a child
process with time and memory limits), bounded reads of a repo's files (fetch, http), download, search, errors and
the access token (tokens: sent only to the endpoint it was saved for)."""
