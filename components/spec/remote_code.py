"""The `trust_remote_code` pin: the code that runs is the code the spec names, or nothing runs.

With `base_model.trust_remote_code: true`, transformers imports Python that ships with the model.
The spec must pin it with `base_model.revision`, and the pin is checked before any loader runs:

- a Hugging Face id: `revision` is a full 40-hex git commit (a branch or tag can move; a short
  hash can become ambiguous). The loaders fetch exactly that commit.
- a local folder: `revision` is the folder's code digest (64 hex), defined as the sha256 of the
  text made of one line per `*.py` file under the folder, recursively, sorted by path:

      <sha256 of the file's bytes>  <path relative to the folder, posix separators>\\n

  (the `sha256sum` line format). Print it with `python -m components.spec.remote_code FOLDER`.
  Symlinked folders inside it are refused (their code would not be covered); a symlinked
  file is hashed by its content. The digest is recorded as `base_model.revision` in the manifest.

Anything else is refused with a message that names the field and the fix (docs/security.md).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class RemoteCodeError(ValueError):
    """The trust_remote_code pin is missing, malformed or does not match the code."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def code_files(folder: Path) -> list[Path]:
    """Every `*.py` file under `folder`, sorted by relative path; a symlinked folder is refused."""
    folder = Path(folder)
    found: list[Path] = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        here = Path(current)
        for name in dirs:
            if (here / name).is_symlink():
                raise RemoteCodeError(
                    f"{here / name} is a symlinked folder inside a trust_remote_code model folder; its code would not "
                    "be covered by the pin: copy the folder in instead of linking it"
                )
        found += [here / name for name in files if name.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def code_digest(folder: Path) -> str:
    """The local-folder pin: sha256 over `<file sha256>  <relative path>` lines (see the module doc)."""
    folder = Path(folder)
    lines = "".join(f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in code_files(folder))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def check_pin(model_id: str, local_folder: Path | None, revision: str | None) -> None:
    """Raise RemoteCodeError unless `revision` pins the code of `model_id` (see the module doc).

    Call it before any loader that is given trust_remote_code=True: nothing is imported here."""
    if local_folder is not None:
        actual = code_digest(local_folder)
        if not revision or not DIGEST_RE.match(revision):
            raise RemoteCodeError(
                f"base_model.revision is {revision!r}, but base_model.id '{model_id}' is a local folder with "
                "trust_remote_code: the pin must be the sha256 of its *.py files; review the code, then set "
                f"`revision: '{actual}'` (python -m components.spec.remote_code {local_folder})"
            )
        if revision != actual:
            raise RemoteCodeError(
                f"base_model.revision '{revision}' does not match the code in {local_folder} (its *.py files now hash "
                f"to {actual}): the code changed since it was pinned; nothing was imported. Review the change, then "
                "update the revision"
            )
        return
    if not revision or not COMMIT_RE.match(revision):
        raise RemoteCodeError(
            f"base_model.revision is {revision!r}, but trust_remote_code runs code from '{model_id}': pin a full "
            "40-character commit hash (a branch, tag or short hash can change what runs); copy it from the "
            "model page's commit history"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m components.spec.remote_code MODEL_FOLDER  (prints the trust_remote_code pin)")
    print(code_digest(Path(sys.argv[1])))
