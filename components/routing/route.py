"""Routing: decide whether a task needs an adapter (behavior), an index (knowledge), or both."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from components.spec import TaskSpec


@dataclass(frozen=True)
class Route:
    behavior: bool
    knowledge: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return {(True, True): "both", (True, False): "behavior", (False, True): "knowledge",
                (False, False): "neither"}[(self.behavior, self.knowledge)]

    def to_dict(self) -> dict:
        return asdict(self) | {"label": self.label}


def route(spec: TaskSpec) -> Route:
    """Obey an explicit goal; for `auto`, decide from what the spec declares and say why."""
    if spec.knowledge is not None and spec.knowledge.inject != "rag":
        inject = spec.knowledge.inject
        reasons = [f"knowledge.inject is '{inject}': the documents are trained into an adapter"
                   + (" and retrieved from an index" if inject == "both" else " (no index)")]
        return Route(True, inject == "both", reasons)
    if spec.goal != "auto":
        reasons = [f"goal is '{spec.goal}' in the spec"]
        return Route(spec.goal in {"behavior", "both"}, spec.goal in {"knowledge", "both"}, reasons)
    reasons = []
    if spec.behavior is not None:
        reasons.append(
            f"behavior examples declared ({spec.behavior.data.train.name}): the task asks for a way of answering, "
            f"which a {spec.behavior.adapter.method} adapter learns"
        )
    if spec.knowledge is not None:
        reasons.append(
            f"documents declared ({spec.knowledge.documents.name}): facts the base model cannot know, "
            "which retrieval supplies at query time"
        )
    return Route(spec.behavior is not None, spec.knowledge is not None, reasons)
