"""Behavior data: formats and file types, answer-only labels with EOS, bad-data messages, batching."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components.spec import BehaviorDataSpec, BehaviorSpec, TaskSpec
from components.training.batching import collate_packed, collate_padded, epoch_batches
from components.training.data import (
    IGNORE_INDEX,
    DataError,
    load_examples,
    prompt_messages,
    render_prompt,
    tokenize_examples,
)
from components.training.recipe import batch_loss

SYSTEM = {"role": "system", "content": "Answer with one word."}


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, rows) -> str:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    return str(path)


def write_parquet(path, rows) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}
ROWS = {
    "chat": [chat_row("Is it raining?", "yes"), chat_row("Is fire cold?", "no")],
    "instruction": [{"instruction": "Is it raining?", "input": "", "output": "yes"},
                    {"instruction": "Is fire cold?", "input": "think", "output": "no"}],
    "completion": [{"prompt": "Is it raining?", "completion": "yes"}, {"prompt": "Is fire cold?", "completion": "no"}],
}


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("fmt", ["chat", "instruction", "completion"])
def test_every_format_and_file_type_normalises_to_chat(tmp_path, fmt, suffix):
    path = WRITERS[suffix](tmp_path / f"train.{suffix}", ROWS[fmt])
    train, evals = load_examples(BehaviorDataSpec(train=path, eval=path, format=fmt))
    assert [e.answer for e in train] == ["yes", "no"] and len(evals) == 2
    assert train[0].messages[-1]["role"] == "assistant"
    assert prompt_messages(train[0])[-1] == {"role": "user", "content": "Is it raining?"}
    if fmt == "instruction":
        assert train[1].messages[0]["content"] == "Is fire cold?\n\nthink"


def test_eval_split_is_held_out_with_a_fixed_seed(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [chat_row(f"q{i}", "a") for i in range(20)])
    spec = BehaviorDataSpec(train=path, eval_split=0.2)
    train, evals = load_examples(spec)
    again = load_examples(spec)
    assert len(train) == 16 and len(evals) == 4
    assert [e.messages for e in evals] == [e.messages for e in again[1]]
    assert not {e.source for e in evals} & {e.source for e in train}


def test_labels_cover_only_the_answer_and_keep_eos_when_pad_is_eos(tmp_path, tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the built-in tokenizer: the risky case
    path = write_jsonl(tmp_path / "t.jsonl", [chat_row("Is it raining?", "yes indeed")])
    train, _ = load_examples(BehaviorDataSpec(train=path, eval_split=0))
    example = tokenize_examples(train, tokenizer, 512).examples[0]
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt_messages(train[0])), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("yes indeed", add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert list(example.labels) == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]


BAD_CASES = {
    "empty file": ([], "is empty"),
    "missing field": ([{"messages": [SYSTEM, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                       {"prompt": "q"}], "line 2: field 'messages' is missing"),
    "wrong role order": ([{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}],
                         "messages[0].role is 'assistant' where 'user' belongs"),
    "no answer": ([{"messages": [SYSTEM, {"role": "user", "content": "q"}]}], "has no answer"),
    "empty answer": ([chat_row("q", "  ")], "is empty, so the row has no answer"),
    "not json": (["{oops"], "line 1: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_fails_before_the_model_is_loaded(tmp_path, tokenizer, monkeypatch, case, tiny_llama_dir):
    rows, expected = BAD_CASES[case]
    path = tmp_path / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr("components.models.load.load_model", no_model)
    monkeypatch.setattr("components.models.load.load_tokenizer", lambda spec, resolved=None: tokenizer)
    task = TaskSpec(name="t", goal="behavior", base_model={"id": str(tiny_llama_dir)},
                    behavior=BehaviorSpec(data=BehaviorDataSpec(train=str(path), eval_split=0)))
    from components.training.recipe import train_task

    with pytest.raises(DataError) as err:
        train_task(task, tmp_path / "out")
    assert expected in str(err.value) and str(path) in str(err.value)


def test_instruction_missing_output_names_field_and_fix(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"instruction": "q", "input": ""}])
    with pytest.raises(DataError, match=r"t.csv line 2: field 'output' is missing .*set behavior.data.format"):
        load_examples(BehaviorDataSpec(train=path, format="instruction", eval_split=0))


def test_over_length_examples_are_counted_and_truncated_dropped_or_refused(tmp_path, tokenizer):
    rows = [chat_row("short", "yes"), chat_row("long " * 80, "no"), chat_row("long " * 90, "yes")]
    train, _ = load_examples(BehaviorDataSpec(train=write_jsonl(tmp_path / "t.jsonl", rows), eval_split=0))
    truncated = tokenize_examples(train, tokenizer, 48, "truncate")
    assert truncated.stats.over_length == 2 and truncated.stats.truncated == 2 and truncated.stats.max == 48
    assert truncated.examples[1].labels[-1] == tokenizer.eos_token_id  # the answer survives truncation
    dropped = tokenize_examples(train, tokenizer, 48, "drop")
    assert dropped.stats.count == 1 and dropped.stats.dropped == 2
    with pytest.raises(DataError, match=r"2 of 3 examples exceed training.max_seq_len=48 .*over_length"):
        tokenize_examples(train, tokenizer, 48, "error")


def test_packed_rows_never_attend_across_examples(tokenizer, tiny_llama, tmp_path):
    rows = [chat_row("word " * n, "yes" if n % 2 else "no") for n in (1, 7, 3, 12, 5, 2)]
    train, _ = load_examples(BehaviorDataSpec(train=write_jsonl(tmp_path / "t.jsonl", rows), eval_split=0))
    items = tokenize_examples(train, tokenizer, 128).examples
    packed, padded = collate_packed(items, tokenizer.pad_token_id, 128), collate_padded(items, tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] < len(items) and packed.n_targets == padded.n_targets
    with torch.no_grad():
        one_by_one = sum(batch_loss(tiny_llama, collate_padded([i], tokenizer.pad_token_id)) for i in items)
        assert torch.allclose(batch_loss(tiny_llama, packed), one_by_one, rtol=1e-5)
        assert torch.allclose(batch_loss(tiny_llama, padded), one_by_one, rtol=1e-5)


def test_epoch_order_is_seeded_and_grouping_sorts_lengths():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    assert epoch_batches(lengths, 2, 0, 0, False) == epoch_batches(lengths, 2, 0, 0, False)
    assert epoch_batches(lengths, 2, 0, 0, False) != epoch_batches(lengths, 2, 0, 1, False)
    for batch in epoch_batches(lengths, 2, 0, 0, True):
        assert abs(lengths[batch[0]] - lengths[batch[1]]) <= 2
