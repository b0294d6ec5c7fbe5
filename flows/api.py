"""`adaptflow serve`: an OpenAI-compatible HTTP API over registered systems.

`model` is NAME@vN or NAME@alias. Systems on one base share it (components.system); requests
for different systems switch adapters under the base's lock. Retrieved sources come back as a
top-level `citations` list (and on the final stream chunk).
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.registry import Registry, RegistryError


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 * 1024
    max_tokens_cap: int = 512
    max_messages: int = 64


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n, user, ...)
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class Systems:
    """Loaded systems by version ref; aliases are re-resolved on every request."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: dict = {}
        self._lock = threading.Lock()

    def get(self, ref: str):
        from components.system import load_system

        version = self.registry.resolve(ref)
        with self._lock:
            if version.ref not in self._loaded:
                self._loaded[version.ref] = load_system(version.ref, self.registry)
            return self._loaded[version.ref]

    def model_ids(self) -> list[str]:
        ids = []
        for name in self.registry.names():
            ids += [v.ref for v in self.registry.versions(name)]
            ids += [f"{name}@{alias}" for alias in sorted(self.registry.aliases(name))]
        return ids


def _usage(tokenizer, messages: list[dict], answer: str) -> dict:
    prompt = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)
    completion = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(registry: Registry | None = None, api_key: str | None = None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="Adaptflow", version="0.1.0")
    systems = Systems(registry or Registry())

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return error(401, "missing or wrong bearer token; send `Authorization: Bearer $ADAPTFLOW_API_KEY`",
                             "authentication_error", code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return error(413, f"request body is {length} bytes; the limit is {limits.max_body_bytes}",
                         code="request_too_large")
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "loaded": sorted(systems._loaded)}

    @app.get("/v1/models")
    def models() -> dict:
        now = int(time.time())
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "adaptflow"}
                                           for i in systems.model_ids()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.body()
        if len(body) > limits.max_body_bytes:
            return error(413, f"request body is {len(body)} bytes; the limit is {limits.max_body_bytes}",
                         code="request_too_large")
        try:
            req = ChatRequest.model_validate(json.loads(body))
        except json.JSONDecodeError as exc:
            return error(400, f"malformed JSON: {exc.msg} at position {exc.pos}")
        except ValidationError as exc:
            first = exc.errors()[0]
            return error(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}", param=str(first["loc"][0]))
        if len(req.messages) > limits.max_messages:
            return error(400, f"{len(req.messages)} messages; the limit is {limits.max_messages}", param="messages")
        max_tokens = req.max_completion_tokens or req.max_tokens or 128
        if max_tokens > limits.max_tokens_cap:
            return error(400, f"max_tokens {max_tokens} is over the cap {limits.max_tokens_cap}", param="max_tokens")
        if not any(m.role == "user" for m in req.messages):
            return error(400, "messages need at least one user message", param="messages")
        try:
            system = await run_in_threadpool(systems.get, req.model)
        except RegistryError as exc:
            return error(404, f"model '{req.model}' not found: {exc}", param="model", code="model_not_found")
        messages = [m.model_dump() for m in req.messages]
        if req.stream:
            return StreamingResponse(_stream(system, req, messages, max_tokens), media_type="text/event-stream")
        answer = await run_in_threadpool(
            lambda: system.query(messages=messages, max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p)
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "system_fingerprint": system.ref,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer}, "finish_reason": "stop"}],
            "usage": _usage(system.handle.tokenizer, messages, answer.answer),
            "citations": [asdict(c) for c in answer.citations],
        }

    return app


def _stream(system, req: ChatRequest, messages: list[dict], max_tokens: int) -> Iterator[str]:
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "system_fingerprint": system.ref, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    citations, pieces = system.stream(messages, max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p)
    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        if piece:
            yield chunk({"content": piece})
    yield chunk({}, "stop", citations=[asdict(c) for c in citations])
    yield "data: [DONE]\n\n"
