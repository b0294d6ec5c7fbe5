"""`adaptflow query` and `adaptflow serve`: ask a registered system, from the shell or over HTTP."""

from __future__ import annotations

import ipaddress
import json
import os

import typer

from flows.cli import app


@app.command()
def query(
    system: str = typer.Argument(..., help="NAME, NAME@vN or NAME@alias"),
    question: str = typer.Argument(...),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="ablation: skip the index"),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="ablation: the base model alone"),
    top_k: int | None = typer.Option(None, "--top-k"),
    max_tokens: int | None = typer.Option(None, "--max-tokens"),
    as_json: bool = typer.Option(False, "--json", help="{answer, citations, system, latency_ms}"),
) -> None:
    """Answer a question with a registered system, then list numbered citations."""
    from components.registry import RegistryError
    from components.system import load_system

    try:
        loaded = load_system(system)
    except RegistryError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    answer = loaded.query(question, use_adapter=not no_adapter, use_retrieval=not no_retrieval,
                          top_k=top_k, max_new_tokens=max_tokens)
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), indent=2))
        return
    typer.echo(answer.answer)
    if answer.citations:
        typer.echo("\nSources:")
        for c in answer.citations:
            typer.echo(f"  [{c.n}] {c.doc_id} — {c.title} (score {c.score:.3f})\n      {c.snippet[:160]}")
    typer.echo(f"\n({answer.system}, {answer.latency_ms:.0f} ms: retrieval {answer.retrieval_ms:.0f}, "
               f"generation {answer.generation_ms:.0f})")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback requires ADAPTFLOW_API_KEY"),
    port: int = typer.Option(8000),
) -> None:
    """OpenAI-compatible API: GET /health, GET /v1/models, POST /v1/chat/completions."""
    import uvicorn

    from flows.api import create_app

    key = os.environ.get("ADAPTFLOW_API_KEY") or None
    if not _is_loopback(host) and not key:
        typer.echo(f"refusing to bind {host} without a token: set ADAPTFLOW_API_KEY (clients send it as a bearer token)",
                   err=True)
        raise typer.Exit(1)
    uvicorn.run(create_app(api_key=key), host=host, port=port, log_level="info")
