"""Compare on a knowledge spec: the documents retrieved (`rag`), trained in (`finetune-on-docs`), or both.

The arms are the spec itself with `knowledge.inject` set (docs/knowledge-injection.md); each runs the
stages of `adaptflow run` and registers as `<name>--<arm>`. Besides the evaluation each arm carries
what the guide's "PEFT and RAG are complements" is about: forgetting, training time, and the measured
cost of adding one changed document (re-index one file against retraining). Pure: flows/compare_knowledge.py
runs the stages and the timings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.compare.variants import CompareError
from components.spec import TaskSpec

KNOWLEDGE_ARMS = (("rag", "rag"), ("finetune-on-docs", "finetune"), ("both", "both"))  # (arm id, knowledge.inject)
SCORE = "contains_answer"
UPDATE_NOTE = "Update: the harbour master's office now also opens on Sundays."  # appended to the changed document


def knowledge_comparison(spec: TaskSpec) -> bool:
    """A spec with documents and no behavior section compares how its knowledge is injected."""
    return spec.behavior is None and spec.knowledge is not None


def arm_specs(spec: TaskSpec) -> list[tuple[str, TaskSpec]]:
    """(arm id, the spec with that `knowledge.inject`, named `<name>--<arm>`), validated like a user's spec."""
    if spec.evaluation is None or spec.evaluation.data is None:
        raise CompareError(f"spec '{spec.name}': comparing rag with finetune-on-docs scores both on the evaluation "
                           "questions, but evaluation.data is missing; add `evaluation: {data: qa.jsonl}`")
    out = []
    for arm, inject in KNOWLEDGE_ARMS:
        knowledge = spec.knowledge.model_copy(update={"inject": inject})
        arm_spec = spec.model_copy(update={"name": f"{spec.name}--{arm}", "knowledge": knowledge})
        TaskSpec.model_validate(arm_spec.model_dump(mode="json"), context={"check_exists": False})  # a valid spec
        out.append((arm, arm_spec))
    return out


@dataclass(frozen=True)
class KnowledgeRow:
    """One arm's measured columns (None where the arm has no such part, e.g. no training for rag without reader)."""

    arm: str
    inject: str
    ref: str | None
    main_arm: str | None = None
    contains_answer: float | None = None
    contains_answer_ci: list[float] | None = None  # bootstrap 95 % interval of the main arm's contains_answer
    answer_f1: float | None = None
    forgetting: float | None = None
    trainable_params: int | None = None
    train_seconds: float | None = None  # the documents' adapter; rag: the reader's (shared by every spec on its base)
    index_seconds: float | None = None
    update_seconds: float | None = None  # adding one changed document, measured
    update_how: str = ""
    error: str | None = None


def knowledge_row(arm: str, inject: str, ref: str, report: dict, record: dict | None, index_info: dict | None,
                  update: dict[str, dict]) -> KnowledgeRow:
    """The row of one arm from its eval report, its training record, its index info and the measured updates
    ({"reindex": {...}, "retrain": {...}} with `seconds`)."""
    metrics = report["metrics"]
    parts = {"rag": ["reindex"], "finetune": ["retrain"], "both": ["reindex", "retrain"]}[inject]
    seconds = [update[p]["seconds"] for p in parts if p in update]
    return KnowledgeRow(
        arm, inject, ref, report.get("main_arm"), metrics.get(SCORE),
        (report.get("intervals") or {}).get(report.get("main_arm"), {}).get(SCORE),
        metrics.get("answer_f1"), metrics.get("forgetting"),
        record.get("trainable_params") if record else None, record.get("train_seconds") if record else None,
        index_info.get("build_seconds") if index_info else None,
        round(sum(seconds), 2) if len(seconds) == len(parts) else None, " + ".join(parts),
    )


def _cell(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def render_knowledge(name: str, rows: list[KnowledgeRow], update: dict[str, dict]) -> str:
    lines = [
        f"# {name}: knowledge by retrieval against fine-tuning", "",
        "| arm | inject | main arm | contains_answer | answer_f1 | forgetting | trainable params | training s | "
        "index s | update s (one changed document) | ref |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.arm} | {r.inject} | failed: {r.error} | | | | | | | | |")
            continue
        lines.append(
            f"| {r.arm} | {r.inject} | {r.main_arm} | {_cell(r.contains_answer)}"
            f"{f' [{r.contains_answer_ci[0]:.2f}, {r.contains_answer_ci[1]:.2f}]' if r.contains_answer_ci else ''} | "
            f"{_cell(r.answer_f1)} | "
            f"{_cell(r.forgetting)} | {_cell(r.trainable_params, '{:,}')} | {_cell(r.train_seconds, '{:.0f}')} | "
            f"{_cell(r.index_seconds, '{:.1f}')} | {_cell(r.update_seconds, '{:.1f}')} ({r.update_how}) | {r.ref} |")
    lines += ["", "## Adding one changed document (measured in this run)", ""]
    for how, info in update.items():
        lines.append(f"- {how}: {info['seconds']:.1f} s — {info['what']}")
    lines += ["", "contains_answer and answer_f1 are the main arm's (contains_answer with its bootstrap 95 % interval); forgetting is the relative perplexity change on "
              "general text with the arm's adapter (rag: its reader, when the evaluation kept one). training s is the "
              "arm's adapter training (rag: the reading adapter, trained once per base model and shared by every "
              "knowledge spec); both reuses finetune-on-docs' adapter (same stage key)."]
    return "\n".join(lines) + "\n"


def rows_json(rows: list[KnowledgeRow]) -> list[dict]:
    return [asdict(r) for r in rows]
