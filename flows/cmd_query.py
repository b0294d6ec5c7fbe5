"""`adaptflow query` and `adaptflow serve`: ask a registered system, from the shell or over HTTP."""

from __future__ import annotations

import ipaddress
import json
import os
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
) -> None:
    """OpenAI-compatible API and a chat page: GET /, /health, /metrics, /v1/models; POST /v1/chat/completions,
    /v1/completions, /v1/embeddings (model = NAME@REF). docs/serving.md lists every field."""
    import uvicorn

    from components.registry import Registry
    from components.serving.engine import configure
    from flows.api import Limits, create_app

    key = os.environ.get(API_KEY_ENV) or None
    if not is_loopback(host) and not key:
        typer.echo(f"error: refusing to bind {host} without a token: anyone who can reach it could use it. "
                   f"Set {API_KEY_ENV} (clients send it as `Authorization: Bearer ...`) or bind 127.0.0.1", err=True)
        raise typer.Exit(1)
    registry = Registry(root)
    typer.echo(f"serving {registry.root} on http://{host}:{port}/v1 ({'bearer token required' if key else 'no token'})")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # the engine threads read it (torch keeps one intra-op setting)
    configure(max_batch=max_batch, max_queue=max_queue, window_ms=batch_window_ms)
    limits = Limits(max_tokens_cap=max_tokens_cap, default_max_tokens=min(128, max_tokens_cap), max_context=max_context,
                    request_timeout_s=request_timeout)
    app_ = create_app(registry, api_key=key, limits=limits, max_adapters=max_adapters)
    uvicorn.run(app_, host=host, port=port, log_level="info")
