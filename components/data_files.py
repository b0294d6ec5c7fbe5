"""Behavior data files: where a split's rows are, one reader per file type, and the column mapping.

File types: .jsonl; .json (a JSON array of row objects, or JSON Lines, as Hugging Face's json loader reads
both); .csv; .parquet; and a folder written by `datasets`' `save_to_disk`. That folder is read with pyarrow
alone (its Arrow stream shards, in the order its state.json lists them, as `load_from_disk` reads them), so
`datasets` need not be installed to train on one. Row formats (chat, sharegpt, ...) are `components.data`'s.
Every error names the file, the line (jsonl, json, csv) or row (parquet, datasets; counted from 1), and the fix.
"""

from __future__ import annotations

import csv
import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUFFIX_KINDS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EVAL_SPLITS = ("validation", "test")  # a DatasetDict's held-out split, in the order they are looked for


class DataError(ValueError):
    """Bad behavior data; the message names the file, the line/row, the field and the fix.

    `problems` holds (where, message) for each bad row or file, so `adaptflow validate` can list them
    as spec issues; the message alone repeats them as text."""

    def __init__(self, message: str, problems: tuple[tuple[RowRef, str], ...] = ()):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class RowRef:
    """A row's place: 'file line N' (jsonl, json, csv) or 'folder row N' (parquet, datasets); the file alone."""

    file: str
    n: int | None = None
    unit: str = "line"

    def __str__(self) -> str:
        return self.file if self.n is None else f"{self.file} {self.unit} {self.n}"


def file_error(path: Path | str, message: str) -> DataError:
    return DataError(f"{path}: {message}", ((RowRef(str(path)), message),))


@dataclass(frozen=True)
class DataSource:
    path: Path  # the file, or the datasets folder holding the rows (a DatasetDict's split folder)
    kind: str  # jsonl | json | csv | parquet | datasets
    split: str | None = None  # the DatasetDict split `path` was taken from

    def __str__(self) -> str:
        return f"{self.path} ({self.kind}{f', split {self.split}' if self.split else ''})"


# --- where the rows are ----------------------------------------------------------------------


def data_source(path: Path, role: str) -> DataSource:
    """`behavior.data.<role>` (train | eval) as a source: the file, or a datasets folder; a DatasetDict
    gives its `train` split as train and its `validation` (else `test`) split as eval."""
    if not path.exists():
        raise file_error(path, "file not found; fix behavior.data in the spec")
    if path.is_dir():
        return _dataset_source(path, role)
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        raise file_error(path, f"unsupported file type '{path.suffix}'; use .jsonl, .json, .csv or .parquet, or a "
                         "folder written by Hugging Face datasets' save_to_disk")
    return DataSource(path, kind)


def held_out_source(train: DataSource) -> DataSource | None:
    """The eval split of the DatasetDict train came from (`validation`, else `test`), else None."""
    if train.split is None:
        return None
    folder = train.path.parent
    return next((DataSource(folder / s, "datasets", s) for s in EVAL_SPLITS if s in _splits(folder)), None)


def _splits(folder: Path) -> list[str]:
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise file_error(folder / "dataset_dict.json", f"not a DatasetDict index ({exc}); re-save the dataset "
                         "with DatasetDict.save_to_disk") from None
    return [str(s) for s in splits]


def _dataset_source(folder: Path, role: str) -> DataSource:
    if (folder / "state.json").is_file():
        return DataSource(folder, "datasets")
    if not (folder / "dataset_dict.json").is_file():
        raise file_error(folder, "is a folder without state.json or dataset_dict.json, so not one Hugging Face "
                         "datasets' save_to_disk wrote; point behavior.data at a .jsonl, .json, .csv or .parquet "
                         "file, or at a save_to_disk folder")
    splits = _splits(folder)
    wanted = ("train",) if role == "train" else EVAL_SPLITS
    for name in wanted:
        if name in splits:
            return DataSource(folder / name, "datasets", name)
    raise file_error(folder, f"is a DatasetDict with splits {', '.join(splits)} but no {' or '.join(wanted)} split; "
                     f"point behavior.data.{role} at one split's folder ({folder.name}/<split>)")


# --- reading -----------------------------------------------------------------------------------


def read_rows(source: DataSource) -> Iterator[tuple[RowRef, object]]:
    """Yield (where, row) for every row of the source."""
    return READERS[source.kind](source.path)


def _jsonl_rows(path: Path, fix: str = "write one JSON object per line") -> Iterator[tuple[RowRef, object]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield RowRef(str(path), n), json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {n}: not valid JSON ({exc.msg}); {fix}",
                                ((RowRef(str(path), n), f"not valid JSON ({exc.msg}); {fix}"),)) from None


def _json_rows(path: Path) -> Iterator[tuple[RowRef, object]]:
    """A JSON array of rows, each named by the line its object starts on; other .json files as JSON Lines."""
    text = path.read_text(encoding="utf-8")
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        yield from _jsonl_rows(path, "a .json data file holds a JSON array of row objects, [{...}, {...}], or one "
                               "object per line")
        return
    decoder = json.JSONDecoder()
    pos = _skip_space(text, pos + 1)
    while not text.startswith("]", pos):
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _json_error(path, exc.lineno, exc.msg) from None
        yield RowRef(str(path), text.count("\n", 0, pos) + 1), row
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif not text.startswith("]", pos):
            raise _json_error(path, text.count("\n", 0, pos) + 1, "expected ',' or ']' after a row")
    if text[pos + 1:].strip():
        raise _json_error(path, text.count("\n", 0, pos) + 1, "text after the closing ']'")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_error(path: Path, line: int, msg: str) -> DataError:
    message = f"not valid JSON ({msg}); write the file as one JSON array of row objects, [{{...}}, {{...}}]"
    return DataError(f"{path} line {line}: {message}", ((RowRef(str(path), line), message),))


def _csv_rows(path: Path) -> Iterator[tuple[RowRef, object]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            yield RowRef(str(path), reader.line_num), {k: v for k, v in row.items() if k is not None}


def _parquet_rows(path: Path) -> Iterator[tuple[RowRef, object]]:
    import pyarrow.parquet as pq

    for n, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield RowRef(str(path), n, "row"), row


def _dataset_rows(folder: Path) -> Iterator[tuple[RowRef, object]]:
    """The shards state.json lists, in order: the rows `Dataset.load_from_disk` gives (save_to_disk writes
    a shuffled or selected dataset's rows in their new order, so no indices file is involved)."""
    import pyarrow as pa

    state = folder / "state.json"
    try:
        names = [str(f["filename"]) for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise file_error(state, f"not a datasets state file ({exc}); re-save the dataset with save_to_disk") from None
    n = 0
    for name in names:
        shard = (folder / name).resolve()
        if shard.parent != folder.resolve():  # state.json is data: it may not point outside its folder
            raise file_error(state, f"lists the shard '{name}', outside {folder}; re-save the dataset with save_to_disk")
        try:
            with pa.memory_map(str(shard)) as stream:
                rows = pa.ipc.open_stream(stream).read_all().to_pylist()
        except (OSError, pa.ArrowInvalid) as exc:
            raise file_error(shard, f"not an Arrow stream that save_to_disk wrote ({exc}); re-save the dataset") from None
        for row in rows:
            n += 1
            yield RowRef(str(folder), n, "row"), row


READERS = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows,
           "datasets": _dataset_rows}


# --- columns ----------------------------------------------------------------------------------


def check_columns(source: DataSource, rows: list[tuple[RowRef, object]], columns: dict[str, str]) -> None:
    """Every mapped column must be a column of the file (of some row, for JSON): else name the closest."""
    present = list(dict.fromkeys(k for _, row in rows if isinstance(row, dict) for k in row))
    for ours, theirs in columns.items():
        if theirs not in present:
            close = difflib.get_close_matches(theirs, present, n=1, cutoff=0.5)
            hint = f"closest: '{close[0]}'; " if close else ""
            raise file_error(source.path, f"behavior.data.columns.{ours} names the column '{theirs}', which the file "
                             f"does not have ({hint}its columns: {', '.join(present) or 'none'}); fix "
                             "behavior.data.columns")


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """The row with the format's field names: each mapped column under its field, replacing a column of
    that name; a swap ({input: output, output: input}) works."""
    mapped = set(columns) | set(columns.values())
    out = {k: v for k, v in row.items() if k not in mapped}
    out.update({ours: row[theirs] for ours, theirs in columns.items() if theirs in row})
    return out
