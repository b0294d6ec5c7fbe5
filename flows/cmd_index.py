"""`adaptflow index SPEC`: build (or update) a spec's FAISS index and report how well it retrieves.

Heavy imports (torch, sentence-transformers, faiss) stay inside the command so that
`adaptflow --help` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from flows import console
from flows.options import VerboseOpt, WorkspaceOpt

VARIANTS = {"dense": (False, None), "hybrid": (True, None), "dense+mmr": (False, 0.7), "hybrid+mmr": (True, 0.7)}


def default_index_dir(name: str) -> Path:
    home = Path(os.environ.get("ADAPTFLOW_HOME", Path.home() / ".cache" / "adaptflow"))
    return home / "indexes" / name


class _Bar:
    """Turns build progress callbacks into a tqdm bar on stderr for the embedding stage."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != "embed" or total == 0:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc="embedding chunks", unit="chunk", leave=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None


def _describe(info: dict[str, Any], out: Path) -> list[str]:
    c, ix, rec, up = info["counts"], info["index"], info["recall"], info["update"]
    mode = "incremental update" if up["mode"] == "incremental" else "full build"
    lines = [
        f"built {out} in {info['build_seconds']:.1f} s (+ {info['embedder_load_seconds']:.1f} s loading the embedder; "
        f"{mode}: {up['reason']})",
        f"  documents {c['documents']}, chunks {c['chunks']}, vectors {c['vectors']} "
        f"(embedded {c.get('embedded', 0)}, from cache {c.get('cached', 0)}"
        + (f", kept {c['kept']})" if "kept" in c else ")"),
        f"  index {ix['factory']} ({ix['reason']})",
    ]
    if up["mode"] == "incremental":
        lines.append("  update: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in up.items() if isinstance(v, int)))
    if rec["exact"]:
        lines.append("  recall vs exact: 1.000 (exact search)")
    else:
        params = ", ".join(f"{k}={v}" for k, v in rec["params"].items())
        lines.append(f"  recall@{rec['k']} vs exact: {rec['recall_at_k']:.3f} on {rec['queries']} sampled queries "
                     f"({params}; floor {rec['min_recall']})")
    return lines


def _metrics_line(name: str, m: dict[str, Any]) -> str:
    k = m["k"]
    return (f"  {name:<11} hit@{k} {m['hit_at_k']:.3f}  recall@{k} {m['recall_at_k']:.3f}  "
            f"MRR {m['mrr']:.3f}  nDCG@{k} {m['ndcg']:.3f}")


def index(
    spec: Path = typer.Argument(..., help="spec file with a knowledge: section"),
    out: Path | None = typer.Option(None, "--out", help="index folder (default: $ADAPTFLOW_HOME/indexes/NAME)"),
    workspace: Path | None = WorkspaceOpt,
    full: bool = typer.Option(False, "--full", help="rebuild from scratch instead of updating the existing folder"),
    compare: bool = typer.Option(False, "--compare", help="also score hybrid (BM25 + dense, RRF) and MMR variants"),
    as_json: bool = typer.Option(False, "--json", help="print index.json and the metrics as JSON"),
    dask: str | None = typer.Option(None, "--dask", help="embed on Dask first: 'local' (a LocalCluster) or a "
                                    "scheduler address tcp://HOST:8786 (default: $ADAPTFLOW_DASK; unset: in-process)"),
    dask_workers: int | None = typer.Option(None, "--dask-workers", help="LocalCluster workers (default: cores / threads)"),
    dask_threads: int = typer.Option(1, "--dask-threads", help="torch threads per Dask worker"),
    shard_size: int = typer.Option(1024, "--dask-shard-size", help="chunks per Dask task (one cache write each)"),
    verbose: bool = VerboseOpt,
) -> None:
    """Build the spec's FAISS index; print build time, vectors, recall vs exact, and hit@k / MRR on its QA data."""
    console.setup("index", verbose)  # before the embedder's libraries load: no bars, no library warnings
    from components.spec.load import SpecError, load_spec

    try:
        task = load_spec(spec, workspace)
    except SpecError as exc:
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        raise typer.Exit(1) from None
    if task.knowledge is None:
        typer.echo(f"{spec}: there is no `knowledge:` section to index; add one (see specs/lore-knowledge.yaml)", err=True)
        raise typer.Exit(1)

    import vectorstore as vs

    out = out or default_index_dir(task.name)
    previous = out if (out / vs.INFO_FILE).exists() and not full else None
    try:
        if address := _dask_address(dask):
            from flows.embed_dask import embed_on_dask

            done = embed_on_dask(task.knowledge, vs.default_cache_dir(), address, workers=dask_workers,
                                threads=dask_threads, shard_size=shard_size)
            typer.echo(f"{task.name}: embedded {done['embedded']} chunks in {done['shards']} shards on Dask ({address}); "
                       f"{done['cached']} were cached", err=True)
        info = vs.build_index(task.knowledge, out, previous=previous, progress=_Bar())
        metrics = _evaluate(task, out, compare)
    except (ValueError, RuntimeError, OSError) as exc:  # our errors name the file, the field and the fix
        typer.echo(f"{spec}: {exc}", err=True)
        raise typer.Exit(1) from None

    if as_json:
        typer.echo(json.dumps({"index": info, "retrieval": metrics}, indent=2))
        return
    typer.echo(f"{task.name}: " + "\n".join(_describe(info, out)))
    if metrics:
        k = task.knowledge.top_k
        typer.echo(f"  retrieval on {task.evaluation.data.name} ({metrics['questions']} questions with doc_ids, k={k}):")
        for name, m in metrics["variants"].items():
            typer.echo(_metrics_line(name + (" *" if name == metrics["default"] else ""), m))
        if compare:
            typer.echo("  (* = what the spec uses: knowledge.hybrid; MMR lambda 0.7)")


def _dask_address(option: str | None) -> str | None:
    """`--dask` wins, then $ADAPTFLOW_DASK; None means no Dask (embed in this process)."""
    return option or os.environ.get("ADAPTFLOW_DASK") or None


def _evaluate(task: Any, out: Path, compare: bool) -> dict[str, Any] | None:
    """Retrieval metrics on the spec's evaluation data, when its rows carry doc_ids."""
    import vectorstore as vs

    if task.evaluation is None or task.evaluation.data is None:
        return None
    rows = vs.read_eval_rows(task.evaluation.data)
    if not rows:
        return None
    default = "hybrid" if task.knowledge.hybrid else "dense"
    names = list(VARIANTS) if compare else [default]
    variants = {}
    for name in names:
        hybrid, lam = VARIANTS[name]
        retriever = vs.Retriever.open(out, hybrid=hybrid, mmr_lambda=lam, verify=name == names[0])
        variants[name] = vs.evaluate_retrieval(retriever, rows, task.knowledge.top_k)
    return {"questions": len(rows), "default": default, "variants": variants}
