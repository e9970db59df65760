"""Chat: the engine (a child process running llama.cpp) and its client, chat templates, conversations; serving the
loaded model as an OpenAI-compatible API (server, turns, openai_api, api_keys) and chatting with a remote
OpenAI-compatible server (remote), which delivers the local engine's events."""
