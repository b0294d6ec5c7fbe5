"""The `evaluation:` section: the evaluation set, the gate metrics and their `<op> <number>` gates."""

from __future__ import annotations

from pydantic import Field, field_validator

from components.spec.base import MAX_SEQ_LEN, SpecPath, Strict

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


class EvaluationSpec(Strict):
    data: SpecPath | None = Field(None, description="jsonl of {question|messages, answer, doc_ids?}")
    gates: dict[str, str] = {}
    promote_to: str = Field("production", pattern=r"^[a-z][a-z0-9_-]*$")
    max_new_tokens: int = Field(48, ge=1, le=MAX_SEQ_LEN)
    forgetting_text: SpecPath | None = Field(None, description="default: the general-text sample we ship")

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: dict[str, str]) -> dict[str, str]:
        for metric, expr in gates.items():
            if metric not in GATE_METRICS:
                raise ValueError(f"unknown gate metric '{metric}'; use one of {sorted(GATE_METRICS)}")
            parse_gate(expr)
        return gates
