"""llama.cpp as QuantDesk runs it: engines (which build of llama.cpp a child process loads) and their builds."""
