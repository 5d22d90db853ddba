"""An OpenAI-compatible HTTP server for one checkpoint (FastAPI on uvicorn).

    dsctl serve mini_r1:grpo --host 127.0.0.1 --port 8000

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream` as
server-sent events ending in `data: [DONE]`), GET /v1/models, GET /health. Every request
is decoded by one shared `DecodeEngine` (continuous batching), started and stopped by the
app's lifespan. A bad request gets a 4xx with an OpenAI-style error object (`api.py`) and
the server goes on; a client that disconnects mid-stream frees its batch row; SIGTERM
lets uvicorn finish the requests in flight, then the engine stops.

`create_app` only wires routes to a `Completions` service, which turns one validated
request into engine rows and their events into a response or a stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from dsctl.serve.api import (
    ApiError,
    ChatRequest,
    CompletionParams,
    CompletionRequest,
    Limits,
    invalid_request,
)
from dsctl.serve.engine import DecodeEngine, SamplingParams
from dsctl.serve.sse import Chunks, TextStream


class Completions:
    """Chat and text completions on one engine."""

    def __init__(self, engine: DecodeEngine, tokenizer: Any, limits: Limits) -> None:
        self.engine, self.tokenizer, self.limits = engine, tokenizer, limits

    async def events(self, prompt: list[int], params: SamplingParams, n: int) -> AsyncIterator[tuple]:
        """Submit n samples (seeds seed..seed+n-1); yields (choice, kind, value) events."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        requests = []
        for i in range(n):
            def on_event(event, i=i):
                loop.call_soon_threadsafe(queue.put_nowait, (i, *event))
            requests.append(self.engine.submit(prompt, dataclasses.replace(params, seed=params.seed + i), on_event))
        try:
            done = 0
            while done < n:
                event = await queue.get()
                if event[1] == "error":
                    raise ApiError(500, f"decoding failed: {event[2]}", None, "internal_error", "server_error")
                done += event[1] == "done"
                yield event
        finally:  # the client went away (or we finished): free every row still decoding
            for request in requests:
                request.cancel()

    async def respond(self, http: HttpRequest, body: CompletionParams, prompt: list[int], kind: str):
        params = self.limits.sampling(body, prompt)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.stream:
            chunks = Chunks(rid, kind, self.limits.model_name)
            return StreamingResponse(self.stream(http, body, prompt, params, chunks), media_type="text/event-stream")
        texts = [TextStream(self.tokenizer.decode, params.stop) for _ in range(body.n)]
        reasons: dict[int, str] = {}
        async for i, what, value in self.events(prompt, params, body.n):
            if what == "token":
                texts[i].tokens.append(value)  # decoded once, at the end
            else:
                reasons[i] = value
        choices = []
        for i, stream in enumerate(texts):
            text = stream.final_text()
            choice = {"index": i, "finish_reason": reasons[i]}
            choice.update({"message": {"role": "assistant", "content": text}} if kind == "chat" else
                          {"text": text, "logprobs": None})
            choices.append(choice)
        completion = sum(len(s.tokens) for s in texts)
        return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": self.limits.model_name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                          "total_tokens": len(prompt) + completion}}

    async def stream(self, http: HttpRequest, body: CompletionParams, prompt: list[int], params: SamplingParams,
                     chunks: Chunks) -> AsyncIterator[str]:
        texts = [TextStream(self.tokenizer.decode, params.stop) for _ in range(body.n)]
        if chunks.kind == "chat":
            for i in range(body.n):
                yield chunks.chunk(i, None, None, first=True)
        try:
            async for i, what, value in self.events(prompt, params, body.n):
                if await http.is_disconnected():
                    return  # leaving events() cancels every row
                if what == "token":
                    texts[i].add(value)
                    delta = texts[i].delta()
                    if delta:
                        yield chunks.chunk(i, delta, None)
                else:
                    yield chunks.chunk(i, texts[i].delta(final=True), value)
        except ApiError as exc:  # the status line is sent already: report it in the stream
            yield Chunks.data(exc.body())
        yield Chunks.data("[DONE]")


def create_app(model, tokenizer, model_name: str, context: int, default_max_tokens: int = 256,
               max_batch: int = 16, speculative: bool = True) -> FastAPI:
    """The FastAPI app serving `model` as `model_name`; the engine lives as long as the app."""
    engine = DecodeEngine(model, tokenizer.decode, max_batch=max_batch, speculative=speculative)
    service = Completions(engine, tokenizer, Limits(model_name, context, default_max_tokens, tokenizer.eos_id))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="dsctl serve", lifespan=lifespan)
    app.state.engine = engine
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        error = invalid_request(exc.errors())
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/health")
    def health() -> dict[str, Any]:
        proposed = engine.drafts_proposed
        return {"status": "ok", "model": model_name, "active": len(engine.active),
                "largest_batch": engine.largest_batch, "decode_steps": engine.steps,
                "speculative": engine.speculative, "drafts_proposed": proposed,
                "draft_acceptance": engine.drafts_accepted / proposed if proposed else None}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "dsctl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: HttpRequest):
        prompt, _ = tokenizer.encode_chat([m.model_dump() for m in body.messages], add_generation_prompt=True)
        return await service.respond(http, body, prompt, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise ApiError(400, "prompt must be one non-empty string", "prompt", "invalid_value")
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return await service.respond(http, body, [*bos, *tokenizer.encode(prompts[0])], "completion")

    return app
