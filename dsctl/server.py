"""An OpenAI-compatible HTTP server for one checkpoint (FastAPI on uvicorn).

    dsctl serve mini_r1:grpo --host 127.0.0.1 --port 8000

Endpoints: POST /v1/chat/completions, POST /v1/completions (both with `stream` as
server-sent events ending in `data: [DONE]`), GET /v1/models, GET /health. Every request
is decoded by one shared `DecodeEngine` (continuous batching). A bad request gets a 4xx
with an OpenAI-style error object `{"error": {"message", "type", "param", "code"}}` and
the server goes on; a client that disconnects mid-stream frees its batch row; SIGTERM
lets uvicorn finish the requests in flight, then the engine stops.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal, Union

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from dsctl.engine import DecodeEngine, SamplingParams


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use

    model: str
    max_tokens: int | None = Field(None, description="Reply length in tokens (default: the server's).")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def create_app(model, tokenizer, model_name: str, context: int, default_max_tokens: int = 256,
               max_batch: int = 16, speculative: bool = True):
    """The FastAPI app serving `model` as `model_name` (the engine starts with the app)."""
    app = FastAPI(title="dsctl serve")
    engine = DecodeEngine(model, tokenizer.decode, max_batch=max_batch, speculative=speculative)
    app.state.engine = engine
    created = int(time.time())

    @app.on_event("shutdown")
    def _stop_engine() -> None:
        engine.close()

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # its "location" is a character offset, not a field
            detail = first.get("ctx", {}).get("error", "")
            message = f"the request body is not valid JSON{f' ({detail})' if detail else ''}"
            return JSONResponse(ApiError(400, message, None, "invalid_json").body(), status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return JSONResponse(ApiError(400, message, where, "invalid_value").body(), status_code=400)

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

    def _check(body: _Common, prompt: list[int]) -> SamplingParams:
        if body.model != model_name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this server has '{model_name}'",
                           "model", "model_not_found")
        max_tokens = default_max_tokens if body.max_tokens is None else body.max_tokens
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens", "invalid_value")
        if len(prompt) >= context:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens; this model's context is {context}",
                           "messages", "context_length_exceeded")
        if len(prompt) + max_tokens > context:
            raise ApiError(400, f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                           f"of {context}", "max_tokens", "context_length_exceeded")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              seed=body.seed if body.seed is not None else 0,
                              stop_token_ids=(tokenizer.eos_id,), stop=tuple(stops))

    async def _run(prompt: list[int], params: SamplingParams, n: int):
        """Submit n samples (seeds seed..seed+n-1); yields (choice, kind, value) events."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        requests = []
        for i in range(n):
            def on_event(event, i=i):
                loop.call_soon_threadsafe(events.put_nowait, (i, *event))
            sample = SamplingParams(**{**params.__dict__, "seed": params.seed + i})
            requests.append(engine.submit(prompt, sample, on_event))
        try:
            done = 0
            while done < n:
                event = await events.get()
                if event[1] == "error":
                    raise ApiError(500, f"decoding failed: {event[2]}", None, "internal_error", "server_error")
                done += event[1] == "done"
                yield event
        finally:  # the client went away (or we finished): free every row still decoding
            for request in requests:
                request.cancel()

    def _text(ids: list[int], stops: tuple[str, ...]) -> str:
        text = tokenizer.decode(ids)
        for stop in stops:
            if stop in text:
                text = text[:text.index(stop)]
        return text

    async def _respond(http: HttpRequest, body: _Common, prompt: list[int], kind: str):
        params = _check(body, prompt)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        obj = "chat.completion" if kind == "chat" else "text_completion"
        if body.stream:
            return StreamingResponse(_stream(http, body, prompt, params, rid, kind), media_type="text/event-stream")
        ids: dict[int, list[int]] = {i: [] for i in range(body.n)}
        reasons: dict[int, str] = {}
        async for i, what, value in _run(prompt, params, body.n):
            if what == "token":
                ids[i].append(value)
            else:
                reasons[i] = value
        choices = []
        for i in range(body.n):
            text = _text(ids[i], params.stop)
            choice = {"index": i, "finish_reason": reasons[i]}
            choice.update({"message": {"role": "assistant", "content": text}} if kind == "chat" else
                          {"text": text, "logprobs": None})
            choices.append(choice)
        completion = sum(len(v) for v in ids.values())
        return {"id": rid, "object": obj, "created": int(time.time()), "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                          "total_tokens": len(prompt) + completion}}

    async def _stream(http: HttpRequest, body: _Common, prompt: list[int], params: SamplingParams, rid: str,
                      kind: str):
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        ids: dict[int, list[int]] = {i: [] for i in range(body.n)}
        sent: dict[int, str] = {i: "" for i in range(body.n)}

        def chunk(i: int, delta: str | None, finish: str | None, first: bool = False) -> str:
            if kind == "chat":
                payload: dict[str, Any] = {"role": "assistant"} if first else {}
                if delta:
                    payload["content"] = delta
                choice = {"index": i, "delta": payload, "finish_reason": finish}
            else:
                choice = {"index": i, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": int(time.time()),
                                          "model": model_name, "choices": [choice]}) + "\n\n"

        def on_event(i: int, what: str, value) -> list[str]:
            """The SSE chunks one engine event turns into."""
            if what == "token":
                ids[i].append(value)
            text = _text(ids[i], params.stop)
            if what != "token":
                return [chunk(i, text[len(sent[i]):], value)]
            # hold back a character that may still change as more bytes arrive
            safe = text[:-1] if text.endswith("\ufffd") else text
            if len(safe) <= len(sent[i]):
                return []
            delta, sent[i] = safe[len(sent[i]):], safe
            return [chunk(i, delta, None)]

        if kind == "chat":
            for i in range(body.n):
                yield chunk(i, None, None, first=True)
        try:
            async for event in _run(prompt, params, body.n):
                if await http.is_disconnected():
                    return  # leaving _run's generator cancels every row
                for piece in on_event(*event):
                    yield piece
        except ApiError as exc:  # the status line is sent already: report it in the stream
            yield "data: " + json.dumps(exc.body()) + "\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: HttpRequest):
        prompt, _ = tokenizer.encode_chat([m.model_dump() for m in body.messages], add_generation_prompt=True)
        return await _respond(http, body, prompt, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise ApiError(400, "prompt must be one non-empty string", "prompt", "invalid_value")
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return await _respond(http, body, [*bos, *tokenizer.encode(prompts[0])], "completion")

    return app
