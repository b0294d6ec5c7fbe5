"""Behavior data row formats: one row of chat, sharegpt, instruction or completion data -> chat messages.

Each format's fields are read here and checked, the last message is the answer. A row of OpenAI
tool-calling data (tool definitions, tool calls, tool results) is refused: training reads only the text of
system/user/assistant turns and would silently drop the calls. A problem is a `RowError` without the row's
place; `components.training.data.read_examples` adds the file and line/row. File types are `components.training.data_files`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from components.spec.behavior import ShareGPTTagsSpec
from components.training.data_files import rename_columns

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


def _refuse_tools(row: dict, raw: list, key: str, role_key: str, tool_roles: tuple[str, ...] | None = None) -> None:
    for name in TOOL_FIELDS:
        if _present(row.get(name)):
            raise RowError(f"field '{name}' holds tool definitions (a tool-calling row); {NO_TOOLS}")
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            continue
        if turn.get(role_key) in (tool_roles or TOOL_ROLES[key]):
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
                 offset: int = 0, words: tuple | None = None) -> None:
    """An optional system message, then user/assistant turns alternating, ending with assistant.

    `written`: the roles as the file spells them; `offset`: messages that precede the file's list
    (sharegpt's `system` field); `words`: TURN_WORDS' entry as `behavior.data.tags` spell it."""
    role_key, say, noun, rule = words or TURN_WORDS[key]
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


@dataclass(frozen=True)
class ShareGPTWords:
    """How a ShareGPT file spells its turns: the defaults, or `behavior.data.tags` (LLaMA-Factory's dataset_info)."""

    role: str  # the turn's key for who speaks ('from')
    content: str  # the turn's key for the text ('value')
    roles: dict[str, str]  # the file's role -> ours (user, assistant, system)
    tools: tuple[str, ...]  # tool turns' roles: refused
    tagged: bool  # from behavior.data.tags: errors say which tag to fix

    @classmethod
    def of(cls, tags: ShareGPTTagsSpec | None) -> ShareGPTWords:
        if tags is None:
            return cls("from", "value", SHAREGPT_ROLES, TOOL_ROLES["conversations"], False)
        roles = {tags.user_tag: "user", tags.assistant_tag: "assistant", tags.system_tag: "system"}
        return cls(tags.role_tag, tags.content_tag, roles, (tags.observation_tag, tags.function_tag), True)

    def say(self, role: str) -> str:
        """Our role as the file spells it (the first spelling: 'human' for user)."""
        return next(theirs for theirs, ours in self.roles.items() if ours == role)

    def turn_words(self) -> tuple:
        say = {r: self.say(r) for r in ("system", "user", "assistant")}
        return (self.role, say, "turn", f"turns must be an optional {say['system']} turn, then {say['user']} and "
                f"{say['assistant']} alternating, ending with the {say['assistant']} answer")

    def unknown_role(self, i: int, role: str) -> str:
        if not self.tagged:
            return (f"conversations[{i}].from is '{role}'; a ShareGPT turn is from human (or user), gpt (or assistant) "
                    "or system; fix the turn, or set behavior.data.tags to the roles the file uses")
        named = ", ".join(f"{ours}_tag '{theirs}'" for theirs, ours in self.roles.items())
        return (f"conversations[{i}].{self.role} is '{role}', which behavior.data.tags does not name ({named}); fix "
                "the turn, or the tag that spells this role")

    def bad_turn(self, i: int) -> str:
        fix = "fix the turn" + (", or behavior.data.tags.role_tag / content_tag" if self.tagged else
                                ", or set behavior.data.tags {role_tag, content_tag} to the keys the file uses")
        return f"conversations[{i}] needs string fields '{self.role}' and '{self.content}'; {fix}"


def _sharegpt_messages(row: dict, columns: dict[str, str],
                       tags: ShareGPTTagsSpec | None = None) -> tuple[dict[str, str], ...]:
    """ShareGPT (LLaMA-Factory, axolotl): conversations [{from, value}], an optional `system` field first; the
    keys and roles as `behavior.data.tags` spell them."""
    words = ShareGPTWords.of(tags)
    shape = (f"[{{\"{words.role}\": \"{words.say('user')}\", \"{words.content}\": ...}}, "
             f"{{\"{words.role}\": \"{words.say('assistant')}\", ...}}]")
    raw = _turns(row, "conversations", "sharegpt", shape, columns)
    _refuse_tools(row, raw, "conversations", words.role, words.tools)
    messages, written = [], []
    if _present(system := row.get("system")):
        if not isinstance(system, str):
            raise RowError(f"{_field('system', columns)} must be a string, got {type(system).__name__}; quote the value")
        messages.append({"role": "system", "content": system})
        written.append(words.say("system"))
    for i, turn in enumerate(raw):
        if not (isinstance(turn, dict) and isinstance(turn.get(words.role), str)
                and isinstance(turn.get(words.content), str)):
            raise RowError(words.bad_turn(i))
        role = turn[words.role]
        if role not in words.roles:
            raise RowError(words.unknown_role(i, role))
        messages.append({"role": words.roles[role], "content": turn[words.content]})
        written.append(role)
    _check_roles(messages, "conversations", written, offset=len(messages) - len(raw), words=words.turn_words())
    return tuple(messages)


EMPTY_ANSWER = {"chat": "the last assistant message", "instruction": "'output'", "completion": "'completion'",
                "sharegpt": "the last gpt turn"}


def row_messages(row: object, fmt: str, columns: dict[str, str],
                 tags: ShareGPTTagsSpec | None = None) -> tuple[dict[str, str], ...]:
    """One row of any format -> chat messages ending with the answer (`tags`: how sharegpt spells its turns)."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}; write each row as one object of its fields")
    if columns:
        row = rename_columns(row, columns)
    if fmt == "chat":
        messages = _chat_messages(row, columns)
    elif fmt == "sharegpt":
        messages = _sharegpt_messages(row, columns, tags)
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
