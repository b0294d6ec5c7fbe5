"""`adaptflow export NAME@REF --to merged|gguf|ollama|vllm --out DIR`: a registered system in an engine's format
(components.export.run), verified against the adapted model before the folder appears."""

from __future__ import annotations

from pathlib import Path

import typer

from flows import console
from flows.options import RootOpt


def _summary(manifest: dict) -> list[str]:
    lines = []
    for name, check in manifest["verification"].items():
        drift = f", logits within {check['relative_logit_drift']:.2g} x max|logit|" if "relative_logit_drift" in check else ""
        if "agreement" in check:
            lines.append(f"  verified ({name}): {check['answers_equal']}/{check['prompts']} greedy answers equal the "
                         f"adapted model's{drift}")
        else:
            lines.append(f"  verified ({name}): {check['compared']}, {check['modules']} modules")
    return lines + [f"  note: {n}" for n in manifest["notes"]]


def export(
    ref: str = typer.Argument(..., help="NAME, NAME@vN or NAME@ALIAS of a registered system with an adapter"),
    to: str = typer.Option(..., "--to", help="merged | gguf | ollama | vllm"),
    out: Path = typer.Option(..., "--out", help="folder to create (refused if it exists and is not empty)"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16: the merged weights (and vLLM's --dtype)"),
    gguf_type: str = typer.Option("q8_0", "--gguf-type", help="gguf/ollama: f16 | q8_0 | q4_k_m (needs llama-cpp-python)"),
    lora: bool = typer.Option(False, "--lora", help="gguf: a GGUF LoRA adapter plus the base's GGUF, not a merge"),
    with_base: bool = typer.Option(False, "--with-base", help="vllm: copy the base model into the folder"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out"),
    root: Path | None = RootOpt,
) -> None:
    """Export a registered system for llama.cpp, Ollama, vLLM or transformers; every export is checked against
    the adapted model (logits and greedy answers) and records export.json (source, digest, tools, the numbers)."""
    from components.export.gguf import ConverterError
    from components.export.run import ExportError, export_version
    from components.registry import Registry, RegistryError

    try:
        result = export_version(Registry(root), ref, to, out, dtype=dtype, gguf_type=gguf_type, lora=lora,
                                force=force, with_base=with_base)
    except (ExportError, ConverterError, RegistryError, OSError) as exc:
        typer.echo(console.error_line(exc), err=True)
        raise typer.Exit(1) from None
    manifest = result.manifest
    typer.echo(f"exported {manifest['source']} --to {manifest['target']} into {result.out}")
    for line in _summary(manifest):
        typer.echo(line)
    for command in result.commands:
        typer.echo(f"  run: {command}")
