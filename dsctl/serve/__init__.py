"""Using a model: the continuous-batching decode engine (`engine.py`), the OpenAI-compatible
HTTP server (`app.py` routes and lifespan, `api.py` request schemas and validation,
`sse.py` incremental text and server-sent events) and the terminal chat (`chat.py`).
Imports nothing, so `dsctl --help` loads no torch or FastAPI."""
