"""Bring your own data: ShareGPT rows, JSON arrays, datasets save_to_disk folders, column mappings.

The oracle is the triage example's own JSONL (specs/data/triage): written into each new format, the
data must load as the very same chat messages, so training on it is training on the JSONL. The
datasets fixture (tests/components/fixtures/triage-datasetdict) was written by the real library:
`DatasetDict({"train": 16 triage train rows, "test": 8 eval rows}).save_to_disk(..., num_shards={"train": 2,
"test": 1})` with datasets 5.2.0, columns `ticket_id` and `dialog` (the rows' messages).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError

from adaptflow.preflight import inputs_report
from components.spec import BehaviorDataSpec, BehaviorSpec
from components.spec.load import load_spec
from components.store.stages import digest
from components.training.data import DataError, load_examples, load_splits
from components.training.recipe import train
from tests.conftest import make_tiny_llama

ROOT = Path(__file__).resolve().parents[3]
TRIAGE = ROOT / "specs" / "data" / "triage"
FIXTURE = Path(__file__).parents[1] / "fixtures" / "triage-datasetdict"
FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def triage_rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (TRIAGE / f"{split}.jsonl").read_text().splitlines()]


def messages(examples) -> list[list[dict]]:
    return [list(e.messages) for e in examples]


@pytest.fixture(scope="module")
def oracle() -> tuple[list, list]:
    """The triage train and eval messages as the shipped JSONL loads them."""
    train_rows, eval_rows = load_examples(BehaviorDataSpec(train=TRIAGE / "train.jsonl", eval=TRIAGE / "eval.jsonl"))
    return messages(train_rows), messages(eval_rows)


# --- writers: the triage rows in other people's formats ------------------------------------------


def sharegpt(row: dict, style: str = "human-gpt") -> dict:
    turns = row["messages"]
    if style == "system-field":  # LLaMA-Factory: the system prompt as its own column
        return {"system": turns[0]["content"],
                "conversations": [{"from": FROM[m["role"]], "value": m["content"]} for m in turns[1:]]}
    spell = FROM if style == "human-gpt" else {r: r for r in FROM}  # user-assistant
    return {"conversations": [{"from": spell[m["role"]], "value": m["content"]} for m in turns]}


def instruction(row: dict) -> dict:
    return {"question": row["messages"][1]["content"], "label": row["messages"][2]["content"], "ticket": 7}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, indent=2))  # pretty-printed: each row spans several lines
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def save_to_disk(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """`DatasetDict(splits).save_to_disk(folder)` with datasets when it is installed; else the same layout
    (dataset_dict.json, per split state.json + an Arrow stream shard) with pyarrow, as the fixture has it."""
    try:
        import datasets
    except ImportError:
        folder.mkdir()
        (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
        for name, rows in splits.items():
            (folder / name).mkdir()
            table = pa.Table.from_pylist(rows)
            with pa.OSFile(str(folder / name / "data-00000-of-00001.arrow"), "wb") as sink:
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
            (folder / name / "state.json").write_text(json.dumps({"_data_files": [
                {"filename": "data-00000-of-00001.arrow"}], "_split": None}))
        return folder
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(folder)
    return folder


# --- the same examples from every new format -------------------------------------------------------


@pytest.mark.parametrize("style", ["human-gpt", "user-assistant", "system-field"])
def test_sharegpt_jsonl_loads_as_the_triage_jsonl(tmp_path, oracle, style):
    train_file = write_jsonl(tmp_path / "train.jsonl", [sharegpt(r, style) for r in triage_rows("train")])
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [sharegpt(r, style) for r in triage_rows("eval")])
    train_rows, eval_rows = load_examples(BehaviorDataSpec(train=train_file, eval=eval_file, format="sharegpt"))
    assert (messages(train_rows), messages(eval_rows)) == oracle


@pytest.mark.parametrize("fmt", ["chat", "sharegpt"])
def test_json_array_loads_as_the_triage_jsonl_with_each_rows_line(tmp_path, oracle, fmt):
    convert = (lambda r: r) if fmt == "chat" else sharegpt
    train_file = write_json(tmp_path / "train.json", [convert(r) for r in triage_rows("train")])
    eval_file = write_json(tmp_path / "eval.json", [convert(r) for r in triage_rows("eval")])
    train_rows, eval_rows = load_examples(BehaviorDataSpec(train=train_file, eval=eval_file, format=fmt))
    assert (messages(train_rows), messages(eval_rows)) == oracle
    lines = train_file.read_text().splitlines()
    assert all(lines[int(e.source.rsplit(" ", 1)[1]) - 1] == "  {" for e in train_rows)  # the line its object opens
    first_row_lines = len(json.dumps(convert(triage_rows("train")[0]), indent=2).splitlines())
    assert train_rows[1].source == f"{train_file} line {2 + first_row_lines}"


def test_a_json_file_of_json_lines_reads_as_jsonl(tmp_path, oracle):
    path = write_jsonl(tmp_path / "train.json", triage_rows("train"))
    assert messages(load_examples(BehaviorDataSpec(train=path, eval_split=0))[0]) == oracle[0]


@pytest.mark.parametrize("fmt", ["chat", "sharegpt"])
def test_datasetdict_folder_gives_train_and_its_test_split_as_eval(tmp_path, oracle, fmt):
    convert = (lambda r: r) if fmt == "chat" else sharegpt
    folder = save_to_disk(tmp_path / "triage", {"train": [convert(r) for r in triage_rows("train")],
                                                "test": [convert(r) for r in triage_rows("eval")]})
    splits = load_splits(BehaviorDataSpec(train=folder, format=fmt))  # no eval: the dict's test split, not eval_split
    assert (messages(splits.train), messages(splits.eval)) == oracle
    assert (splits.train_source.split, splits.eval_source.split) == ("train", "test")
    assert splits.train[4].source == f"{folder / 'train'} row 5"
    one = load_examples(BehaviorDataSpec(train=folder / "test", eval=folder, format=fmt, eval_split=0))
    assert messages(one[0]) == messages(one[1]) == oracle[1]  # a split folder alone; a dict as eval: its test split


def test_a_folder_saved_by_the_datasets_library_loads_in_its_saved_order(oracle):
    spec = BehaviorDataSpec(train=FIXTURE, format="chat", columns={"messages": "dialog"})
    splits = load_splits(spec)
    assert messages(splits.train) == oracle[0][:16] and messages(splits.eval) == oracle[1][:8]  # 2 shards, in order
    assert [e.source.rsplit(" ", 1)[1] for e in splits.train] == [str(n) for n in range(1, 17)]


def test_mapped_columns_load_as_the_triage_jsonl(tmp_path, oracle):
    """chat and sharegpt rows under the user's own column names, in a CSV (lists as JSON text)."""
    rows = [{"ticket": i, "dialog": r["messages"]} for i, r in enumerate(triage_rows("train"))]
    chat = write_csv(tmp_path / "chat.csv", rows)
    assert messages(load_examples(BehaviorDataSpec(train=chat, eval_split=0, columns={"messages": "dialog"}))[0]) \
        == oracle[0]
    rows = [{"prompt_text": s["system"], "turns": s["conversations"]}
            for s in (sharegpt(r, "system-field") for r in triage_rows("train"))]
    spec = BehaviorDataSpec(train=write_csv(tmp_path / "sharegpt.csv", rows), format="sharegpt", eval_split=0,
                            columns={"conversations": "turns", "system": "prompt_text"})
    assert messages(load_examples(spec)[0]) == oracle[0]


@pytest.mark.parametrize("writer", [write_csv, write_parquet, write_json, write_jsonl])
def test_mapped_instruction_columns_read_alike_from_every_file_type(tmp_path, writer):
    rows = [instruction(r) for r in triage_rows("eval")]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"instruction": r["question"], "output": r["label"]} for r in rows])
    expected = messages(load_examples(BehaviorDataSpec(train=plain, format="instruction", eval_split=0))[0])
    suffix = {write_csv: "csv", write_parquet: "parquet", write_json: "json", write_jsonl: "jsonl"}[writer]
    path = writer(tmp_path / f"mapped.{suffix}", rows)
    spec = BehaviorDataSpec(train=path, format="instruction", eval_split=0,
                            columns={"instruction": "question", "output": "label"})
    assert messages(load_examples(spec)[0]) == expected
    folder = save_to_disk(tmp_path / "ds", {"train": rows})
    spec = BehaviorDataSpec(train=folder, format="instruction", eval_split=0,
                            columns={"instruction": "question", "output": "label"})
    assert messages(load_examples(spec)[0]) == expected


def test_swapped_columns_are_swapped_not_overwritten(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "the answer", "completion": "the question"}])
    spec = BehaviorDataSpec(train=path, format="completion", eval_split=0,
                            columns={"prompt": "completion", "completion": "prompt"})
    assert messages(load_examples(spec)[0]) == [[{"role": "user", "content": "the question"},
                                                 {"role": "assistant", "content": "the answer"}]]


# --- refused rows name the file, the line or row, the field and the fix ----------------------------

TOOL_ROWS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"tools": [{"type": "function", "function": {"name": "lookup"}}],
     "messages": [{"role": "user", "content": "Where is order 7?"}, {"role": "assistant", "content": "Shipped"}]},
    {"messages": [{"role": "user", "content": "Where is order 7?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function"}]}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "calling", "tool_calls": [{"id": "c"}]},
                  {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "Shipped"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "function", "content": "{}"}]},
]


def test_openai_tool_calling_rows_are_refused_with_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", TOOL_ROWS)
    with pytest.raises(DataError) as err:
        load_examples(BehaviorDataSpec(train=path, eval_split=0))
    lines = str(err.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path} line {n}" for n in (2, 3, 4, 5)]
    assert lines[0].split(": ", 1)[1].startswith("field 'tools' holds tool definitions (a tool-calling row); ")
    assert lines[1].split(": ", 1)[1].startswith("messages[1].tool_calls is set (a tool call); ")
    assert lines[2].split(": ", 1)[1].startswith("messages[1].tool_calls is set (a tool call); ")
    assert lines[3].split(": ", 1)[1].startswith("messages[1].role is 'function', a tool turn; ")
    assert all("would be dropped" in line and "remove the tool fields and turns (or the row)" in line for line in lines)


def test_tool_rows_in_a_parquet_file_name_the_row_and_absent_tool_columns_pass(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": None},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "[]"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "tools": '[{"type": "function"}]'}]
    path = write_parquet(tmp_path / "t.parquet", rows)
    with pytest.raises(DataError, match=rf"^{path} row 3: field 'tools' holds tool definitions"):
        load_examples(BehaviorDataSpec(train=path, eval_split=0))


def test_sharegpt_tool_turns_and_unknown_speakers_are_refused(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
                           {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        {"conversations": [{"from": "human", "value": "q"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    path = write_jsonl(tmp_path / "sg.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_examples(BehaviorDataSpec(train=path, format="sharegpt", eval_split=0))
    assert str(err.value).splitlines() == [
        f"{path} line 1: conversations[1].from is 'bot'; a ShareGPT turn is from human (or user), gpt (or assistant) "
        "or system; fix the turn, or set behavior.data.tags to the roles the file uses",
        f"{path} line 2: conversations[1].from is 'function_call', a tool turn; training here reads only the text of "
        "system, user and assistant turns, so the calls and their results would be dropped and the adapter taught "
        "answers without them; remove the tool fields and turns (or the row), or write each call into the "
        "assistant's content as the text the model should produce",
        f"{path} line 3: conversations[0].from is 'gpt' where 'human' belongs; turns must be an optional system turn, "
        "then human and gpt alternating, ending with the gpt answer; reorder the row",
        f"{path} line 4: the last turn is 'human', so the row has no answer; end conversations with an "
        "{\"from\": \"gpt\", ...} turn or remove the row",
        f"{path} line 5: field 'conversations' is missing (sharegpt rows need conversations); add it, or set "
        "behavior.data.format to chat",
    ]


def test_chat_rows_in_sharegpt_shape_point_at_format_sharegpt(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [sharegpt(triage_rows("eval")[0])])
    with pytest.raises(DataError, match=r"line 1: field 'messages' is missing .*set behavior.data.format to sharegpt"):
        load_examples(BehaviorDataSpec(train=path, eval_split=0))


def test_a_missing_mapped_column_names_the_file_the_column_and_the_closest(tmp_path):
    path = write_csv(tmp_path / "t.csv", [instruction(r) for r in triage_rows("eval")[:3]])
    spec = BehaviorDataSpec(train=path, format="instruction", eval_split=0,
                            columns={"instruction": "question", "output": "lable"})
    with pytest.raises(DataError) as err:
        load_examples(spec)
    assert str(err.value) == (
        f"{path}: behavior.data.columns.output names the column 'lable', which the file does not have (closest: "
        "'label'; its columns: question, label, ticket); fix behavior.data.columns"
    )
    folder = save_to_disk(tmp_path / "ds", {"train": [instruction(r) for r in triage_rows("eval")[:3]]})
    with pytest.raises(DataError, match=rf"^{folder / 'train'}: behavior.data.columns.output names the column 'lable'"):
        load_examples(spec.model_copy(update={"train": folder}))


def test_a_mapped_column_empty_in_one_row_names_that_line_and_the_mapping(tmp_path):
    rows = [instruction(r) for r in triage_rows("eval")[:3]]
    rows[1]["label"] = None
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    spec = BehaviorDataSpec(train=path, format="instruction", eval_split=0,
                            columns={"instruction": "question", "output": "label"})
    with pytest.raises(DataError, match=rf"^{path} line 2: column 'label' \(behavior.data.columns.output\) is missing "
                                        r"\(instruction rows need instruction, output\); fill it in, or fix "):
        load_examples(spec)


def test_bad_json_arrays_name_the_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[\n  {"messages": []},\n  {"messages": [}\n]\n')
    with pytest.raises(DataError, match=rf"^{path} line 3: not valid JSON \(Expecting value\); write the file as one "):
        load_examples(BehaviorDataSpec(train=path, eval_split=0))
    path.write_text('[\n  {"prompt": "q", "completion": "a"}\n  {"prompt": "q", "completion": "a"}\n]\n')
    with pytest.raises(DataError, match=rf"^{path} line 3: not valid JSON \(expected ',' or ']' after a row\)"):
        load_examples(BehaviorDataSpec(train=path, format="completion", eval_split=0))


def test_folders_that_are_not_datasets_and_dicts_without_the_split_are_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: is a folder without state.json or dataset_dict.json"):
        load_examples(BehaviorDataSpec(train=tmp_path / "plain"))
    folder = save_to_disk(tmp_path / "ds", {"validation": [sharegpt(r) for r in triage_rows("eval")[:2]]})
    with pytest.raises(DataError, match=r"ds: is a DatasetDict with splits validation but no train split; point "
                                        r"behavior.data.train at one split's folder \(ds/<split>\)"):
        load_examples(BehaviorDataSpec(train=folder, format="sharegpt"))
    state = folder / "validation" / "state.json"
    state.write_text(json.dumps({"_data_files": [{"filename": "../../elsewhere.arrow"}]}))
    with pytest.raises(DataError, match=r"lists the shard '../../elsewhere.arrow', outside"):
        load_examples(BehaviorDataSpec(train=folder / "validation", format="sharegpt"))


def test_columns_must_name_fields_of_the_format(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [instruction(r) for r in triage_rows("eval")[:2]])
    with pytest.raises(ValidationError, match=r"'outptu' is not a field of format 'instruction' \(instruction, output, "
                                              r"input\); did you mean 'output'\?"):
        BehaviorDataSpec(train=path, format="instruction", columns={"outptu": "label"})


# --- validate, digests, training -----------------------------------------------------------------


def write_spec(tmp_path: Path, data: str) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: t\ngoal: behavior\nbehavior:\n  data: {data}\n")
    return spec


def test_validate_counts_rows_per_format_and_lists_bad_rows_as_issues(tmp_path):
    folder = save_to_disk(tmp_path / "ds", {"train": [sharegpt(r) for r in triage_rows("train")],
                                            "test": [sharegpt(r) for r in triage_rows("eval")]})
    spec_file = write_spec(tmp_path, "{train: ds, format: sharegpt}")
    assert inputs_report(load_spec(spec_file, tmp_path), spec_file) == ([
        f"behavior data: train 240 sharegpt rows ({folder / 'train'}, datasets split train); "
        f"eval 60 sharegpt rows ({folder / 'test'}, datasets split test)"], [])
    write_jsonl(tmp_path / "tools.jsonl", TOOL_ROWS)
    spec_file = write_spec(tmp_path, "{train: tools.jsonl}")
    notes, issues = inputs_report(load_spec(spec_file, tmp_path), spec_file)
    assert notes == [] and [(i.file, i.line, i.path) for i in issues] == [
        (str(tmp_path / "tools.jsonl"), n, "behavior.data.train") for n in (2, 3, 4, 5)]
    assert str(issues[0]).startswith(f"{tmp_path / 'tools.jsonl'} line 2: behavior.data.train: field 'tools' holds")
    write_parquet(tmp_path / "t.parquet", [{"messages": [{"role": "user", "content": "q"}]}])
    spec_file = write_spec(tmp_path, "{train: t.parquet, eval: t.parquet}")
    assert [str(i) for i in inputs_report(load_spec(spec_file, tmp_path), spec_file)[1]] == [
        f"{tmp_path / 't.parquet'}: behavior.data.train: row 1: the last message is 'user', so the row has no answer; "
        "end messages with an {\"role\": \"assistant\", ...} message or remove the row"]


def test_the_triage_specs_spec_derived_digests_are_unchanged():
    """Stage keys and spec hashes digest the spec's dump: a spec without the new fields dumps as before.
    (The train key also hashes the `components` source, so any code edit changes it by design.)"""
    from components.registry.lineage import spec_hash
    from flows.keys import _section, data_hashes

    spec = load_spec(ROOT / "specs" / "support-triage.yaml", ROOT)
    assert digest(_section(spec.behavior)) == "2a5b325d49c7882fe899559b0730cf5ed88fb1a1e11c8e869c03ccac31239d69"
    assert data_hashes(spec)["behavior.train"] == "8737281f943bcf766363cc101f518c02d63344244a9dfb5b83311749e87fdf19"
    assert data_hashes(spec)["behavior.eval"] == "f2b725c8e15af0bef29607f4fcfdf6083929733b4f8a5c4cb7abc67454eed467"
    data = {k: str(Path(v).relative_to(ROOT)) if k in ("train", "eval") else v
            for k, v in spec.behavior.data.model_dump(mode="json").items()}
    assert digest(data) == "d4ef7482b81d3c101e8eaab9f36b32853ccf4114e7ee546fe5a547654384f106"
    assert "columns" not in spec.model_dump(mode="json")["behavior"]["data"]
    mapped = spec.model_copy(update={"behavior": spec.behavior.model_copy(update={
        "data": spec.behavior.data.model_copy(update={"columns": {"messages": "dialog"}})})})
    assert mapped.model_dump(mode="json")["behavior"]["data"]["columns"] == {"messages": "dialog"}
    assert spec_hash(mapped) != spec_hash(spec) and digest(_section(mapped.behavior)) != digest(_section(spec.behavior))


@pytest.mark.usefixtures("one_thread")
def test_training_from_sharegpt_and_a_datasets_folder_gives_the_jsonl_adapter_bit_for_bit(tmp_path, tokenizer):
    """A tiny model, 3 steps on the first 24 triage rows from each source: same losses, same adapter bytes."""
    rows = triage_rows("train")[:24]
    sources = {
        "jsonl": {"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "format": "chat", "eval_split": 0},
        "sharegpt": {"train": str(write_jsonl(tmp_path / "sg.jsonl", [sharegpt(r) for r in rows])),
                     "format": "sharegpt", "eval_split": 0},
        "datasets": {"train": str(save_to_disk(tmp_path / "ds", {"train": [{"d": r["messages"]} for r in rows]})),
                     "columns": {"messages": "d"}, "eval_split": 0},
    }
    out = {}
    for name, data in sources.items():
        spec = BehaviorSpec.model_validate({"data": data, "adapter": {"method": "lora", "r": 4},
                                            "training": {"max_steps": 3, "batch_size": 8, "lr": 0.01, "seed": 1}})
        record = train(make_tiny_llama(tokenizer), tokenizer, spec, tmp_path / f"run-{name}")
        out[name] = record.loss_curve, (tmp_path / f"run-{name}" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert out["sharegpt"] == out["jsonl"] and out["datasets"] == out["jsonl"]
    assert len(out["jsonl"][0]) == 3 and torch.isfinite(torch.tensor(out["jsonl"][0])).all()


# --- ShareGPT spelled as LLaMA-Factory's dataset_info `tags` allow; Hub folders of parquet files -------------

TAGS = {  # style -> (behavior.data.tags, how each of our roles is spelled)
    "openai": ({"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
               {"system": "system", "user": "user", "assistant": "assistant"}),
    "renamed": ({"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent",
                 "system_tag": "policy"}, {"system": "policy", "user": "customer", "assistant": "agent"}),
}


def tagged(row: dict, style: str) -> dict:
    tags, spell = TAGS[style]
    return {"dialog": [{tags["role_tag"]: spell[m["role"]], tags["content_tag"]: m["content"]} for m in row["messages"]]}


def tagged_spec(ws: Path, style: str, train: str = "train.jsonl", eval_: str = "eval.jsonl") -> Path:
    tags = ", ".join(f"{k}: {v}" for k, v in TAGS[style][0].items())
    (ws / "spec.yaml").write_text(
        "name: tagged\ngoal: behavior\nbehavior:\n  data:\n"
        f"    train: {train}\n    eval: {eval_}\n    format: sharegpt\n"
        f"    columns: {{conversations: dialog}}\n    tags: {{{tags}}}\n")
    return ws / "spec.yaml"


@pytest.mark.parametrize("style", list(TAGS))
def test_sharegpt_with_llama_factory_tags_loads_as_the_triage_jsonl(tmp_path, oracle, style):
    write_jsonl(tmp_path / "train.jsonl", [tagged(r, style) for r in triage_rows("train")])
    write_jsonl(tmp_path / "eval.jsonl", [tagged(r, style) for r in triage_rows("eval")])
    spec = load_spec(tagged_spec(tmp_path, style), tmp_path)
    assert spec.behavior.data.tags.role_tag == TAGS[style][0]["role_tag"]
    train_rows, eval_rows = load_examples(spec.behavior.data)
    assert (messages(train_rows), messages(eval_rows)) == oracle


def test_tagged_sharegpt_rows_name_the_line_the_turn_and_the_tag_to_fix(tmp_path):
    good = tagged(triage_rows("eval")[0], "renamed")
    rows = [good,
            {"dialog": [{"speaker": "customer", "text": "q"}, {"speaker": "gpt", "text": "a"}]},
            {"dialog": [{"from": "customer", "value": "q"}, {"speaker": "agent", "text": "a"}]},
            {"dialog": [{"speaker": "customer", "text": "q"}, {"speaker": "observation", "text": "{}"},
                        {"speaker": "agent", "text": "a"}]},
            {"dialog": [{"speaker": "agent", "text": "a"}, {"speaker": "customer", "text": "q"}]}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", [good])
    path = tmp_path / "train.jsonl"
    with pytest.raises(DataError) as err:
        load_examples(load_spec(tagged_spec(tmp_path, "renamed"), tmp_path).behavior.data)
    assert str(err.value).splitlines() == [
        f"{path} line 2: conversations[1].speaker is 'gpt', which behavior.data.tags does not name (user_tag "
        "'customer', assistant_tag 'agent', system_tag 'policy'); fix the turn, or the tag that spells this role",
        f"{path} line 3: conversations[0] needs string fields 'speaker' and 'text'; fix the turn, or "
        "behavior.data.tags.role_tag / content_tag",
        f"{path} line 4: conversations[1].speaker is 'observation', a tool turn; training here reads only the text of "
        "system, user and assistant turns, so the calls and their results would be dropped and the adapter taught "
        "answers without them; remove the tool fields and turns (or the row), or write each call into the "
        "assistant's content as the text the model should produce",
        f"{path} line 5: conversations[0].speaker is 'agent' where 'customer' belongs; turns must be an optional "
        "policy turn, then customer and agent alternating, ending with the agent answer; reorder the row",
    ]


def test_tags_are_refused_on_other_formats_and_when_two_roles_share_a_tag(tmp_path):
    from components.spec.load import SpecError

    write_jsonl(tmp_path / "train.jsonl", triage_rows("eval")[:2])
    write_jsonl(tmp_path / "eval.jsonl", triage_rows("eval")[:2])
    spec = tagged_spec(tmp_path, "openai")
    spec.write_text(spec.read_text().replace("format: sharegpt", "format: chat").replace(
        "    columns: {conversations: dialog}\n", ""))
    with pytest.raises(SpecError, match=r"behavior\.data\.tags: .*tags spell the turns of format sharegpt, but "
                                        r"format is 'chat'; set format: sharegpt or remove tags"):
        load_spec(spec, tmp_path)
    with pytest.raises(ValidationError, match=r"user_tag and assistant_tag are both 'gpt': each role needs its own"):
        BehaviorDataSpec(train=tmp_path / "train.jsonl", format="sharegpt", tags={"user_tag": "gpt"})


def write_hub(folder: Path, files: dict[str, list[dict]]) -> Path:
    """The triage rows as the Hub lays out a parquet dataset: relative path -> rows."""
    for rel, rows in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        write_parquet(folder / rel, rows)
    return folder


@pytest.mark.parametrize("layout", ["data", "folders"])
def test_a_hub_folder_of_parquet_files_gives_its_splits_by_file_name(tmp_path, oracle, layout):
    train, held = triage_rows("train"), triage_rows("eval")
    files = ({"data/train-00000-of-00002.parquet": train[:100], "data/train-00001-of-00002.parquet": train[100:],
              "data/test-00000-of-00001.parquet": held} if layout == "data" else
             {"default/train/0000.parquet": train[:100], "default/train/0001.parquet": train[100:],
              "default/validation/0000.parquet": held})
    folder = write_hub(tmp_path / "triage", files)
    (folder / "README.md").write_text("---\nconfigs: []\n---\n")  # a Hub dataset card: not data
    splits = load_splits(BehaviorDataSpec(train=folder))  # no eval: the folder's test / validation files
    assert (messages(splits.train), messages(splits.eval)) == oracle
    assert (splits.train_source.split, splits.eval_source.split) == ("train", "test" if layout == "data" else "validation")
    second = folder / ("data/train-00001-of-00002.parquet" if layout == "data" else "default/train/0001.parquet")
    assert splits.train[100].source == f"{second} row 1"  # each row named by its file and its row there
    assert str(splits.train_source) == f"{folder} (parquet files, split train)"


def test_hub_split_names_follow_the_datasets_keywords():
    from components.training.data_files import hub_split

    names = {"data/train-00000-of-00001.parquet": "train", "training.parquet": "train", "my_eval.parquet": "test",
             "dev-0.parquet": "validation", "data/val/part-0.parquet": "validation", "review.parquet": "train",
             "testing/x.parquet": "test", "chunk.parquet": "train"}
    assert {n: hub_split(Path(n)) for n in names} == names


def test_hub_folders_without_a_train_split_or_with_a_broken_file_are_refused(tmp_path):
    folder = write_hub(tmp_path / "ds", {"data/test-00000-of-00001.parquet": triage_rows("eval")[:2]})
    with pytest.raises(DataError, match=r"ds: holds .parquet files of the splits test but no train split \(a file or "
                                        r"folder named e.g. train-00000-of-00001.parquet\); rename the files"):
        load_examples(BehaviorDataSpec(train=folder))
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet: not a readable parquet file"):
        load_examples(BehaviorDataSpec(train=folder))
