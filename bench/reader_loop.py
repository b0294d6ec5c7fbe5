"""The reader's fast iteration loop: the untuned lore spec's `reader+retrieval` and its ceiling, in minutes.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.reader_loop --out /tmp/reader-try [--data rows.jsonl]
        [--recipe '{"training": {"epochs": 3}}'] [--arms reader+retrieval,reader+gold-context]

The spec is `specs/lore-knowledge.yaml` without `chunking` and `top_k` (the "lore-defaults" copy of
docs/reading.md), so the index tunes its settings on the held-out half and the arms are scored on the
other half, exactly as `adaptflow run` does, with the same components (build_index, train_reader,
System, score_arm, add_losses). What `adaptflow run` adds (Prefect, the registry, forgetting, latency)
is left out. The index is built once under --cache (per index stage key); the reader is trained into --out/reader unless
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
    from components.spec.load import load_spec

    text = (REPO / "specs" / "lore-knowledge.yaml").read_text()
    text = re.sub(r"(?m)^\s*(chunking|top_k):.*\n", "", text).replace("name: lore-knowledge", "name: lore-defaults")
    text = text.replace("data/lore/", str(REPO / "specs" / "data" / "lore") + "/")
    path = out / "lore-defaults.yaml"
    path.write_text(text)
    return load_spec(path)


def index_for(spec, cache: Path) -> Path:
    """The index under --cache, in a folder named by its stage key (the spec's knowledge settings, the held-out
    rows and the vectorstore code, tuning rule included): a changed rule builds a new one, never reads a stale one."""
    from flows.keys import index_key, tune_rows
    from vectorstore import build_index

    where = cache / f"index-{index_key(spec)[:16]}"
    if not (where / "index.json").exists():
        build_index(spec.knowledge, where, tune_rows=tune_rows(spec))
    return where


def reader_for(spec, out: Path, data: Path | None, recipe: dict) -> tuple[Path, dict]:
    """With neither --data nor --recipe: the `reader` stage itself (flows.pipeline), in $ADAPTFLOW_HOME's stage
    store under its real key, so a later `adaptflow run` of any knowledge spec finds it there (while the
    components package is unchanged). Otherwise a trial reader trained into --out/reader."""
    from components.training import reader

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


def settled(system, items, arm: str, rows: list[dict], gold) -> tuple[dict, list[dict]]:
    """The arm's rows re-decided with the system's calibrated abstention (the margins of the same answers)."""
    from components.evaluation.abstention import margins
    from components.evaluation.arms import _score_row, arm_parts
    from components.evaluation.metrics import aggregate
    from components.models.prompting import last_user_text, with_context
    from components.training.data import render_prompt

    context = arm_parts(arm)[1]
    if context == "gold":
        keep = [n for n, chunks in enumerate(gold) if chunks]
        items, contexts = [items[n] for n in keep], [gold[n] for n in keep]
    else:
        contexts = [[(h.title, h.text) for h in system.retrieve(i.query)] for i in items]
    tok = system.handle.tokenizer
    read = [with_context(i.messages, c) for i, c in zip(items, contexts, strict=True)]
    prompts = [render_prompt(tok, m) for m in read]
    predictions = [r["prediction"] for r in rows]
    with system.using(use_adapter=True) as model:
        found = margins(model, tok, prompts, predictions, score=system.abstention.score)
    backed = system.supports([last_user_text(m) for m in read], predictions)
    out = []
    for item, row, m, b in zip(items, rows, found, backed, strict=True):
        new = _score_row(item, system.abstention.decide(row["prediction"], m, b), None)
        out.append(new | {k: row[k] for k in ("retrieved", "has_gold") if k in row}
                   | {"margin": round(m, 3), "support": None if b is None else round(b, 3)})
    keys = ("exact_match", "answer_f1", "contains_answer", "abstain")
    return aggregate([{k: float(r[k]) for k in keys if k in r} for r in out]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/reader-loop-cache"))
    parser.add_argument("--data", type=Path, default=None, help="reader rows (default: the shipped reader.jsonl)")
    parser.add_argument("--recipe", default="{}", help="JSON merged into components.training.reader.RECIPE sections")
    parser.add_argument("--arms", default=DEFAULT_ARMS)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--abstain", choices=("auto", "model", "calibrated"), default="auto",
                        help="knowledge.abstain; the reader arms print the model-only and the calibrated scores "
                             "from one generation when it resolves to calibrated")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)

    from adaptflow.system import System
    from components.evaluation.abstention import Abstention
    from components.evaluation.arms import (
        abstain_mode,
        add_losses,
        calibrate_abstention,
        evaluation_half,
        gold_contexts,
        load_eval_items,
        score_arm,
    )

    spec = defaults_spec(args.out)
    spec = spec.model_copy(update={"knowledge": spec.knowledge.model_copy(update={"abstain": args.abstain})})
    index = index_for(spec, args.cache)
    arms = args.arms.split(",")
    adapter, record = reader_for(spec, args.out, args.data, json.loads(args.recipe)) if any(
        a.startswith("reader") for a in arms) else (None, {})
    print(json.dumps({"reader": record}), flush=True)
    system = System("loop", spec, adapter, index)
    if args.max_new_tokens:
        system.max_new_tokens = args.max_new_tokens
    every = load_eval_items(spec)
    mode = abstain_mode(spec, system)
    calibration = None
    if mode == "calibrated":
        start = time.perf_counter()
        calibration = calibrate_abstention(system, spec, every)
        print(json.dumps({"abstention": calibration, "seconds": round(time.perf_counter() - start)}), flush=True)
    items, _ = evaluation_half(every, system.retriever, calibrating=mode == "calibrated")
    gold = gold_contexts(items, system.retriever)
    report, rows, cal, cal_rows = {"arms": {}}, {}, {"arms": {}}, {}
    for arm in arms:
        start = time.perf_counter()
        calibrated, system.abstention = system.abstention, Abstention()  # one generation, both decisions
        report["arms"][arm], rows[arm] = score_arm(system, items, arm, None, gold=gold)
        system.abstention = calibrated
        print(json.dumps({"arm": arm, "abstain": "model", "seconds": round(time.perf_counter() - start)}
                         | {k: round(v, 3) for k, v in report["arms"][arm].items()}), flush=True)
        if calibration is not None and arm.startswith("reader"):
            cal["arms"][arm], cal_rows[arm] = settled(system, items, arm, rows[arm], gold)
            print(json.dumps({"arm": arm, "abstain": "calibrated"}
                             | {k: round(v, 3) for k, v in cal["arms"][arm].items()}), flush=True)
    add_losses(report, rows)
    if cal["arms"]:
        add_losses(cal, cal_rows)
        print(json.dumps({"calibrated_ceiling": cal.get("ceiling")}), flush=True)
    print(json.dumps({"ceiling": report.get("ceiling"), "tuning": system.retriever.info.get("tuning", {}).get("chosen"),
                      "items": len(items)}), flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows | {f"{a}@calibrated": r for a, r in cal_rows.items()}, indent=1))


if __name__ == "__main__":
    main()
