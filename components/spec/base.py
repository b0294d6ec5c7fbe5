"""The spec's floor: the `Strict` base model, the built-in model and embedder names, the upper bounds,
and how a path in a spec is resolved and kept inside the workspace (`SpecPath`, `walk_confined`,
local model folders). Every other module of `components.spec` builds on these."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

BUILTIN_MODEL = "smollm2-135m-instruct"
BUILTIN_GEMMA = "gemma3-270m"  # Gemma 3 270M (pretrained, not instruct), a second real model from the package index
BUILTIN_BASES = (BUILTIN_MODEL, BUILTIN_GEMMA)
CHAT_TEMPLATES = ("chatml", "gemma")  # named chat templates for a base without one (components/resources/chat_templates)
BUILTIN_EMBEDDER = "all-minilm-l6-v2"

# Upper bounds (docs/spec.md, "Bounds"): far above any sane value, low enough that a typo such as
# `batch_size: 1e14` or `lr: 1e300` is an error at validate instead of an hour of work or a NaN.
MAX_RANK = 4096
MAX_ALPHA = 65_536
MAX_VIRTUAL_TOKENS = 4096
MAX_STEPS = 10_000_000
MAX_SEQ_LEN = 1_048_576


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` and `.nan` are refused for every float (docs/spec.md, "Bounds")
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the spec's folder and keep it inside the workspace."""
    ctx = info.context or {}
    base_dir, workspace = ctx.get("base_dir"), ctx.get("workspace")
    if base_dir is None:
        return value
    path = (Path(base_dir) / value).resolve() if not value.is_absolute() else value.resolve()
    if workspace is not None:
        root = Path(workspace).resolve()
        if not path.is_relative_to(root):
            raise ValueError(
                f"path '{value}' resolves to {path}, outside the workspace {root}; "
                "move the data inside the workspace or pass --workspace DIR"
            )
    if ctx.get("check_exists", True) and not path.exists():
        raise ValueError(f"path '{value}' does not exist (looked for {path}); fix the path or create the file")
    return path


SpecPath = Annotated[Path, AfterValidator(_resolve_path)]


def walk_confined(root: Path, confine: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(files under `root`, symlinks under it that resolve outside `confine` as (link, target)).

    Hidden entries (.git, .DS_Store) are skipped. A symlink, file or folder, is followed only when
    its target is inside `confine`; a folder link back into a folder being walked is skipped. Used at
    validate (spec) and at index time (vectorstore.documents): the same rule in both places."""
    confine = Path(confine).resolve()
    files: list[Path] = []
    escapes: list[tuple[Path, Path]] = []

    def walk(folder: Path, open_dirs: frozenset[Path]) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and not entry.resolve().is_relative_to(confine):
                escapes.append((entry, entry.resolve()))
            elif entry.is_dir():
                real = entry.resolve()
                if real not in open_dirs:
                    walk(entry, open_dirs | {real})
            elif entry.is_file():
                files.append(entry)

    root = Path(root)
    if root.is_symlink() and not root.resolve().is_relative_to(confine):
        return [], [(root, root.resolve())]
    if root.is_dir():
        walk(root, frozenset({root.resolve()}))
    elif root.exists():
        files.append(root)
    return files, escapes


_PATH_SYNTAX = ("/", "./", "../", "~")


def _local_folder(value: str, field: str, flag: str, allow_outside: bool, info: ValidationInfo) -> str:
    """A model/embedder id that names a local folder, resolved like every other spec path: against the
    spec's folder, inside the workspace unless `flag` says otherwise. Other ids are left to the loaders.

    An id written as a path (/, ./, ../, ~) must be a folder; a bare `org/name` is a local folder only
    when that folder exists next to the spec, else a Hugging Face id."""
    ctx = info.context or {}
    base_dir, workspace = ctx.get("base_dir"), ctx.get("workspace")
    if base_dir is None:
        return value
    written_as_path = value.startswith(_PATH_SYNTAX) or value in (".", "..")
    folder = (Path(base_dir) / Path(value).expanduser()).resolve()
    if not folder.is_dir():
        if written_as_path and ctx.get("check_exists", True):
            raise ValueError(f"{field} '{value}' is written as a path but {folder} is not a folder; "
                             "fix the path (relative paths start at the spec's folder) or use a Hugging Face id")
        return value
    if workspace is not None and not folder.is_relative_to(Path(workspace).resolve()) and not allow_outside:
        raise ValueError(
            f"{field} '{value}' resolves to {folder}, outside the workspace {Path(workspace).resolve()}; move it "
            f"inside, pass --workspace DIR, or set `{flag}: true` to use it from there (its weights are then "
            "recorded by hash in the manifest)"
        )
    return str(folder)
