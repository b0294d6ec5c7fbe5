"""Behavior data: read rows, validate them, render them through the chat template, tokenize.

Every format (chat, sharegpt, instruction, completion: `components.training.data_formats`) from every file type
(.jsonl, .json, .csv, .parquet, a datasets save_to_disk folder: `components.training.data_files`) becomes an
`Example` holding chat `messages` whose last message is the assistant answer. All checks here run on
the files and the tokenizer only, so a bad row is reported before any model is loaded. Errors name the
file, the line (jsonl, json, csv) or row (parquet, datasets), the field and the fix. Batching (packing,
length grouping) is `components.training.batching`.

Tokenization renders the prompt (every message but the answer) with the generation prompt, the
exact string `render_prompt` gives at inference, then appends the answer tokens and EOS. Labels
are -100 on the prompt; the answer and its EOS are labels, even when pad == EOS (a collator that
masks pad ids would otherwise hide EOS and the tuned model would never stop).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components.spec import BehaviorDataSpec
from components.spec.behavior import ShareGPTTagsSpec
from components.training.data_files import (
    DataError,
    DataSource,
    check_columns,
    data_source,
    file_error,
    held_out_source,
    read_rows,
)
from components.training.data_formats import RowError, row_messages

IGNORE_INDEX = -100
EVAL_SPLIT_SEED = 0
MAX_REPORTED = 8  # problems listed per DataError; the rest are counted


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
            f"the tokenizer of {tokenizer.name_or_path} has no chat template; set base_model.chat_template: chatml "
            "(or gemma, or a Jinja file) in the spec, or use an instruct/chat base model"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# --- reading -------------------------------------------------------------------------------


def read_examples(source: DataSource, fmt: str, columns: dict[str, str] | None = None,
                  tags: ShareGPTTagsSpec | None = None) -> list[Example]:
    """Every row of one source, or a DataError listing the first problems (all rows are checked)."""
    try:
        rows = list(read_rows(source))
    except UnicodeDecodeError as exc:
        raise file_error(source.path, f"not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    if columns:
        check_columns(source, rows, columns)
    examples, problems = [], []
    for where, row in rows:
        try:
            examples.append(Example(messages=row_messages(row, fmt, columns or {}, tags), source=str(where)))
        except RowError as exc:
            problems.append((where, str(exc)))
    if problems:
        more = f"\n... and {len(problems) - MAX_REPORTED} more bad rows" if len(problems) > MAX_REPORTED else ""
        raise DataError("\n".join(f"{w}: {m}" for w, m in problems[:MAX_REPORTED]) + more, tuple(problems))
    if not examples:
        raise file_error(source.path, f"the file is empty (no rows); add {fmt} examples, one per line/row")
    return examples


@dataclass(frozen=True)
class DataSplits:
    """The examples of both splits and where they came from (`adaptflow validate` prints this)."""

    train: list[Example]
    eval: list[Example]
    train_source: DataSource
    eval_source: DataSource | None  # None: held out of train by `eval_split` (or no eval at all)


def load_splits(data: BehaviorDataSpec) -> DataSplits:
    """Both splits. Eval rows: `data.eval`; else a DatasetDict's validation/test split next to its train split;
    else `eval_split` of train, held out with a fixed seed."""
    source = data_source(Path(data.train), "train")
    train = read_examples(source, data.format, data.columns, data.tags)
    held = data_source(Path(data.eval), "eval") if data.eval is not None else held_out_source(source)
    if held is not None:
        return DataSplits(train, read_examples(held, data.format, data.columns, data.tags), source, held)
    if data.eval_split == 0:
        return DataSplits(train, [], source, None)
    n_eval = max(1, round(len(train) * data.eval_split))
    if n_eval >= len(train):
        raise file_error(
            data.train, f"{len(train)} rows cannot give an eval split of {data.eval_split} and still train; "
            "add rows, give behavior.data.eval a file, or set eval_split: 0"
        )
    order = list(range(len(train)))
    random.Random(EVAL_SPLIT_SEED).shuffle(order)
    held_idx = set(order[:n_eval])
    return DataSplits([e for i, e in enumerate(train) if i not in held_idx],
                      [e for i, e in enumerate(train) if i in held_idx], source, None)


def load_examples(data: BehaviorDataSpec) -> tuple[list[Example], list[Example]]:
    """(train, eval), as `load_splits` finds them."""
    splits = load_splits(data)
    return splits.train, splits.eval


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
