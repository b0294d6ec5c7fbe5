"""What a served system answers with: `Answer`, its numbered `Citation`s and token `Usage`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Answer", "Citation", "Usage"]


@dataclass
class Citation:
    n: int
    doc_id: str
    title: str
    snippet: str
    score: float
    chunk_id: int
    locator: str = ""  # "page 2", "slide 3", 'section "Maintenance"' for converted documents; "" otherwise


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass
class Answer:
    """What `adaptflow query --json`, `System.query` and the server's response carry."""

    answer: str
    citations: list[Citation]
    system: str
    latency_ms: float
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    usage: Usage | None = None
    finish_reason: str = "stop"  # "length" when max_new_tokens cut the answer

    def to_dict(self) -> dict:
        return asdict(self)
