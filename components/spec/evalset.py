"""The evaluation file (`evaluation.data`): its one parser, and the id rules both halves share.

A floor module (docs/architecture.md): stdlib only, so `components`, `vectorstore` and `adaptflow`
all read the file and match gold ids the same way. Rows are JSON objects, one a line:
`{"question" | "messages", "answer", "doc_ids"?: [...]}`.

Gold ids: a gold id may be written as the document id, or for a file as its path relative to
documents/ without the extension, or as its stem when no other file shares it; `resolve_gold_ids` is
the rule `adaptflow validate` applies, so an id that names no document is an error, never a silent 0.

Retrieval metrics (hit@k, recall@k, MRR, nDCG; binary relevance) are over documents: within the top k
chunks, a document counts at the rank of its first chunk, and later chunks of the same document count as
non-relevant (so nDCG stays <= 1 and a document is never credited twice). Queries without gold ids are
skipped and counted as `skipped`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = (".md", ".markdown", ".txt",  # and the converted ones (vectorstore/convert.py)
                 ".pdf", ".html", ".htm", ".docx", ".pptx", ".xlsx", ".csv", ".epub")


class EvalDataError(ValueError):
    pass


def eval_lines(text: str) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed value, None) for each non-empty line, or (line number, None, problem) for a line
    that is not JSON. The one place the evaluation file is split and decoded."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield lineno, None, f"not valid JSON ({exc.msg}); one object per line"


def read_eval_file(path: str | Path) -> list[tuple[int, object]]:
    """(line number, row) for every row; the first line that is not JSON raises EvalDataError naming it."""
    rows = []
    for lineno, row, problem in eval_lines(Path(path).read_text(encoding="utf-8")):
        if problem is not None:
            raise EvalDataError(f"{path} line {lineno}: {problem}")
        rows.append((lineno, row))
    return rows


def question_of(row: dict[str, Any]) -> str | None:
    """The query text of an evaluation row: `question`, or the last user message of `messages`."""
    if isinstance(row.get("question"), str):
        return row["question"]
    for message in reversed(row.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return None


def read_eval_rows(path: Path) -> list[tuple[str, list[str]]]:
    """(question, gold doc ids) for every row of an evaluation jsonl that has both."""
    out = []
    for _, row in read_eval_file(path):
        question, gold = question_of(row), row.get("doc_ids")
        if question and gold:
            out.append((question, [str(g) for g in gold]))
    return out


def question_key(question: str) -> str:
    """A question's identity, whitespace-insensitive: how the index's tuning records its held-out half."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()[:16]


# Tuning on fewer held-out questions than this is noise: on 20 questions one answer moves a score by 0.05 and a
# 95 % interval is about +-0.2, wider than any difference between two chunk sizes. Below it the measured defaults
# are kept and every question goes to the evaluation (docs/reading.md).
TUNE_MIN = 20
HELD_OUT_SHARE = 3  # one question in three is held out for tuning; the evaluation keeps at least two thirds


def is_held_out(question: str) -> bool:
    """True for the third of the questions that tuning (vectorstore.tune), the reader's choice and abstention
    calibration (components.evaluation.abstention) measure on, and the evaluation leaves out."""
    return int(question_key(question), 16) % HELD_OUT_SHARE == 0


def id_spellings(doc_id: str) -> list[str]:
    """How a gold `doc_ids` entry may name this document: its id; for a file, the path relative to
    documents/ without its extension, and the file's stem (accepted only where unique: `resolve_gold_ids`)."""
    out = [doc_id]
    if doc_id.lower().endswith(TEXT_SUFFIXES):
        bare = doc_id.rsplit(".", 1)[0]
        out += [bare, bare.rsplit("/", 1)[-1]]
    return list(dict.fromkeys(out))


def resolve_gold_ids(gold: list[str], doc_ids: list[str]) -> tuple[list[str], list[str]]:
    """(gold ids mapped to document ids, the gold ids that name no document or more than one).

    An exact id always wins; then the path without extension; then a stem shared by no other file."""
    table: dict[str, set[tuple[int, str]]] = {}
    for doc_id in doc_ids:
        for level, spelling in enumerate(id_spellings(doc_id)):
            table.setdefault(spelling, set()).add((level, doc_id))
    resolved, unknown = [], []
    for g in gold:
        found = table.get(str(g), set())
        best = min((level for level, _ in found), default=None)
        names = sorted(d for level, d in found if level == best)
        (resolved.append(names[0]) if len(names) == 1 else unknown.append(str(g)))
    return resolved, unknown


def _names(gold: str, doc: str) -> bool:
    return gold == doc or gold in id_spellings(doc)[1:]


def _first_ranks(retrieved: list[str], gold: list[str], k: int) -> list[int]:
    """1-based ranks, within the top k, where a gold document first appears (each gold entry credited once;
    a gold entry may use any spelling of `id_spellings`)."""
    seen: set[str] = set()
    open_gold = list(gold)
    ranks = []
    for rank, doc in enumerate(retrieved[:k], start=1):
        match = next((g for g in open_gold if _names(g, doc)), None) if doc not in seen else None
        if match is not None:
            ranks.append(rank)
            open_gold.remove(match)
        seen.add(doc)
    return ranks


def retrieval_metrics(retrieved_doc_ids: list[list[str]], gold_doc_ids: list[list[str]], k: int) -> dict[str, Any]:
    """Mean hit@k, recall@k, MRR@k and nDCG@k over queries that have gold ids."""
    if len(retrieved_doc_ids) != len(gold_doc_ids):
        raise ValueError(f"{len(retrieved_doc_ids)} retrieved lists but {len(gold_doc_ids)} gold lists; pass one per query")
    hit = recall = rr = ndcg = 0.0
    n = 0
    for retrieved, gold_list in zip(retrieved_doc_ids, gold_doc_ids, strict=True):
        gold = list(dict.fromkeys(gold_list))
        if not gold:
            continue
        n += 1
        ranks = _first_ranks(retrieved, gold, k)
        hit += 1.0 if ranks else 0.0
        recall += len(ranks) / len(gold)
        rr += 1.0 / ranks[0] if ranks else 0.0
        ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(gold), k) + 1))
        ndcg += sum(1.0 / math.log2(r + 1) for r in ranks) / ideal
    mean = (lambda x: round(x / n, 4)) if n else (lambda x: 0.0)
    return {"k": k, "queries": n, "skipped": len(gold_doc_ids) - n,
            "hit_at_k": mean(hit), "recall_at_k": mean(recall), "mrr": mean(rr), "ndcg": mean(ndcg)}
