"""`tfllm serve`: an OpenAI-compatible HTTP server with continuous batching.

Reading order, following a request: `app` (routes) -> `schemas` (request checks) -> `scheduler`
(the one thread that owns the model: admits waiting sequences into free slots, runs the decode
step, retires finished sequences) -> `engine` (the compiled prefill and decode step over slots,
with the KV cache on the device) and `text` (token ids <-> text, stop strings). `loading` reads
a workdir or an export; `metrics` is the Prometheus page; `page` the chat page.

May import: model, runs, serve, tokenizers and the shared modules (tests/test_layout.py). FastAPI,
Starlette, uvicorn and pydantic come with the `serve` extra (`pip install tfllm[serve]`).
"""
