"""The knowledge system on every frozen corpus: base+retrieval, the default system and the gold-context ceilings.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.unseen [--corpora lore,manual,...] [--out /tmp/unseen]
        [--reader FOLDER | --no-reader] [--arms base+retrieval,reader+retrieval] [--max-new-tokens N]
        [--chunking SIZE,OVERLAP] [--no-gold] [--abstain auto|model|calibrated] [--base gemma3-270m]
        [--reader-model gemma3-270m]

Each corpus is a spec as a new user writes it (`specs/unseen/NAME.yaml`: the documents, the evaluation file,
everything else default; lore is `specs/lore-knowledge.yaml` as shipped). The index is built by the real build
(`vectorstore.build_index`, tuning included where the spec leaves settings unset and enough held-out questions
exist), and the arms are scored by the real evaluation (`components.evaluation.arms.evaluate`: the same held-out
split, reader choice, gold-context arms, bootstrap intervals as `adaptflow run`). The reader is the shipped one
(`components/resources/reader-adapter/`) unless --reader names another peft folder.

The frozen corpora (specs/data/unseen/FROZEN) are not read one question at a time: this prints per-corpus
aggregates with their 95 % intervals and the mean over corpora, and keeps each corpus's report under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNSEEN = REPO / "specs" / "data" / "unseen"


def corpora() -> list[str]:
    return ["lore", *sorted(p.parent.name for p in UNSEEN.glob("*/qa.jsonl"))]


def spec_path(name: str) -> Path:
    return REPO / "specs" / ("lore-knowledge.yaml" if name == "lore" else f"unseen/{name}.yaml")


def reader_folder(spec, given: Path | None) -> Path:
    if given is not None:
        return given
    from components.training.reader import copy_shipped, shipped_record

    record = shipped_record(spec)
    if record is None:
        raise SystemExit("no shipped reader matches this base; pass --reader FOLDER or run "
                         "`python -m components.training.reader --ship`")
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="unseen-reader-"))
    copy_shipped(record, where)
    return where / "adapter"


def run_corpus(name: str, out: Path, reader: Path | None, use_reader: bool, arms: list[str],
               max_new_tokens: int | None, chunking: tuple[int, int] | None = None, gold: bool = True,
               abstain: str | None = None, base: str | None = None, reader_model: str | None = None) -> dict:
    from adaptflow.system import System
    from components.evaluation.arms import evaluate
    from components.spec.load import load_spec
    from flows.keys import tune_rows
    from vectorstore import build_index

    spec = load_spec(spec_path(name))
    if chunking is not None and name != "lore":  # a trial default; lore keeps the settings its spec gives
        from components.spec import ChunkingSpec

        knowledge = spec.knowledge.model_copy(update={"chunking": ChunkingSpec(size=chunking[0], overlap=chunking[1])})
        spec = spec.model_copy(update={"knowledge": knowledge})
    if base is not None:  # another base model (a built-in alias or a folder) reads the same corpus
        from components.spec import BaseModelSpec

        spec = spec.model_copy(update={"base_model": BaseModelSpec(id=base)})
    if reader_model is not None:  # knowledge.reader_model: another model writes every answer (docs/reading.md)
        from components.spec import ReaderModelSpec

        knowledge = spec.knowledge.model_copy(update={"reader_model": ReaderModelSpec(id=reader_model)})
        spec = spec.model_copy(update={"knowledge": knowledge})
    if abstain is not None:  # a trial of the abstention default (`knowledge.abstain`)
        spec = spec.model_copy(update={"knowledge": spec.knowledge.model_copy(update={"abstain": abstain})})
    where = out / name
    index = where / "index"
    if not (index / "index.json").exists():
        build_index(spec.knowledge, index, tune_rows=tune_rows(spec))
    adapter = reader_folder(spec, reader) if use_reader else None
    system = System(f"unseen-{name}", spec, adapter, index)
    if max_new_tokens:
        system.max_new_tokens = max_new_tokens
    chosen = [a for a in arms if use_reader or not a.startswith("reader")]
    start = time.perf_counter()
    report = evaluate(system, spec, chosen, where / "eval", reader_decides=use_reader and spec.knowledge.reader == "auto",
                      ceilings=gold)  # the ceilings do not depend on retrieval settings: a trial may skip them
    keep = ("contains_answer", "exact_match", "answer_f1", "abstain", "hit_at_k")
    return {"corpus": name, "model": spec.reading_model.id, "items": report["items"], "unanswerable": report["unanswerable"],
            "main_arm": report["main_arm"], "reader_choice": report.get("reader_choice"),
            "tuning_skipped": bool(report.get("tuning_skipped")), "seconds": round(time.perf_counter() - start),
            "arms": {arm: {k: round(v, 3) for k, v in m.items() if k in keep} for arm, m in report["arms"].items()},
            "intervals": {arm: {k: v for k, v in m.items() if k in keep} for arm, m in report["intervals"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default=",".join(corpora()))
    parser.add_argument("--out", type=Path, default=Path("/tmp/unseen"))
    parser.add_argument("--reader", type=Path, default=None, help="a peft folder (default: the shipped reader)")
    parser.add_argument("--no-reader", action="store_true")
    parser.add_argument("--arms", default="base+retrieval,reader+retrieval")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--chunking", default=None, help="SIZE,OVERLAP: a trial default for the unseen corpora")
    parser.add_argument("--no-gold", action="store_true", help="skip the gold-context arms")
    parser.add_argument("--abstain", choices=("auto", "model", "calibrated"), default=None,
                        help="a trial of knowledge.abstain (default: what each spec says)")
    parser.add_argument("--base", default=None, help="another base model (e.g. gemma3-270m) instead of the spec's")
    parser.add_argument("--reader-model", default=None,
                        help="knowledge.reader_model (an alias, HF id or folder) writes the answers; with --no-reader "
                             "zero-shot, else --reader FOLDER must be an adapter of that model")
    args = parser.parse_args()
    chunking = tuple(int(x) for x in args.chunking.split(",")) if args.chunking else None
    results = []
    for name in args.corpora.split(","):
        result = run_corpus(name, args.out, args.reader, not args.no_reader, args.arms.split(","), args.max_new_tokens,
                            chunking, not args.no_gold, args.abstain, args.base, args.reader_model)
        results.append(result)
        print(json.dumps(result), flush=True)
    arms = sorted({a for r in results for a in r["arms"]})
    mean = {arm: round(sum(r["arms"][arm].get("contains_answer", 0) for r in results if arm in r["arms"])
                       / max(1, sum(arm in r["arms"] for r in results)), 3) for arm in arms}
    main_mean = round(sum(r["arms"][r["main_arm"]]["contains_answer"] for r in results) / len(results), 3)
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"mean_contains_answer": mean, "main_arm_mean": main_mean, "corpora": len(results)}), flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
