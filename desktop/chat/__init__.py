"""Chat: the engine (a child process running llama.cpp) and its client, chat templates, conversations."""
