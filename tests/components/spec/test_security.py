"""Hostile input: real files, real symlinks, real custom code (docs/security.md).

Each test builds the hostile thing for real (an anchor bomb on disk, a symlink to /etc/hostname,
a model folder whose Python writes a marker file when imported) and checks it is refused with a
message that names the file, the line or field, and the fix.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from components.spec.load import SpecError, load_spec
from components.spec.remote_code import RemoteCodeError, code_digest

BOMB = """\
name: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
goal: knowledge
"""


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A workspace with a spec folder, data and documents; the current directory is elsewhere."""
    root = tmp_path / "ws"
    (root / "data" / "docs").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text('{"messages": []}\n')
    (root / "data" / "docs" / "a.md").write_text("# A\nfact\n")
    monkeypatch.chdir(tmp_path)
    return root


def issues(spec: Path, workspace: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(spec, workspace=workspace)
    return [str(i).removeprefix(str(spec.parent) + "/") for i in info.value.issues]


# --- the spec file itself ----------------------------------------------------------------------


def test_anchor_bomb_is_refused_in_under_a_second(ws):
    (ws / "bomb.yaml").write_text(BOMB)
    started = time.perf_counter()
    found = issues(ws / "bomb.yaml", ws)
    assert time.perf_counter() - started < 1.0
    assert found == [
        "bomb.yaml line 5: refused: aliases expand this spec to more than 10,000 values (a YAML alias bomb?); "
        "a spec needs no more: write the values out"
    ]


def test_too_many_aliases_and_recursive_anchor(ws):
    (ws / "many.yaml").write_text("name: &n t\nx: [" + ", ".join(["*n"] * 101) + "]\n")
    assert issues(ws / "many.yaml", ws) == [
        "many.yaml line 2: refused: more than 100 aliases (*name); a spec needs a few at most: write the values out"
    ]
    (ws / "rec.yaml").write_text("name: t\nx: &a [1, *a]\n")
    assert issues(ws / "rec.yaml", ws) == [
        "rec.yaml line 2: refused: an alias refers to the node that contains it (a recursive anchor); "
        "remove the self-reference"
    ]


def test_ten_thousand_levels_of_nesting_is_a_message_not_a_traceback(ws):
    (ws / "deep.yaml").write_text("name: t\nx: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert issues(ws / "deep.yaml", ws) == [
        "deep.yaml line 2: refused: nesting deeper than 64 levels; a spec is a few levels deep: flatten the structure"
    ]


def test_binary_spec_file_is_a_message(ws):
    (ws / "bin.yaml").write_bytes(b"name: t\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert issues(ws / "bin.yaml", ws) == [
        "bin.yaml line 2: not a text file (byte 8 is not UTF-8); a spec is a UTF-8 YAML file: "
        "check that you passed the right file"
    ]
    (ws / "nul.yaml").write_bytes(b"name: t\ngoal: \x00\n")
    assert issues(ws / "nul.yaml", ws) == [
        "nul.yaml line 2: not a text file (byte 14 is NUL); a spec is a UTF-8 YAML file: "
        "check that you passed the right file"
    ]


def test_duplicate_keys_name_both_lines(ws):
    (ws / "dup.yaml").write_text(
        "name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  training:\n    lr: 1.0e-4\n    epochs: 1\n"
        "    lr: 1.0e-2\nname: u\n"
    )
    assert issues(ws / "dup.yaml", ws) == [
        "dup.yaml line 7: behavior.training.lr: duplicate key: it appears on line 5 and line 7, and YAML would "
        "silently keep only the last; remove one",
        "dup.yaml line 8: name: duplicate key: it appears on line 1 and line 8, and YAML would silently keep "
        "only the last; remove one",
    ]


def test_merge_keys_are_not_duplicates(ws):
    (ws / "merge.yaml").write_text(
        "name: t\ndefaults: &d {epochs: 1, lr: 1.0e-4}\n".replace("defaults", "x-defaults")
    )
    # an unknown top-level key is still an error, but not a duplicate-key one
    assert all("duplicate" not in m for m in issues(ws / "merge.yaml", ws))
    (ws / "ok.yaml").write_text(
        "name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  training:\n    <<: {epochs: 1, lr: 1.0e-4}\n"
        "    lr: 3.0e-4\n"
    )
    assert load_spec(ws / "ok.yaml", workspace=ws).behavior.training.lr == 3.0e-4


@pytest.mark.parametrize(("field", "value", "message"), [
    ("batch_size", "100000000000000", "Input should be less than or equal to 65536 (got 100000000000000)"),
    ("epochs", ".inf", "Input should be a finite number (got inf)"),
    ("lr", ".nan", "Input should be a finite number (got nan)"),
    ("lr", "1.0e+300", "Input should be less than or equal to 10 (got 1e+300)"),
    ("max_steps", "100000000000", "Input should be less than or equal to 10000000 (got 100000000000)"),
    ("max_seq_len", "10000000000", "Input should be less than or equal to 1048576 (got 10000000000)"),
])
def test_training_values_have_finite_upper_bounds(ws, field, value, message):
    (ws / "s.yaml").write_text(f"name: t\nbehavior:\n  data: {{train: data/train.jsonl}}\n  training: {{{field}: {value}}}\n")
    assert issues(ws / "s.yaml", ws) == [f"s.yaml line 4: behavior.training.{field}: {message}; fix the value"]


def test_adapter_rank_is_bounded(ws):
    (ws / "s.yaml").write_text("name: t\nbehavior:\n  data: {train: data/train.jsonl}\n  adapter: {method: lora, r: 100000}\n")
    assert issues(ws / "s.yaml", ws) == [
        "s.yaml line 4: behavior.adapter.r: Input should be less than or equal to 4096 (got 100000); fix the value"
    ]


# --- paths: documents, model and embedder folders -------------------------------------------------


def knowledge_spec(ws: Path, extra: str = "") -> Path:
    (ws / "s.yaml").write_text(f"name: t\nknowledge:\n  documents: data/docs\n{extra}")
    return ws / "s.yaml"


def test_symlinked_file_leaving_the_workspace_is_refused_at_validate_and_at_index(ws):
    from vectorstore.documents import DocumentError, knowledge_documents, load_documents

    spec = load_spec(knowledge_spec(ws), workspace=ws)  # fine before the link exists
    os.symlink("/etc/hostname", ws / "data" / "docs" / "host.txt")
    assert issues(ws / "s.yaml", ws) == [
        f"s.yaml line 3: knowledge.documents: knowledge.documents must not hold symlinks that leave the workspace {ws}: "
        f"{ws}/data/docs/host.txt -> /etc/hostname; copy the file into the workspace or remove the link "
        "(documents are served as citations)"
    ]
    with pytest.raises(DocumentError, match=r"host.txt is a symlink to /etc/hostname, outside .*refusing to index it"):
        knowledge_documents(spec.knowledge)  # the spec validated before the link appeared: index time checks again
    with pytest.raises(DocumentError, match="refusing to index it"):
        load_documents(ws / "data" / "docs")


def test_symlinked_folder_leaving_the_workspace_is_refused(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# secret\n")
    os.symlink(outside, ws / "data" / "docs" / "more")
    found = issues(knowledge_spec(ws), ws)
    assert len(found) == 1 and f"more -> {outside}" in found[0]


def test_symlinks_inside_the_workspace_are_followed(ws):
    from vectorstore.documents import knowledge_documents

    (ws / "shared").mkdir()
    (ws / "shared" / "b.md").write_text("# B\nother fact\n")
    os.symlink(ws / "shared" / "b.md", ws / "data" / "docs" / "b.md")
    os.symlink(ws / "shared", ws / "data" / "docs" / "sub")
    os.symlink(ws / "data" / "docs", ws / "data" / "docs" / "sub" / "loop")  # a loop is not walked
    spec = load_spec(knowledge_spec(ws), workspace=ws)
    ids = [d.doc_id for d in knowledge_documents(spec.knowledge)]
    assert ids == ["a.md", "b.md", "sub/b.md"]


def test_local_model_folder_resolves_against_the_spec_folder(ws, tmp_path):
    (ws / "models" / "m").mkdir(parents=True)
    (ws / "specs").mkdir()
    (ws / "specs" / "s.yaml").write_text(
        "name: t\nbase_model: {id: ../models/m}\nbehavior:\n  data: {train: ../data/train.jsonl}\n"
        "knowledge: {documents: ../data/docs, embedder: ../models/m}\n"
    )
    spec = load_spec(ws / "specs" / "s.yaml", workspace=ws)  # cwd is tmp_path, not the spec's folder
    assert spec.base_model.id == str(ws / "models" / "m") == spec.knowledge.embedder
    (ws / "specs" / "s.yaml").write_text("name: t\nbase_model: {id: ./nope}\nbehavior:\n  data: {train: ../data/train.jsonl}\n")
    assert issues(ws / "specs" / "s.yaml", ws) == [
        f"s.yaml line 2: base_model.id: base_model.id './nope' is written as a path but {ws}/specs/nope is not a "
        "folder; fix the path (relative paths start at the spec's folder) or use a Hugging Face id"
    ]
    (ws / "specs" / "s.yaml").write_text("name: t\nbase_model: {id: org/model}\nbehavior:\n  data: {train: ../data/train.jsonl}\n")
    assert load_spec(ws / "specs" / "s.yaml", workspace=ws).base_model.id == "org/model"  # a Hugging Face id


def test_model_and_embedder_folders_outside_the_workspace_need_the_flag(ws, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (ws / "s.yaml").write_text(
        f"name: t\nbase_model: {{id: {outside}}}\nknowledge:\n  documents: data/docs\n  embedder: {outside}\n"
    )
    found = issues(ws / "s.yaml", ws)
    assert found == [
        f"s.yaml line 2: base_model.id: base_model.id '{outside}' resolves to {outside}, outside the workspace {ws}; "
        "move it inside, pass --workspace DIR, or set `base_model.allow_outside_workspace: true` to use it from "
        "there (its weights are then recorded by hash in the manifest)",
        f"s.yaml line 5: knowledge.embedder: knowledge.embedder '{outside}' resolves to {outside}, outside the "
        f"workspace {ws}; move it inside, pass --workspace DIR, or set `knowledge.allow_outside_workspace: true` "
        "to use it from there (its weights are then recorded by hash in the manifest)",
    ]
    (ws / "s.yaml").write_text(
        f"name: t\nbase_model: {{id: {outside}, allow_outside_workspace: true}}\nknowledge:\n  documents: data/docs\n"
        f"  embedder: {outside}\n  allow_outside_workspace: true\n"
    )
    spec = load_spec(ws / "s.yaml", workspace=ws)
    assert spec.base_model.allow_outside_workspace and spec.base_model.id == str(outside)
    assert spec.model_dump()["knowledge"]["allow_outside_workspace"] is True  # the flag travels in the manifest


# --- trust_remote_code ---------------------------------------------------------------------------

CONFIG_CODE = """\
from pathlib import Path
from transformers import LlamaConfig

Path({marker!r}).write_text("custom code ran")


class MarkerConfig(LlamaConfig):
    model_type = "llama"
"""

MODELING_CODE = """\
from transformers import LlamaForCausalLM

from .configuration_marker import MarkerConfig


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig
"""


@pytest.fixture
def code_model(ws, tmp_path):
    """A tiny Llama folder whose custom config code writes a marker file when imported."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder, marker = ws / "models" / "custom", tmp_path / "code-ran.txt"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "configuration_marker.py").write_text(CONFIG_CODE.format(marker=str(marker)))
    (folder / "modeling_marker.py").write_text(MODELING_CODE)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_marker.MarkerConfig",
                       "AutoModelForCausalLM": "modeling_marker.MarkerForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, marker


def remote_spec(ws: Path, revision: str) -> Path:
    (ws / "s.yaml").write_text(
        f"name: t\nbase_model:\n  id: models/custom\n  trust_remote_code: true\n  revision: '{revision}'\n"
        "behavior:\n  data: {train: data/train.jsonl}\n"
    )
    return ws / "s.yaml"


def test_code_digest_is_the_documented_sha256sum_recipe(code_model):
    import hashlib

    folder, _ = code_model
    (folder / "sub").mkdir()
    (folder / "sub" / "helper.py").write_text("X = 1\n")
    lines = "".join(
        f"{hashlib.sha256((folder / rel).read_bytes()).hexdigest()}  {rel}\n"
        for rel in sorted(["configuration_marker.py", "modeling_marker.py", "sub/helper.py"])
    )
    assert code_digest(folder) == hashlib.sha256(lines.encode()).hexdigest()
    os.symlink(folder / "sub", folder / "linked")
    with pytest.raises(RemoteCodeError, match="symlinked folder inside a trust_remote_code model folder"):
        code_digest(folder)


def test_unpinned_local_code_is_refused_before_it_runs(ws, code_model):
    folder, marker = code_model
    digest = code_digest(folder)
    assert issues(remote_spec(ws, "not-a-real-commit"), ws) == [
        "s.yaml line 5: base_model.revision: base_model.revision is 'not-a-real-commit', but base_model.id "
        f"'{folder}' is a local folder with trust_remote_code: the pin must be the sha256 of its *.py files; "
        f"review the code, then set `revision: '{digest}'` (python -m components.spec.remote_code {folder})"
    ]
    assert issues(remote_spec(ws, "0" * 64), ws)[0].startswith(
        f"s.yaml line 5: base_model.revision: base_model.revision '{'0' * 64}' does not match the code in {folder}"
    )
    assert not marker.exists()


def test_code_changed_after_validate_is_refused_at_load_and_pinned_code_runs(ws, code_model):
    from components.models.load import load_model, resolve_model

    folder, marker = code_model
    spec = load_spec(remote_spec(ws, code_digest(folder)), workspace=ws)
    with open(folder / "modeling_marker.py", "a") as fh:
        fh.write("\nimport os  # an edit after review\n")
    with pytest.raises(RemoteCodeError, match="does not match the code in .*nothing was imported"):
        load_model(spec.base_model, resolve_model(spec.base_model), device="cpu")
    assert not marker.exists()
    spec = load_spec(remote_spec(ws, code_digest(folder)), workspace=ws)  # re-reviewed and re-pinned
    resolved = resolve_model(spec.base_model)
    assert resolved.revision == code_digest(folder)  # what the manifest records as base_model.revision
    model = load_model(spec.base_model, resolved, device="cpu")
    assert type(model).__name__ == "MarkerForCausalLM" and marker.read_text() == "custom code ran"


@pytest.mark.parametrize("revision", ["main", "v1.0", "abc1234", "A" * 40])
def test_hub_code_needs_a_full_commit(ws, revision):
    (ws / "s.yaml").write_text(
        f"name: t\nbase_model: {{id: org/model, trust_remote_code: true, revision: '{revision}'}}\n"
        "behavior:\n  data: {train: data/train.jsonl}\n"
    )
    assert issues(ws / "s.yaml", ws) == [
        f"s.yaml line 2: base_model.revision: base_model.revision is '{revision}', but trust_remote_code runs code "
        "from 'org/model': pin a full 40-character commit hash (a branch, tag or short hash can change what runs); "
        "copy it from the model page's commit history"
    ]
    (ws / "s.yaml").write_text(
        f"name: t\nbase_model: {{id: org/model, trust_remote_code: true, revision: '{'a' * 40}'}}\n"
        "behavior:\n  data: {train: data/train.jsonl}\n"
    )
    assert load_spec(ws / "s.yaml", workspace=ws).base_model.revision == "a" * 40
