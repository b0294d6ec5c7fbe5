"""The prompt template shared by training data, evaluation and queries.

Retrieved chunks go into the last user message as numbered context, so the model can cite
them and the same text reaches the model whether it is asked from the CLI, the server or the
evaluation. The template has a version that the registry records.
"""

from __future__ import annotations

TEMPLATE_VERSION = "context-v2"
# What a reader says when the context lacks the answer. The `abstain` metric (components.evaluation.metrics)
# looks for exactly this phrase, and an evaluation row whose answer is this phrase is unanswerable.
ABSTAIN_PHRASE = "not in the documents"
CONTEXT_INSTRUCTION = (
    "Answer the question using the context. Reply with a short answer. "
    f"If the context does not contain the answer, reply: {ABSTAIN_PHRASE}."
)


def format_context(chunks: list[tuple[str, str]]) -> str:
    """[(title, text), ...] -> numbered context block."""
    return "\n".join(f"[{i}] {title}: {' '.join(text.split())}" for i, (title, text) in enumerate(chunks, 1))


def with_context(messages: list[dict], chunks: list[tuple[str, str]]) -> list[dict]:
    """Put retrieved chunks into the last user message; other messages are kept as they are."""
    if not chunks:
        return list(messages)
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    question = out[last]["content"]
    out[last]["content"] = f"{CONTEXT_INSTRUCTION}\n\nContext:\n{format_context(chunks)}\n\nQuestion: {question}"
    return out


def split_context(user_text: str) -> tuple[list[tuple[str, str]], str] | None:
    """The inverse of `with_context` on its last user message: ([(title, text), ...], question), or None when the
    text is not in the template's shape. A title holding ": " keeps only its first part (the rest joins the text)."""
    head = f"{CONTEXT_INSTRUCTION}\n\nContext:\n"
    if not user_text.startswith(head) or "\n\nQuestion: " not in user_text:
        return None
    block, question = user_text[len(head):].rsplit("\n\nQuestion: ", 1)
    chunks = []
    for line in block.split("\n"):
        number, _, rest = line.partition("] ")
        if not number.startswith("[") or not rest:
            return None
        title, _, text = rest.partition(": ")
        chunks.append((title, text))
    return chunks, question


def question_messages(question: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}]


def last_user_text(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")
