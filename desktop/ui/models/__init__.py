"""The Models page: the library and the Hugging Face tab."""
