"""`adaptflow serve`: an OpenAI-compatible HTTP API over registered systems.

`model` is NAME@vN or NAME@alias (a bare NAME means NAME@latest). Systems on one base share it
(components.system); requests for different systems switch adapters under the base's lock.
Retrieved sources come back as a top-level `citations` list (and on the final stream chunk).
Every error is OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and a bad
request never takes the server down.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from components.registry import Registry, RegistryError, RegistryIntegrityError


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 * 1024
    max_tokens_cap: int = 512
    default_max_tokens: int = 128
    max_messages: int = 64


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict[str, str]:
        """{"role", "content"} with text parts joined; OpenAI's `developer` role is a system message."""
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, seed, ...)
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _null_is_default(cls, value, info):
        return {"temperature": 0.0, "top_p": 1.0}[info.field_name] if value is None else value


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class Systems:
    """Loaded systems by version ref; aliases are re-resolved on every request (a promotion shows at once)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: dict = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, ref: str):
        from components.system import load_system

        version = self.registry.resolve(ref)
        with self._lock:
            if version.ref in self._loaded:
                return self._loaded[version.ref]
            loading = self._loading.setdefault(version.ref, threading.Lock())
        with loading:  # one load per version; requests for loaded systems do not wait for it
            if version.ref not in self._loaded:
                system = load_system(version.ref, self.registry)
                with self._lock:
                    self._loaded[version.ref] = system
            return self._loaded[version.ref]

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def model_ids(self) -> list[str]:
        ids = []
        for name in self.registry.names():
            ids += [f"{name}@v{v.number}" for v in self.registry.versions(name)]
            ids += [f"{name}@{alias}" for alias in sorted(self.registry.aliases(name))]
        return ids


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "adaptflow"}


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (chunked uploads carry no Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, limits: Limits) -> ChatRequest | JSONResponse:
    """The validated request, or the 400 that says what is wrong with it."""
    try:
        req = ChatRequest.model_validate(json.loads(body))
    except json.JSONDecodeError as exc:
        return error(400, f"malformed JSON: {exc.msg} at position {exc.pos}; send a JSON object", code="invalid_json")
    except ValueError as exc:
        if not isinstance(exc, ValidationError):  # e.g. bytes that are not UTF-8
            return error(400, f"malformed JSON: {exc}; send a UTF-8 JSON object", code="invalid_json")
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        return error(400, f"{where}: {first['msg']}", param=str(first["loc"][0]) if first["loc"] else None)
    if len(req.messages) > limits.max_messages:
        return error(400, f"{len(req.messages)} messages; the limit is {limits.max_messages}", param="messages")
    max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens_cap:
        return error(400, f"max_tokens {max_tokens} is over this server's cap of {limits.max_tokens_cap}; ask for fewer",
                     param="max_tokens")
    if not any(m.role == "user" for m in req.messages):
        return error(400, "messages need at least one message with role 'user'", param="messages")
    req.max_tokens = max_tokens
    return req


def create_app(registry: Registry | None = None, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="Adaptflow", version="0.1.0")
    systems = Systems(registry or Registry())
    app.state.systems = systems
    _install_guards(app, api_key, limits)

    @app.get("/health")
    def health() -> dict:
        from components.system import base_loads

        return {"status": "ok", "loaded": systems.loaded(), "base_loads": base_loads()}

    @app.get("/v1/models")
    def models() -> dict:
        now = int(time.time())
        return {"object": "list", "data": [_model_card(i, now) for i in systems.model_ids()]}

    @app.get("/v1/models/{model_id}")
    def model(model_id: str):
        try:
            version = systems.registry.resolve(model_id)
        except RegistryError as exc:
            return error(404, f"model '{model_id}' not found: {exc}", param="model", code="model_not_found")
        return _model_card(model_id, int(time.time())) | {"version": version.ref}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _read_body(request, limits.max_body_bytes)
        if body is None:
            return error(413, f"request body is over the limit of {limits.max_body_bytes} bytes; send a shorter chat",
                         code="request_too_large")
        req = parse_request(body, limits)
        if isinstance(req, JSONResponse):
            return req
        try:
            system = await run_in_threadpool(systems.get, req.model.strip())
        except RegistryIntegrityError as exc:
            return error(500, f"model '{req.model}' failed its integrity check: {exc}", "server_error",
                         param="model", code="integrity_error")
        except RegistryError as exc:
            return error(404, f"model '{req.model}' not found: {exc}. GET /v1/models lists the registered systems",
                         param="model", code="model_not_found")
        messages = [m.plain() for m in req.messages]
        if req.stream:
            return StreamingResponse(_stream(system, req, messages), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        answer = await run_in_threadpool(
            lambda: system.query(messages=messages, max_new_tokens=req.max_tokens, temperature=req.temperature,
                                 top_p=req.top_p)
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "system_fingerprint": system.ref,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": asdict(answer.usage),
            "citations": [asdict(c) for c in answer.citations],
        }

    return app


def _install_guards(app: FastAPI, api_key: str | None, limits: Limits) -> None:
    """Bearer token on /v1/*, the Content-Length limit, and OpenAI-shaped bodies for every error."""

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            given = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error(401, "missing or wrong bearer token; send `Authorization: Bearer $ADAPTFLOW_API_KEY`",
                             "authentication_error", code="invalid_api_key")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_body_bytes:
            return error(413, f"request body is {length} bytes; the limit is {limits.max_body_bytes}",
                         code="request_too_large")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        hint = "; the API serves GET /health, GET /v1/models, POST /v1/chat/completions"
        message = f"{request.method} {request.url.path}: {exc.detail}" + (hint if exc.status_code in (404, 405) else "")
        return error(exc.status_code, message, code=str(exc.status_code))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return error(500, f"{type(exc).__name__}: {exc}", "server_error")


def _stream(system, req: ChatRequest, messages: list[dict]) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk format; the last chunk carries citations and usage."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "system_fingerprint": system.ref, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra}
        return f"data: {json.dumps(body)}\n\n"

    stream = None
    try:
        stream = system.stream(messages=messages, max_new_tokens=req.max_tokens, temperature=req.temperature,
                               top_p=req.top_p)
        yield chunk({"role": "assistant", "content": ""})
        for piece in stream:
            yield chunk({"content": piece})
        yield chunk({}, stream.finish_reason or "stop", citations=[asdict(c) for c in stream.citations],
                    usage=asdict(stream.usage) if stream.usage else None)
    except Exception as exc:  # noqa: BLE001 - the status line is sent; the error goes in the stream
        body = {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "param": None, "code": None}}
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        if stream is not None:
            stream.close()  # a client that went away stops the generation and frees the base
    yield "data: [DONE]\n\n"
