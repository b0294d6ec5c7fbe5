"""`adaptflow chat NAME@REF`: one model load, then a prompt loop in the terminal (the chat page's twin)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from flows.options import RootOpt

HELP = "(/reset forgets the conversation, /quit or Ctrl-D leaves)"


def chat(
    system: str = typer.Argument(..., help="NAME, NAME@vN or NAME@alias"),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="ablation: skip the index"),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="ablation: the base model alone"),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="chunks to retrieve (default: the spec's top_k)"),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="answer length cap"),
    temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="0 = greedy"),
    root: Path | None = RootOpt,
) -> None:
    """Chat with a registered system: the answer streams, then its numbered sources and timings."""
    from transformers.utils import logging as hf_logging

    from adaptflow.system import load_system
    from components.registry import Registry, RegistryError

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    try:
        loaded = load_system(system, Registry(root))
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"loaded {loaded.ref} in {time.perf_counter() - start:.1f} s {HELP}")
    history: list[dict] = []
    while True:
        try:
            question = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            typer.echo()
            return
        if question in ("/quit", "/exit"):
            return
        if question == "/reset":
            history = []
            continue
        if question:
            history = _turn(loaded, history + [{"role": "user", "content": question}], no_retrieval=no_retrieval,
                            no_adapter=no_adapter, top_k=top_k, max_tokens=max_tokens, temperature=temperature)


def _turn(loaded, messages: list[dict], *, no_retrieval: bool, no_adapter: bool, top_k: int | None,
          max_tokens: int | None, temperature: float) -> list[dict]:
    """Stream one answer; return the conversation with it (unchanged if generation failed)."""
    start = time.perf_counter()
    try:
        stream = loaded.stream(messages=messages, use_adapter=not no_adapter, use_retrieval=not no_retrieval,
                               top_k=top_k, max_new_tokens=max_tokens, temperature=temperature)
        typer.echo(f"{loaded.ref}> ", nl=False)
        pieces = []
        for piece in stream:
            pieces.append(piece)
            typer.echo(piece, nl=False)
    except (ValueError, RuntimeError) as exc:
        typer.echo(f"\nerror: {exc}", err=True)
        return messages[:-1]
    typer.echo()
    for c in stream.citations:
        typer.echo(f"  [{c.n}] {c.doc_id}{f', {c.locator}' if c.locator else ''} — {c.title} (score {c.score:.3f})")
    total = (time.perf_counter() - start) * 1000
    typer.echo(f"  ({total:.0f} ms: retrieval {stream.retrieval_ms:.0f}, generation {total - stream.retrieval_ms:.0f}; "
               f"{stream.usage.completion_tokens} tokens, {stream.finish_reason})")
    return messages + [{"role": "assistant", "content": "".join(pieces).strip()}]
