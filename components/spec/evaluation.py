"""The `evaluation:` section: the evaluation set, the gate metrics and their `<op> <number>` gates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from components.spec.base import MAX_SEQ_LEN, SpecPath, Strict, _resolve_path

# --- evaluation ------------------------------------------------------------------------------

GATE_METRICS = {
    "answer_f1", "exact_match", "contains_answer", "accuracy", "hit_at_k", "mrr", "forgetting",
    "abstain", "retrieval_loss", "reading_loss",
}
_GATE_OPS = (">=", "<=", ">", "<", "==")


def parse_gate(expr: str) -> tuple[str, float]:
    """'>= 0.5' -> ('>=', 0.5). Raises ValueError with the accepted forms."""
    text = expr.strip()
    for op in _GATE_OPS:
        if text.startswith(op):
            try:
                return op, float(text[len(op):])
            except ValueError:
                break
    raise ValueError(f"gate '{expr}' is not '<op> <number>'; write e.g. \">= 0.5\" (ops: {', '.join(_GATE_OPS)})")


HARNESS_PACKAGE = "lm_eval"  # lm-evaluation-harness, the optional `harness` extra (components.evaluation.harness)
HARNESS_INSTALL = "pip install 'adaptflow[harness]'"  # lm-eval==0.4.13


def harness_installed() -> bool:
    """Whether lm-evaluation-harness can be imported (found without importing it: validate stays fast)."""
    try:
        return importlib.util.find_spec(HARNESS_PACKAGE) is not None
    except ValueError:  # a module object without a spec stands in for it: not the installed package
        return False


def is_task_path(entry: str) -> bool:
    """A harness entry names a local task YAML or a folder of them (a path), not a registered task name."""
    return entry.endswith((".yaml", ".yml")) or "/" in entry or "\\" in entry or entry in (".", "..")


class ForgettingSpec(Strict):
    """`evaluation.forgetting`: forgetting measured on lm-evaluation-harness tasks, base against adapted."""

    harness: list[str] = Field(
        min_length=1, description="lm-eval task names (arc_easy, hellaswag: need a network for their data) or local "
                                  "task YAML files / folders of them (offline)")
    limit: int | None = Field(100, ge=1, description="documents per task (lm-eval's --limit); null: every document")
    apply_chat_template: bool = Field(False, description="render each request through the base's chat template "
                                                         "(lm-eval's --apply_chat_template)")

    @field_validator("harness")
    @classmethod
    def _harness_tasks(cls, entries: list[str], info: ValidationInfo) -> list[str]:
        ctx = info.context or {}
        if ctx.get("check_exists", True) and not harness_installed():
            raise ValueError(f"lm-eval (lm-evaluation-harness) is not installed, and these tasks need it; "
                             f"run `{HARNESS_INSTALL}` or remove evaluation.forgetting.harness")
        out = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                raise ValueError("an empty task name; write an lm-eval task name (arc_easy) or a task YAML path")
            out.append(str(_resolve_path(Path(entry), info)) if is_task_path(entry) else entry)
        if len(set(out)) != len(out):
            raise ValueError(f"a task is listed twice in {entries}; list each task once")
        return out


class EvaluationSpec(Strict):
    data: SpecPath | None = Field(None, description="jsonl of {question|messages, answer, doc_ids?}")
    gates: dict[str, str] = {}
    promote_to: str = Field("production", pattern=r"^[a-z][a-z0-9_-]*$")
    max_new_tokens: int = Field(48, ge=1, le=MAX_SEQ_LEN)
    forgetting_text: SpecPath | None = Field(None, description="default: the general-text sample we ship")
    forgetting: ForgettingSpec | None = Field(None, description="forgetting on lm-evaluation-harness tasks too: "
                                                                "{harness: [TASK, ...], limit: N}")

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: dict[str, str]) -> dict[str, str]:
        for metric, expr in gates.items():
            if metric not in GATE_METRICS:
                raise ValueError(f"unknown gate metric '{metric}'; use one of {sorted(GATE_METRICS)}")
            parse_gate(expr)
        return gates
