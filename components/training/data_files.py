"""Behavior data files: where a split's rows are, one reader per file type, and the column mapping.

File types: .jsonl; .json (a JSON array of row objects, or JSON Lines, as Hugging Face's json loader reads
both); .csv; .parquet; a folder written by `datasets`' `save_to_disk`; and a folder of .parquet files laid out
as on the Hugging Face Hub (`data/train-00000-of-00001.parquet`, `train/0000.parquet`), each file's split read
from its file or folder name as `datasets`' data-file patterns read it. Both folders are read with pyarrow
alone (save_to_disk's Arrow stream shards, in the order its state.json lists them, as `load_from_disk` reads them), so
`datasets` need not be installed to train on one. Row formats (chat, sharegpt, ...) are `components.training.data`'s.
Every error names the file, the line (jsonl, json, csv) or row (parquet, datasets; counted from 1), and the fix.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
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
    path: Path  # the file, or the datasets folder holding the rows (a DatasetDict's split folder, a Hub folder)
    kind: str  # jsonl | json | csv | parquet | datasets | hub (a folder of .parquet files, split by name)
    split: str | None = None  # the DatasetDict or Hub split `path` was taken from

    @property
    def label(self) -> str:
        """'jsonl', 'datasets split test', 'parquet files split train': how validate and errors name the source."""
        kind = "parquet files" if self.kind == "hub" else self.kind
        return f"{kind}{f' split {self.split}' if self.split else ''}"

    def __str__(self) -> str:
        return f"{self.path} ({self.label.replace(' split', ', split')})"


# The Hub's split names, as `datasets`' data-file patterns spell them (datasets.data_files.SPLIT_KEYWORDS): a file
# or folder name holding one of these, delimited by -._ digits or the name's ends, is in that split; others in train.
HUB_SPLITS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
              "test": ("test", "testing", "eval", "evaluation")}
_NAME_WORDS = re.compile(r"[-._ 0-9]+")
MAX_HUB_FILES = 10_000


def hub_split(rel: Path) -> str:
    """The split of a .parquet file of a Hub folder, by its name first, then its folders' (nearest first)."""
    for part in [rel.stem, *reversed(rel.parent.parts)]:
        words = _NAME_WORDS.split(part.lower())
        for split, keywords in HUB_SPLITS.items():
            if any(k in words for k in keywords):
                return split
    return "train"


def hub_files(folder: Path) -> dict[str, list[Path]]:
    """The folder's .parquet files by split, each split's files sorted by name (the order `datasets` reads them);
    files that resolve outside the folder are refused (the folder is data a user may have been sent)."""
    root, splits = folder.resolve(), {}
    for path in sorted(folder.rglob("*.parquet"))[:MAX_HUB_FILES + 1]:
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue  # .cache/ and other hidden files are not data, as on the Hub
        if not path.resolve().is_relative_to(root):
            raise file_error(path, f"resolves outside {folder}; copy the file into the folder or remove the link")
        splits.setdefault(hub_split(path.relative_to(folder)), []).append(path)
    if sum(len(f) for f in splits.values()) > MAX_HUB_FILES:
        raise file_error(folder, f"holds more than {MAX_HUB_FILES} .parquet files; point behavior.data at one split's "
                         "folder or merge the files")
    return splits


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
    """The eval split of the DatasetDict or Hub folder train came from (`validation`, else `test`), else None."""
    if train.split is None:
        return None
    if train.kind == "hub":
        found = hub_files(train.path)
        return next((DataSource(train.path, "hub", s) for s in EVAL_SPLITS if s in found), None)
    folder = train.path.parent
    return next((DataSource(folder / s, "datasets", s) for s in EVAL_SPLITS if s in _splits(folder)), None)


def _splits(folder: Path) -> list[str]:
    try:
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise file_error(folder / "dataset_dict.json", f"not a DatasetDict index ({exc}); re-save the dataset "
                         "with DatasetDict.save_to_disk") from None
    return [str(s) for s in splits]


def _hub_source(folder: Path, role: str) -> DataSource | None:
    """A Hub folder's split for `role` (train: `train`; eval: `validation`, else `test`); None without .parquet."""
    found = hub_files(folder)
    if not found:
        return None
    wanted = ("train",) if role == "train" else EVAL_SPLITS
    for name in wanted:
        if name in found:
            return DataSource(folder, "hub", name)
    raise file_error(folder, f"holds .parquet files of the splits {', '.join(sorted(found))} but no "
                     f"{' or '.join(wanted)} split (a file or folder named e.g. {wanted[0]}-00000-of-00001.parquet); "
                     f"rename the files, or point behavior.data.{role} at one .parquet file")


def _dataset_source(folder: Path, role: str) -> DataSource:
    if (folder / "state.json").is_file():
        return DataSource(folder, "datasets")
    if not (folder / "dataset_dict.json").is_file():
        if (hub := _hub_source(folder, role)) is not None:
            return hub
        raise file_error(folder, "is a folder without state.json or dataset_dict.json, so not one Hugging Face "
                         "datasets' save_to_disk wrote, and without .parquet files; point behavior.data at a .jsonl, "
                         ".json, .csv or .parquet file, a save_to_disk folder, or a folder of .parquet files")
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
    if source.kind == "hub":  # each file's rows, named by the file and the row within it
        return (row for path in hub_files(source.path)[source.split] for row in _parquet_rows(path))
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowInvalid) as exc:
        raise file_error(path, f"not a readable parquet file ({exc}); re-write it (pandas' DataFrame.to_parquet, "
                         "datasets' Dataset.to_parquet) or remove it") from None
    for n, row in enumerate(rows, start=1):
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
