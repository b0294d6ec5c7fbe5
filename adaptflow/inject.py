"""Knowledge by fine-tuning (`knowledge.inject: finetune | both`): the documents as a training set.

`inject: rag` retrieves the documents at query time (an index). `finetune` trains them into an adapter
instead, through the ordinary training loop (components.training.recipe), on one of two data sets:

- continued pretraining on the chunks: the documents chunked exactly as the index chunks them
  (vectorstore.chunk_documents with the embedder's tokenizer and `knowledge.chunking`), one
  completion row per chunk (`prompt`: which document, `completion`: the chunk's text);
- question-answer pairs the user provides (`knowledge.finetune.data`), one chat row per pair, prompted
  exactly as the evaluation prompts its questions.

`both` trains the adapter and builds the index. The spec the training and evaluation stages see is
the user's spec with a `behavior:` section made from `knowledge.finetune` (`trainee`), so every stage,
key and loader works unchanged (the route is decided on the user's spec); the registry keeps the user's spec. This module composes both halves
(vectorstore chunks, components training data), so it sits above them (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from components.evaluation.arms import _item_from_row
from components.spec import BehaviorDataSpec, BehaviorSpec, TaskSpec
from components.store.stages import StageStore

CHUNK_PROMPT = "What do the documents say in '{title}' (part {part})?"
DATA_DIR = "knowledge-data"


def injects(spec: TaskSpec) -> bool:
    """True when the spec trains its documents into an adapter (inject finetune or both)."""
    return spec.knowledge is not None and spec.knowledge.inject != "rag"


def chunk_rows(spec: TaskSpec) -> list[dict]:
    """One completion row per chunk, chunked like the index (same tokenizer, size and overlap)."""
    from vectorstore import chunk_documents, load_embedder
    from vectorstore.documents import knowledge_documents

    knowledge = spec.knowledge
    embedder = load_embedder(knowledge.embedder)
    chunks = chunk_documents(knowledge_documents(knowledge), embedder.token_offsets, knowledge.chunking)
    if not chunks:
        raise ValueError(f"{knowledge.documents}: the documents contain no text to train on; add text to knowledge.documents")
    return [{"prompt": CHUNK_PROMPT.format(title=c.title or c.doc_id, part=c.position + 1), "completion": c.text}
            for c in chunks]


def pair_rows(path: Path) -> list[dict]:
    """The user's {"question", "answer"} pairs as chat rows, prompted as the evaluation prompts a question."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n} (knowledge.finetune.data)"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg}); write one {{\"question\", \"answer\"}} object per line") from None
        item = _item_from_row(row, where)
        rows.append({"messages": [*item.messages, {"role": "assistant", "content": item.answer}]})
    if not rows:
        raise ValueError(f"{path}: no rows (knowledge.finetune.data); add {{\"question\", \"answer\"}} lines")
    return rows


def training_rows(spec: TaskSpec) -> tuple[list[dict], str]:
    """(rows, format): the user's pairs when `knowledge.finetune.data` is set, else the chunks."""
    data = spec.knowledge.finetune.data
    return (pair_rows(data), "chat") if data is not None else (chunk_rows(spec), "completion")


def write_rows(rows: list[dict], home: Path | None = None) -> Path:
    """Write the rows once beside the stage store (knowledge-data/, $ADAPTFLOW_HOME's by default), named by
    their content hash: the train stage's key hashes this file, so equal rows reuse the trained adapter."""
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    home = home or StageStore().root.parent
    path = home / DATA_DIR / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def knowledge_behavior(spec: TaskSpec, train_file: Path, fmt: str) -> BehaviorSpec:
    """`knowledge.finetune` as a `behavior:` section: every row trains (the facts are all to be learned)."""
    ft = spec.knowledge.finetune
    return BehaviorSpec(data=BehaviorDataSpec(train=Path(train_file), format=fmt, eval_split=0.0),
                        adapter=ft.adapter, training=ft.training)


def trainee(spec: TaskSpec, home: Path | None = None) -> TaskSpec:
    """The spec the training and evaluation stages run: with `behavior:` made from the documents when the spec
    injects them by fine-tuning, else the spec itself."""
    if not injects(spec):
        return spec
    rows, fmt = training_rows(spec)
    # inject: rag in the copy, so that it is a valid spec of its own (Prefect re-validates flow parameters): its
    # behavior section is the documents, its knowledge section what the index is built from
    knowledge = spec.knowledge.model_copy(update={"inject": "rag"})
    behavior = knowledge_behavior(spec, write_rows(rows, home), fmt)
    return spec.model_copy(update={"behavior": behavior, "knowledge": knowledge})
