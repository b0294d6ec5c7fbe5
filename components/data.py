"""Behavior data: read rows, validate them, render them through the chat template, tokenize.

Every format (chat, instruction, completion) becomes an `Example` holding chat `messages` whose
last message is the assistant answer. All checks here run on the files and the tokenizer only,
so a bad row is reported before any model is loaded. Errors name the file, the line (jsonl, csv)
or row (parquet), the field and the fix. Batching (packing, length grouping) is `components.batching`.

Tokenization renders the prompt (every message but the answer) with the generation prompt, the
exact string `render_prompt` gives at inference, then appends the answer tokens and EOS. Labels
are -100 on the prompt; the answer and its EOS are labels, even when pad == EOS (a collator that
masks pad ids would otherwise hide EOS and the tuned model would never stop).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.spec import BehaviorDataSpec

IGNORE_INDEX = -100
EVAL_SPLIT_SEED = 0
MAX_REPORTED = 8  # problems listed per DataError; the rest are counted
FORMAT_FIELDS = {
    "chat": ("messages",),
    "instruction": ("instruction", "output"),
    "completion": ("prompt", "completion"),
}


class DataError(ValueError):
    """Bad behavior data; the message names the file, the line/row, the field and the fix."""


@dataclass(frozen=True)
class Example:
    messages: tuple[dict[str, str], ...]  # chat messages; the last one is the assistant answer
    source: str = ""  # "file line N" or "file row N", for error messages

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


def prompt_messages(example: Example) -> list[dict[str, str]]:
    """The messages without the answer: what a generation call is given."""
    return [dict(m) for m in example.messages[:-1]]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template with the generation prompt: the exact prefix training used."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template; "
            "use an instruct/chat base model or add a chat_template to its tokenizer_config.json"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --- reading -------------------------------------------------------------------------------


def _read_rows(path: Path) -> Iterator[tuple[str, object]]:
    """Yield (where, row) with `where` = 'file line N' / 'file row N'."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path} line {n}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {n}: not valid JSON ({exc.msg}); write one JSON object per line") from None
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield f"{path} line {reader.line_num}", {k: v for k, v in row.items() if k is not None}
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path} row {n}", row
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .csv or .parquet")


def _text(row: dict, key: str, where: str, fmt: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # csv/parquet nulls
        if required:
            needed = ", ".join(FORMAT_FIELDS[fmt])
            raise DataError(
                f"{where}: field '{key}' is missing ({fmt} rows need {needed}); "
                f"add it, or set behavior.data.format to the format the file uses"
            )
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}; quote the value")
    return value


def _chat_messages(row: dict, where: str) -> tuple[dict[str, str], ...]:
    raw = row.get("messages")
    if raw is None:
        raise DataError(f"{where}: field 'messages' is missing (chat rows need messages); add it, or set behavior.data.format")
    if isinstance(raw, str):  # csv cells hold the list as JSON text
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'messages' is not a JSON list; write it as [{{\"role\": ..., \"content\": ...}}]") from None
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}; fix the row")
    messages = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs string fields 'role' and 'content'; fix the message")
        messages.append({"role": msg["role"], "content": msg["content"]})
    _check_roles(messages, where)
    return tuple(messages)


def _check_roles(messages: list[dict[str, str]], where: str) -> None:
    """An optional system message, then user/assistant turns alternating, ending with assistant."""
    start = 1 if messages[0]["role"] == "system" else 0
    for i, msg in enumerate(messages):
        expected = "system" if i < start else ("user" if (i - start) % 2 == 0 else "assistant")
        if msg["role"] != expected:
            raise DataError(
                f"{where}: messages[{i}].role is '{msg['role']}' where '{expected}' belongs; roles must be an optional "
                "system message, then user and assistant alternating, ending with the assistant answer; reorder the row"
            )
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message is '{messages[-1]['role']}', so the row has no answer; "
            "end messages with an {\"role\": \"assistant\", ...} message or remove the row"
        )


def row_to_example(row: object, fmt: str, where: str) -> Example:
    """One row of any format -> an Example (chat messages ending with the answer)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}; write one object per line")
    if fmt == "chat":
        messages = _chat_messages(row, where)
    elif fmt == "instruction":
        instruction = _text(row, "instruction", where, fmt)
        extra = _text(row, "input", where, fmt, required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = ({"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output", where, fmt)})
    else:
        messages = (
            {"role": "user", "content": _text(row, "prompt", where, fmt)},
            {"role": "assistant", "content": _text(row, "completion", where, fmt)},
        )
    if not messages[-1]["content"].strip():
        field_name = {"chat": "the last assistant message", "instruction": "'output'", "completion": "'completion'"}[fmt]
        raise DataError(f"{where}: {field_name} is empty, so the row has no answer; write the answer or remove the row")
    return Example(messages=messages, source=where)


def read_examples(path: Path, fmt: str) -> list[Example]:
    """Every row of one file, or a DataError listing the first problems (all rows are checked)."""
    if not path.exists():
        raise DataError(f"{path}: file not found; fix behavior.data in the spec")
    examples, problems = [], []
    for where, row in _read_rows(path):
        try:
            examples.append(row_to_example(row, fmt, where))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        more = f"\n... and {len(problems) - MAX_REPORTED} more bad rows" if len(problems) > MAX_REPORTED else ""
        raise DataError("\n".join(problems[:MAX_REPORTED]) + more)
    if not examples:
        raise DataError(f"{path}: the file is empty (no rows); add {fmt} examples, one per line/row")
    return examples


def load_examples(data: BehaviorDataSpec) -> tuple[list[Example], list[Example]]:
    """(train, eval). Without `data.eval`, `eval_split` of train is held out with a fixed seed."""
    train = read_examples(Path(data.train), data.format)
    if data.eval is not None:
        return train, read_examples(Path(data.eval), data.format)
    if data.eval_split == 0:
        return train, []
    n_eval = max(1, round(len(train) * data.eval_split))
    if n_eval >= len(train):
        raise DataError(
            f"{data.train}: {len(train)} rows cannot give an eval split of {data.eval_split} and still train; "
            "add rows, give behavior.data.eval a file, or set eval_split: 0"
        )
    order = list(range(len(train)))
    random.Random(EVAL_SPLIT_SEED).shuffle(order)
    held = set(order[:n_eval])
    return [e for i, e in enumerate(train) if i not in held], [e for i, e in enumerate(train) if i in held]


# --- tokenizing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX on prompt tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenStats:
    count: int
    tokens: int
    answer_tokens: int
    p50: int
    p90: int
    p99: int
    max: int
    max_seq_len: int
    over_length: int  # examples longer than max_seq_len before truncation/dropping
    truncated: int
    dropped: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenizedSet:
    examples: list[TokenizedExample]
    stats: TokenStats
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


def tokenize_example(example: Example, tokenizer) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + EOS), untruncated."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer of {tokenizer.name_or_path} has no eos_token; set one in tokenizer_config.json")
    prompt = tokenizer(render_prompt(tokenizer, prompt_messages(example)), add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt, answer


def _fit(prompt: list[int], answer: list[int], max_seq_len: int) -> tuple[list[int], list[int]]:
    """Truncate to max_seq_len: keep the answer (at most half the window), cut the prompt's start."""
    keep_answer = min(len(answer), max(max_seq_len // 2, max_seq_len - len(prompt)))
    if keep_answer < len(answer):
        answer = answer[:keep_answer]  # a cut answer loses its EOS: it must not teach stopping mid-text
    return prompt[len(prompt) - (max_seq_len - keep_answer):], answer


def tokenize_examples(examples: list[Example], tokenizer, max_seq_len: int, over_length: str = "truncate") -> TokenizedSet:
    """Tokenize with answer-only labels; handle examples over `max_seq_len` as `over_length` says."""
    out, sources, too_long, dropped = [], [], [], 0
    for example in examples:
        prompt, answer = tokenize_example(example, tokenizer)
        if len(prompt) + len(answer) > max_seq_len:
            too_long.append((len(prompt) + len(answer), example.source))
            if over_length == "drop":
                dropped += 1
                continue
            prompt, answer = _fit(prompt, answer, max_seq_len)
        out.append(TokenizedExample(tuple(prompt + answer), tuple([IGNORE_INDEX] * len(prompt) + answer)))
        sources.append(example.source)
    if too_long and over_length == "error":
        longest = max(too_long)
        raise DataError(
            f"{len(too_long)} of {len(examples)} examples exceed training.max_seq_len={max_seq_len} tokens "
            f"(longest {longest[0]}, at {longest[1]}); raise training.max_seq_len or set "
            "behavior.data.over_length to 'truncate' or 'drop'"
        )
    if not out:
        raise DataError(
            f"all {len(examples)} examples exceed training.max_seq_len={max_seq_len} and were dropped; "
            "raise training.max_seq_len or set behavior.data.over_length: truncate"
        )
    lengths = sorted(len(e) for e in out)
    stats = TokenStats(
        count=len(out), tokens=sum(lengths), answer_tokens=sum(e.n_answer_tokens for e in out),
        p50=_percentile(lengths, 0.5), p90=_percentile(lengths, 0.9), p99=_percentile(lengths, 0.99),
        max=lengths[-1], max_seq_len=max_seq_len, over_length=len(too_long),
        truncated=len(too_long) - dropped if over_length == "truncate" else 0, dropped=dropped,
    )
    return TokenizedSet(out, stats, sources)
