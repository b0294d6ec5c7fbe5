"""The OpenAI request bodies `adaptflow serve` accepts, field by field (docs/serving.md lists them).

Every field is honoured or refused: unknown fields are a 400 that names them, so nothing a client
sends is silently ignored. `adaptflow` is our extension: per-request retrieval and adapter controls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REFUSED = {  # field -> why; a request that sets any of these gets a 400 naming it
    "tools": "tool calling is not supported by this server",
    "tool_choice": "tool calling is not supported by this server",
    "functions": "function calling is not supported by this server",
    "function_call": "function calling is not supported by this server",
    "parallel_tool_calls": "tool calling is not supported by this server",
    "audio": "audio output is not supported", "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported", "logit_bias": "logit_bias is not supported",
    "suffix": "suffix (fill-in-the-middle) is not supported",
    "web_search_options": "web search is not supported", "reasoning_effort": "these models do not reason",
}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 * 1024
    max_tokens_cap: int = 512
    default_max_tokens: int = 128
    max_messages: int = 64
    max_n: int = 8
    max_context: int | None = None  # tokens; None: the model's own context length
    request_timeout_s: float = 120.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. cache_control hints on a text part
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` on a message has no meaning to these templates
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict[str, str]:
        """{"role", "content"} with text parts joined; OpenAI's `developer` role is a system message."""
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class Extension(Strict):
    """`adaptflow: {top_k, retrieval, adapter}`: retrieval depth, retrieval off/on, the adapter off (ablation)."""

    top_k: int | None = Field(None, ge=1, le=50)
    retrieval: bool | None = None  # default: on for chat, off for /v1/completions
    adapter: bool = True


class JsonSchema(Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema: {name, schema}")
        return self


class StreamOptions(Strict):
    include_usage: bool = True  # usage always rides on the last chunk


class Generation(Strict):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None  # an end-user id: accepted, not stored (docs/serving.md)
    presence_penalty: float | None = None  # only 0 (checked above)
    frequency_penalty: float | None = None
    metadata: dict[str, str] | None = None  # accepted, not stored
    store: bool | None = None  # nothing is stored either way
    adaptflow: Extension = Field(default_factory=Extension)

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _null_is_default(cls, value, info):
        return {"temperature": 0.0, "top_p": 1.0}[info.field_name] if value is None else value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop strings")
        return stops

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, data):
        if isinstance(data, dict):
            for name, why in REFUSED.items():
                if data.get(name) not in (None, False, [], {}):
                    raise ValueError(f"{name}: {why}")
            for name in ("presence_penalty", "frequency_penalty"):
                if data.get(name) not in (None, 0):
                    raise ValueError(f"{name}: penalties are not supported; send 0 or leave it out")
            if data.get("best_of") not in (None, data.get("n", 1)):
                raise ValueError("best_of: only best_of == n is supported (every sample is returned)")
        return data


class ChatRequest(Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(Generation):
    """`prompt` as text, texts, token ids or lists of token ids (as vLLM takes it); `echo` returns the prompt
    before the completion, with each prompt token's logprob under `logprobs` (lm-evaluation-harness's
    loglikelihood requests); `max_tokens: 0` with echo scores the prompt without generating."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text, or the token ids of one prompt."""
        one = isinstance(self.prompt, str) or (bool(self.prompt) and isinstance(self.prompt[0], int))
        return [self.prompt] if one else list(self.prompt)


class EmbeddingRequest(Strict):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def parse(body: bytes, model: type[BaseModel]) -> BaseModel | JSONResponse:
    """The validated request, or the 400 that says what is wrong with it."""
    try:
        return model.model_validate(json.loads(body))
    except json.JSONDecodeError as exc:
        return error(400, f"malformed JSON: {exc.msg} at position {exc.pos}; send a JSON object", code="invalid_json")
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        where = ".".join(loc) or "body"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field '{where}': this server does not support it (docs/serving.md lists the fields)"
        if loc:
            return error(400, f"{where}: {message}", param=loc[0])
        field = message.split(":")[0]
        if field in REFUSED or field in ("presence_penalty", "frequency_penalty", "best_of"):
            return error(400, message, param=field, code="unsupported_parameter")
        return error(400, f"body: {message}")
    except ValueError as exc:  # e.g. bytes that are not UTF-8
        return error(400, f"malformed JSON: {exc}; send a UTF-8 JSON object", code="invalid_json")


def check_chat(req: ChatRequest, limits: Limits) -> JSONResponse | None:
    if len(req.messages) > limits.max_messages:
        return error(400, f"{len(req.messages)} messages; the limit is {limits.max_messages}", param="messages")
    if not any(m.role == "user" for m in req.messages):
        return error(400, "messages need at least one message with role 'user'", param="messages")
    if req.top_logprobs and not req.logprobs:
        return error(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    req.max_tokens = req.max_completion_tokens or req.max_tokens
    return check_generation(req, limits)


def check_completion(req: CompletionRequest, limits: Limits) -> JSONResponse | None:
    if req.max_tokens == 0 and not req.echo:
        return error(400, "max_tokens: 0 needs echo: true (the prompt's logprobs, nothing generated); "
                          "ask for at least 1 token", param="max_tokens")
    if req.echo and req.stream:
        return error(400, "echo with stream is not supported; send stream: false", param="echo",
                     code="unsupported_parameter")
    if req.echo and req.adaptflow.retrieval:
        return error(400, "echo with adaptflow.retrieval is not supported: the echoed prompt would not be the one "
                          "sent; leave retrieval off", param="echo", code="unsupported_parameter")
    if req.adaptflow.retrieval and any(not isinstance(p, str) for p in req.prompts()):
        return error(400, "adaptflow.retrieval needs text prompts (it searches with the prompt's text); "
                          "send the prompt as a string", param="prompt")
    if any(isinstance(p, list) and not p for p in req.prompts()):
        return error(400, "prompt: a list of token ids is empty; send at least one token", param="prompt")
    return check_generation(req, limits)


def check_generation(req: Generation, limits: Limits) -> JSONResponse | None:
    if req.max_tokens is None:
        req.max_tokens = limits.default_max_tokens
    if req.max_tokens > limits.max_tokens_cap:
        return error(400, f"max_tokens {req.max_tokens} is over this server's cap of {limits.max_tokens_cap}; "
                          "ask for fewer", param="max_tokens")
    if req.n > limits.max_n:
        return error(400, f"n is {req.n}; this server allows up to {limits.max_n} choices", param="n")
    return None
