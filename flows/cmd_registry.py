"""`adaptflow registry list | show | promote | diff`: read and move aliases in the artifact registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from components.registry import Registry, RegistryError, Version, gate_status, gate_summary
from flows import console
from flows.options import RootOpt
from flows.summary import arm_table

registry_app = typer.Typer(no_args_is_help=True, help="List, inspect, compare and promote registered versions.")
KEY_METRICS = 3  # metrics shown per row in `list` when no gates say which matter


@contextmanager
def _errors() -> Iterator[None]:
    """Registry errors and OSErrors (a read-only or full disk) are the user's to fix: one line, exit 1."""
    try:
        yield
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(console.error_line(exc), err=True)
        raise typer.Exit(1) from None


def _metric(key: str, value: Any) -> str:
    return f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"


def _key_metrics(manifest: dict[str, Any]) -> str:
    metrics = manifest.get("metrics") or {}
    gated = [r.get("metric") for r in (manifest.get("gates") or {}).get("results") or []]
    keys = [k for k in gated if k in metrics] or list(metrics)[:KEY_METRICS]
    return " ".join(_metric(k, metrics[k]) for k in keys)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


@registry_app.command("list")
def list_cmd(root: Path | None = RootOpt) -> None:
    """One row per task: versions, aliases, when the newest was created, its key metrics."""
    reg = Registry(root)
    with _errors():
        names = reg.names()
        if not names:
            typer.echo(f"no versions in {reg.root}")
            return
        rows = [["NAME", "VERSIONS", "ALIASES", "NEWEST", "CREATED", "METRICS"]]
        for name in names:
            versions = reg.versions(name)
            newest = versions[-1] if versions else None
            aliases = ", ".join(f"{a}=v{n}" for a, n in sorted(reg.aliases(name).items())) or "-"
            rows.append([
                name, str(len(versions)), aliases,
                f"v{newest.number}" if newest else "-",
                str(newest.manifest.get("created_at", "-")) if newest else "-",
                _key_metrics(newest.manifest) if newest else "",
            ])
        typer.echo(_table(rows))


def render_version(version: Version, aliases: dict[str, int]) -> str:
    m = version.manifest
    here = [a for a, n in sorted(aliases.items()) if n == version.number]
    route = m.get("route") or {}
    base = m.get("base_model") or {}
    volatile = m.get("volatile") or {}
    git_commit = m.get("git_commit", volatile.get("git_commit"))  # lineage moved to volatile: not content
    git_dirty = m.get("git_dirty", volatile.get("git_dirty"))
    lines = [
        f"{version.ref}" + (f"  ({', '.join(here)})" if here else ""),
        f"  path:        {version.path}",
        f"  created_at:  {m.get('created_at')}",
        f"  digest:      {m.get('content_digest')}",
        f"  spec_hash:   {m.get('spec_hash', '-')}",
        f"  route:       {route.get('decision', '-')}",
        *[f"    - {reason}" for reason in route.get("reasons") or []],
        f"  base_model:  {base.get('id', '-')} (revision {base.get('revision')}, weights {str(base.get('weights_hash'))[:12]})",
        f"               loads from {base.get('path', volatile.get('base_model_path', '-'))}",
        f"  git:         {git_commit or 'not in git'}" + (" (dirty)" if git_dirty else ""),
        "  metrics:     " + (" ".join(_metric(k, v) for k, v in (m.get("metrics") or {}).items()) or "-"),
        f"  gates:       {gate_status(m)}: {gate_summary(m)}",
        f"  files:       {len(version.files)} ({', '.join(sorted({f.split('/')[0] for f in version.files})) or '-'})",
    ]
    report = version.path / "eval" / "report.json"
    if report.exists():
        data = json.loads(report.read_text())
        lines += [f"  evaluation:  {data.get('items', '?')} items, main arm {data.get('main_arm')}",
                  *("  " + row for row in arm_table(data))]
    return "\n".join(lines)


@registry_app.command()
def show(
    ref: str = typer.Argument(..., help="NAME, NAME@vN or NAME@ALIAS (default alias: latest)"),
    as_json: bool = typer.Option(False, "--json", help="print the whole manifest as JSON"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check every file's sha256 first"),
    root: Path | None = RootOpt,
) -> None:
    """Summarise one version (or print its manifest with --json)."""
    reg = Registry(root)
    with _errors():
        version = reg.open(ref, verify=verify)
        if as_json:
            typer.echo(json.dumps(version.manifest, indent=2))
        else:
            typer.echo(render_version(version, reg.aliases(version.name)))


@registry_app.command()
def promote(
    ref: str = typer.Argument(..., help="NAME@vN to promote"),
    alias: str = typer.Argument(..., help="alias to move, e.g. production"),
    force: bool = typer.Option(False, "--force", help="promote even though its gates failed"),
    root: Path | None = RootOpt,
) -> None:
    """Point ALIAS at a version; refuses one whose gates failed unless --force."""
    reg = Registry(root)
    with _errors():
        version = reg.open(ref)  # never point an alias at a version that fails verification
        previous = reg.aliases(version.name).get(alias)
        reg.promote(version.ref, alias, force=force)
        was = f" (was v{previous})" if previous is not None else ""
        typer.echo(f"{version.name}@{alias} -> v{version.number}{was}")


def _fmt(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _changes(title: str, changes: dict[str, dict[str, Any]]) -> list[str]:
    if not changes:
        return [f"{title}: no changes"]
    return [f"{title}:"] + [f"  {k}: {_fmt(c['old'])} -> {_fmt(c['new'])}" for k, c in changes.items()]


def render_diff(d: dict[str, Any]) -> str:
    lines = [f"{d['a']} -> {d['b']}" + ("  (identical content)" if d["same_content"] else "")]
    lines += _changes("spec", d["spec"])
    lines.append("metrics:" if d["metrics"] else "metrics: none")
    for key, m in d["metrics"].items():
        delta = f" ({m['delta']:+.4g})" if m["delta"] is not None else ""
        lines.append(f"  {key}: {_fmt(m['old'])} -> {_fmt(m['new'])}{delta}")
    f = d["files"]
    lines.append(f"files: {len(f['changed'])} changed, {len(f['added'])} added, {len(f['removed'])} removed, "
                 f"{f['unchanged']} unchanged")
    lines += [f"  {mark} {p}" for mark, key in (("~", "changed"), ("+", "added"), ("-", "removed")) for p in f[key]]
    lines += _changes("other", d["other"])
    return "\n".join(lines)


@registry_app.command()
def diff(
    ref_a: str = typer.Argument(..., help="first version, e.g. support-assistant@v1"),
    ref_b: str = typer.Argument(..., help="second version, e.g. support-assistant@v2"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    root: Path | None = RootOpt,
) -> None:
    """Compare two versions: spec changes, metric deltas, changed files, lineage."""
    reg = Registry(root)
    with _errors():
        d = reg.diff(ref_a, ref_b)
        typer.echo(json.dumps(d, indent=2) if as_json else render_diff(d))


