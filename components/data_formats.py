"""Behavior data row formats: one row of chat, sharegpt, instruction or completion data -> chat messages.

Each format's fields are read here and checked, the last message is the answer. A row of OpenAI
tool-calling data (tool definitions, tool calls, tool results) is refused: training reads only the text of
system/user/assistant turns and would silently drop the calls. A problem is a `RowError` without the row's
place; `components.data.read_examples` adds the file and line/row. File types are `components.data_files`.
"""

from __future__ import annotations

import json

from components.data_files import rename_columns

FORMAT_FIELDS = {  # the fields a row must have (components.spec.DATA_FIELDS adds the optional ones)
    "chat": ("messages",),
    "instruction": ("instruction", "output"),
    "completion": ("prompt", "completion"),
    "sharegpt": ("conversations",),
}


class RowError(ValueError):
    """One row's problem, without its place: `read_examples` prefixes the file and line/row."""


def _present(value: object) -> bool:
    """A value that holds something: csv, parquet and datasets write an absent one as None, NaN, '' or []."""
    if isinstance(value, str):
        return value.strip() not in ("", "[]", "{}", "null")
    return not (value is None or value == [] or value == {} or (isinstance(value, float) and value != value))


def _field(key: str, columns: dict[str, str]) -> str:
    """How an error names a field: its column when `behavior.data.columns` maps it."""
    return f"column '{columns[key]}' (behavior.data.columns.{key})" if key in columns else f"field '{key}'"


def _text(row: dict, key: str, fmt: str, columns: dict[str, str], required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):  # csv/parquet nulls
        if required:
            needed = ", ".join(FORMAT_FIELDS[fmt])
            raise RowError(
                f"{_field(key, columns)} is missing ({fmt} rows need {needed}); "
                + ("fill it in, or fix behavior.data.columns" if key in columns
                   else "add it, or set behavior.data.format to the format the file uses")
            )
        return ""
    if not isinstance(value, str):
        raise RowError(f"{_field(key, columns)} must be a string, got {type(value).__name__}; quote the value")
    return value


def _turns(row: dict, key: str, fmt: str, shape: str, columns: dict[str, str]) -> list:
    """The list of turns under `key` (`messages`, `conversations`); csv cells hold it as JSON text."""
    raw = row.get(key)
    if raw is None:
        raise RowError(f"{_field(key, columns)} is missing ({fmt} rows need {key}); add it, or set behavior.data.format"
                       + (" to sharegpt" if fmt == "chat" and "conversations" in row else
                          " to chat" if fmt == "sharegpt" and "messages" in row else ""))
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise RowError(f"{_field(key, columns)} is not a JSON list; write it as {shape}") from None
    if not isinstance(raw, list) or not raw:
        raise RowError(f"{_field(key, columns)} must be a non-empty list of {shape}; fix the row")
    return raw


# OpenAI tool-calling data: tool definitions on the row, calls on assistant messages, results as their own turns
TOOL_FIELDS = ("tools", "functions")
TOOL_CALL_FIELDS = ("tool_calls", "function_call")
TOOL_ROLES = {"messages": ("tool", "function", "ipython"), "conversations": ("function_call", "observation", "tool")}
NO_TOOLS = (
    "training here reads only the text of system, user and assistant turns, so the calls and their results would "
    "be dropped and the adapter taught answers without them; remove the tool fields and turns (or the row), or "
    "write each call into the assistant's content as the text the model should produce"
)


def _refuse_tools(row: dict, raw: list, key: str, role_key: str) -> None:
    for name in TOOL_FIELDS:
        if _present(row.get(name)):
            raise RowError(f"field '{name}' holds tool definitions (a tool-calling row); {NO_TOOLS}")
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            continue
        if turn.get(role_key) in TOOL_ROLES[key]:
            raise RowError(f"{key}[{i}].{role_key} is '{turn[role_key]}', a tool turn; {NO_TOOLS}")
        for name in TOOL_CALL_FIELDS:
            if _present(turn.get(name)):
                raise RowError(f"{key}[{i}].{name} is set (a tool call); {NO_TOOLS}")


# how each list of turns spells its role key and roles, for the order check's messages
TURN_WORDS = {
    "messages": ("role", {"system": "system", "user": "user", "assistant": "assistant"}, "message",
                 "roles must be an optional system message, then user and assistant alternating, ending with the "
                 "assistant answer"),
    "conversations": ("from", {"system": "system", "user": "human", "assistant": "gpt"}, "turn",
                      "turns must be an optional system turn, then human and gpt alternating, ending with the gpt "
                      "answer"),
}


def _check_roles(messages: list[dict[str, str]], key: str = "messages", written: list[str] | None = None,
                 offset: int = 0) -> None:
    """An optional system message, then user/assistant turns alternating, ending with assistant.

    `written`: the roles as the file spells them; `offset`: messages that precede the file's list
    (sharegpt's `system` field)."""
    role_key, say, noun, rule = TURN_WORDS[key]
    written = written or [m["role"] for m in messages]
    start = 1 if messages[0]["role"] == "system" else 0
    for i, msg in enumerate(messages):
        expected = "system" if i < start else ("user" if (i - start) % 2 == 0 else "assistant")
        if msg["role"] != expected:
            raise RowError(f"{key}[{i - offset}].{role_key} is '{written[i]}' where '{say[expected]}' belongs; {rule}; "
                           "reorder the row")
    if messages[-1]["role"] != "assistant":
        raise RowError(
            f"the last {noun} is '{written[-1]}', so the row has no answer; "
            f"end {key} with an {{\"{role_key}\": \"{say['assistant']}\", ...}} {noun} or remove the row"
        )


def _chat_messages(row: dict, columns: dict[str, str]) -> tuple[dict[str, str], ...]:
    raw = _turns(row, "messages", "chat", "[{\"role\": ..., \"content\": ...}]", columns)
    _refuse_tools(row, raw, "messages", "role")
    messages = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise RowError(f"messages[{i}] needs string fields 'role' and 'content'; fix the message")
        messages.append({"role": msg["role"], "content": msg["content"]})
    _check_roles(messages)
    return tuple(messages)


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _sharegpt_messages(row: dict, columns: dict[str, str]) -> tuple[dict[str, str], ...]:
    """ShareGPT (LLaMA-Factory, axolotl): conversations [{from, value}], an optional `system` field first."""
    raw = _turns(row, "conversations", "sharegpt", "[{\"from\": \"human\", \"value\": ...}, {\"from\": \"gpt\", ...}]",
                 columns)
    _refuse_tools(row, raw, "conversations", "from")
    messages, written = [], []
    if _present(system := row.get("system")):
        if not isinstance(system, str):
            raise RowError(f"{_field('system', columns)} must be a string, got {type(system).__name__}; quote the value")
        messages.append({"role": "system", "content": system})
        written.append("system")
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise RowError(f"conversations[{i}] needs string fields 'from' and 'value'; fix the turn")
        if turn["from"] not in SHAREGPT_ROLES:
            raise RowError(f"conversations[{i}].from is '{turn['from']}'; a ShareGPT turn is from human (or user), "
                           "gpt (or assistant) or system; fix the turn")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
        written.append(turn["from"])
    _check_roles(messages, "conversations", written, offset=len(messages) - len(raw))
    return tuple(messages)


EMPTY_ANSWER = {"chat": "the last assistant message", "instruction": "'output'", "completion": "'completion'",
                "sharegpt": "the last gpt turn"}


def row_messages(row: object, fmt: str, columns: dict[str, str]) -> tuple[dict[str, str], ...]:
    """One row of any format -> chat messages ending with the answer."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}; write each row as one object of its fields")
    if columns:
        row = rename_columns(row, columns)
    if fmt == "chat":
        messages = _chat_messages(row, columns)
    elif fmt == "sharegpt":
        messages = _sharegpt_messages(row, columns)
    elif fmt == "instruction":
        instruction = _text(row, "instruction", fmt, columns)
        extra = _text(row, "input", fmt, columns, required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = ({"role": "user", "content": user},
                    {"role": "assistant", "content": _text(row, "output", fmt, columns)})
    else:
        messages = (
            {"role": "user", "content": _text(row, "prompt", fmt, columns)},
            {"role": "assistant", "content": _text(row, "completion", fmt, columns)},
        )
    if not messages[-1]["content"].strip():
        raise RowError(f"{EMPTY_ANSWER[fmt]} is empty, so the row has no answer; write the answer or remove the row")
    return messages
