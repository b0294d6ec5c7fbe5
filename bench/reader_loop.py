"""The reader's fast iteration loop: the untuned lore spec's `reader+retrieval` and its ceiling, in minutes.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.reader_loop --out /tmp/reader-try [--data rows.jsonl]
        [--recipe '{"training": {"epochs": 3}}'] [--arms reader+retrieval,reader+gold-context]

The spec is `specs/lore-knowledge.yaml` without `chunking` and `top_k` (the "lore-defaults" copy of
docs/reading.md), so the index tunes its settings on the held-out half and the arms are scored on the
other half, exactly as `adaptflow run` does, with the same components (build_index, train_reader,
System, score_arm, add_losses). What `adaptflow run` adds (Prefect, the registry, forgetting, latency)
is left out. The index is built once under --cache; the reader is trained into --out/reader unless
--out/reader/adapter exists (delete it to retrain). Prints one JSON line per arm and writes
--out/rows.json with every prediction.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARMS = "base+retrieval,reader+retrieval,reader+gold-context"


def defaults_spec(out: Path):
    """specs/lore-knowledge.yaml with `chunking` and `top_k` deleted (paths made absolute)."""
    from components.specload import load_spec

    text = (REPO / "specs" / "lore-knowledge.yaml").read_text()
    text = re.sub(r"(?m)^\s*(chunking|top_k):.*\n", "", text).replace("name: lore-knowledge", "name: lore-defaults")
    text = text.replace("data/lore/", str(REPO / "specs" / "data" / "lore") + "/")
    path = out / "lore-defaults.yaml"
    path.write_text(text)
    return load_spec(path)


def index_for(spec, cache: Path) -> Path:
    from flows.keys import tune_rows
    from vectorstore import build_index

    where = cache / "index"
    if not (where / "index.json").exists():
        build_index(spec.knowledge, where, tune_rows=tune_rows(spec))
    return where


def reader_for(spec, out: Path, data: Path | None, recipe: dict) -> tuple[Path, dict]:
    """With neither --data nor --recipe: the `reader` stage itself (flows.pipeline), in $ADAPTFLOW_HOME's stage
    store under its real key, so a later `adaptflow run` of any knowledge spec finds it there (while the
    components package is unchanged). Otherwise a trial reader trained into --out/reader."""
    from components import reader

    if data is None and not recipe:
        from flows.keys import reader_key
        from flows.pipeline import reader_adapter
        from flows.stages import run_stage

        key = reader_key(spec)
        start = time.perf_counter()
        done = run_stage("reader", key, reader_adapter.fn, spec, key)
        return done.path / "adapter", {"stage": str(done.path), "cached": done.cached,
                                       "minutes": round((time.perf_counter() - start) / 60, 1)}
    where = out / "reader"
    if (where / "adapter").exists():
        return where / "adapter", {"cached": True}
    for section, values in recipe.items():
        reader.RECIPE[section] = {**reader.RECIPE[section], **values}
    start = time.perf_counter()
    record = reader.train_reader(spec, where, data=data).to_dict()
    record = {k: record.get(k) for k in ("steps", "train_tokens", "final_eval_loss", "eval_loss")} | {
        "train_minutes": round((time.perf_counter() - start) / 60, 1), "recipe": reader.RECIPE}
    (where / "loop_record.json").write_text(json.dumps(record, indent=1))
    return where / "adapter", record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/reader-loop-cache"))
    parser.add_argument("--data", type=Path, default=None, help="reader rows (default: the shipped reader.jsonl)")
    parser.add_argument("--recipe", default="{}", help="JSON merged into components.reader.RECIPE sections")
    parser.add_argument("--arms", default=DEFAULT_ARMS)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)

    from adaptflow.system import System
    from components.evaluate import add_losses, evaluation_half, gold_contexts, load_eval_items, score_arm

    spec = defaults_spec(args.out)
    index = index_for(spec, args.cache)
    arms = args.arms.split(",")
    adapter, record = reader_for(spec, args.out, args.data, json.loads(args.recipe)) if any(
        a.startswith("reader") for a in arms) else (None, {})
    print(json.dumps({"reader": record}), flush=True)
    system = System("loop", spec, adapter, index)
    if args.max_new_tokens:
        system.max_new_tokens = args.max_new_tokens
    items, _ = evaluation_half(load_eval_items(spec), system.retriever)
    gold = gold_contexts(items, system.retriever)
    report, rows = {"arms": {}}, {}
    for arm in arms:
        start = time.perf_counter()
        report["arms"][arm], rows[arm] = score_arm(system, items, arm, None, gold=gold)
        print(json.dumps({"arm": arm, "seconds": round(time.perf_counter() - start)}
                         | {k: round(v, 3) for k, v in report["arms"][arm].items()}), flush=True)
    add_losses(report, rows)
    print(json.dumps({"ceiling": report.get("ceiling"), "tuning": system.retriever.info.get("tuning", {}).get("chosen"),
                      "items": len(items)}), flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
