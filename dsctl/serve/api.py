"""The OpenAI API's request shapes, its error object, and the checks a request passes
before it reaches the engine: each check is a sentence naming the field, as OpenAI's own
errors do, and never a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from dsctl.serve.engine import SamplingParams


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class CompletionParams(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use

    model: str
    max_tokens: int | None = Field(None, description="Reply length in tokens (default: the server's).")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False


class ChatRequest(CompletionParams):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(CompletionParams):
    prompt: Union[str, list[str]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid_request(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's validation errors as one OpenAI-style 400 naming the first bad field."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # its "location" is a character offset, not a field
        detail = first.get("ctx", {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON{f' ({detail})' if detail else ''}", None,
                        "invalid_json")
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
    return ApiError(400, message, where, "invalid_value")


@dataclass(frozen=True)
class Limits:
    """What the served model allows a request."""

    model_name: str
    context: int
    default_max_tokens: int
    eos_id: int

    def sampling(self, body: CompletionParams, prompt: list[int]) -> SamplingParams:
        """The engine's parameters for `body` on `prompt`, or the ApiError saying why not."""
        if body.model != self.model_name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this server has '{self.model_name}'",
                           "model", "model_not_found")
        max_tokens = self.default_max_tokens if body.max_tokens is None else body.max_tokens
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}", "max_tokens", "invalid_value")
        if len(prompt) >= self.context:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens; this model's context is {self.context}",
                           "messages", "context_length_exceeded")
        if len(prompt) + max_tokens > self.context:
            raise ApiError(400, f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                           f"of {self.context}", "max_tokens", "context_length_exceeded")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              seed=body.seed if body.seed is not None else 0,
                              stop_token_ids=(self.eos_id,), stop=tuple(stops))
