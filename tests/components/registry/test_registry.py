"""The registry on a real filesystem: publish, dedupe, resolve, verify, aliases, crashes, concurrency."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.registry import (
    Registry,
    RegistryError,
    RegistryIntegrityError,
    content_digest,
    manifest_base,
)

REPO = Path(__file__).resolve().parents[3]
PASSED = {"passed": True, "results": [
    {"metric": "answer_f1", "op": ">=", "threshold": 0.5, "value": 0.6, "passed": True, "reason": None}]}
FAILED = {"passed": False, "results": [
    {"metric": "answer_f1", "op": ">=", "threshold": 0.5, "value": 0.3, "passed": False, "reason": "low"}]}


def staging(root: Path, files: dict[str, bytes | str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def manifest(f1: float = 0.6, gates: dict | None = PASSED, r: int = 8, **extra) -> dict:
    out = {
        "spec": {"name": "demo", "behavior": {"adapter": {"method": "lora", "r": r}}},
        "route": {"decision": "behavior", "reasons": ["train data given"]},
        "base_model": {"id": "tiny", "revision": None, "weights_hash": "ab12", "path": "/models/tiny"},
        "metrics": {"answer_f1": f1},
        **extra,
    }
    if gates is not None:
        out["gates"] = gates
    return out


FILES = {"adapter/adapter_model.safetensors": b"\x00weights\x01", "adapter/adapter_config.json": "{}",
         "index/index.json": '{"dim": 4}', "eval/report.json": '{"answer_f1": 0.6}'}


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    return staging(tmp_path / "stage", FILES)


def snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_publish_writes_version_manifest_and_latest(reg: Registry, stage: Path) -> None:
    v = reg.publish("demo", stage, manifest())
    assert (v.number, v.ref, v.created, v.moved_aliases) == (1, "demo@v1", True, ("latest",))
    assert v.path == reg.root / "demo" / "v1"
    on_disk = json.loads((v.path / "manifest.json").read_text())
    assert on_disk == v.manifest
    assert on_disk["version"] == 1 and on_disk["name"] == "demo" and on_disk["created_at"].endswith("+00:00")
    assert on_disk["files"] == {rel: hashlib.sha256(c.encode() if isinstance(c, str) else c).hexdigest()
                                for rel, c in sorted(FILES.items())}
    assert on_disk["content_digest"] == content_digest(on_disk)
    assert (v.path / "adapter/adapter_model.safetensors").read_bytes() == b"\x00weights\x01"
    assert reg.aliases("demo") == {"latest": 1}
    assert reg.names() == ["demo"]
    assert not [p for p in (reg.root / "demo").iterdir() if p.name.startswith(".tmp-")]


def test_identical_content_returns_same_version_and_writes_nothing(reg: Registry, stage: Path, tmp_path: Path) -> None:
    first = reg.publish("demo", stage, manifest(volatile={"train_wall_s": 12.5}))
    before = snapshot(reg.root)
    copy = staging(tmp_path / "copy", FILES)  # same bytes, another folder, other volatile values
    again = reg.publish("demo", copy, manifest(volatile={"train_wall_s": 99.0, "host": "x"}))
    assert (again.number, again.created, again.moved_aliases) == (first.number, False, ())
    assert snapshot(reg.root) == before
    assert again.manifest["volatile"] == {"train_wall_s": 12.5}  # the stored version, untouched


def test_volatile_files_count_by_name_only(reg: Registry, tmp_path: Path) -> None:
    m = manifest(volatile_files=["eval/*.md"])
    a = reg.publish("demo", staging(tmp_path / "a", {**FILES, "eval/report.md": "took 3.1 s"}), m)
    b = reg.publish("demo", staging(tmp_path / "b", {**FILES, "eval/report.md": "took 4.7 s"}), m)
    c = reg.publish("demo", staging(tmp_path / "c", {**FILES, "eval/notes.md": "took 4.7 s"}), m)
    assert (a.number, b.number, b.created, c.number) == (1, 1, False, 2)
    reg.open("demo@v1")  # volatile files are still verified byte for byte


@pytest.mark.parametrize("change", ["file", "metric", "spec", "lineage"])
def test_any_real_change_makes_a_new_version(reg: Registry, stage: Path, tmp_path: Path, change: str) -> None:
    reg.publish("demo", stage, manifest())
    files = {**FILES, "adapter/adapter_model.safetensors": b"\x00weights\x02"} if change == "file" else FILES
    m = {"file": manifest(), "metric": manifest(f1=0.61), "spec": manifest(r=16),
         "lineage": manifest(git_commit="beef")}[change]
    v = reg.publish("demo", staging(tmp_path / "new", files), m)
    assert (v.number, v.created) == (2, True)
    assert reg.aliases("demo") == {"latest": 2}


def test_resolve_by_name_number_and_alias(reg: Registry, stage: Path, tmp_path: Path) -> None:
    reg.publish("demo", stage, manifest(), aliases=["latest", "production"])
    reg.publish("demo", staging(tmp_path / "s2", {"a.txt": "2"}), manifest(), aliases=["latest"])
    assert reg.resolve("demo").number == 2
    assert [reg.resolve(r).number for r in ("demo@v1", "demo@1", "demo@latest", "demo@production")] == [1, 1, 2, 1]
    assert [v.number for v in reg.versions("demo")] == [1, 2]
    assert set(reg.open("demo@production").files) == set(FILES)


def test_resolve_errors_list_what_exists(reg: Registry, stage: Path) -> None:
    reg.publish("demo", stage, manifest(), aliases=["latest", "production"])
    with pytest.raises(RegistryError, match=r"no task named 'nope' .*known: demo"):
        reg.resolve("nope@v1")
    with pytest.raises(RegistryError, match=r"demo has no version v7 \(versions: v1\)"):
        reg.resolve("demo@v7")
    with pytest.raises(RegistryError, match=r"no alias 'staging' \(aliases: latest -> v1, production -> v1\)"):
        reg.resolve("demo@staging")
    with pytest.raises(RegistryError, match="ends with '@'"):
        reg.resolve("demo@")


@pytest.mark.parametrize("damage", ["flip", "missing", "extra", "manifest"])
def test_open_verifies_every_file(reg: Registry, stage: Path, damage: str) -> None:
    v = reg.publish("demo", stage, manifest())
    target = v.path / "adapter/adapter_model.safetensors"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[3] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "missing":
        target.unlink()
    elif damage == "extra":
        (v.path / "index" / "stray.bin").write_bytes(b"x")
    else:
        m = json.loads((v.path / "manifest.json").read_text())
        m["metrics"]["answer_f1"] = 0.99
        (v.path / "manifest.json").write_text(json.dumps(m))
    expected = {"flip": "modified adapter/adapter_model.safetensors", "missing": "missing adapter/adapter_model",
                "extra": "extra index/stray.bin", "manifest": "modified manifest.json"}[damage]
    with pytest.raises(RegistryIntegrityError, match=expected):
        reg.open("demo@v1")
    reg.open("demo@v1", verify=False)  # reading without verification still works


def test_gates_decide_which_aliases_move(reg: Registry, tmp_path: Path) -> None:
    both = ["latest", "production"]
    ok = reg.publish("demo", staging(tmp_path / "1", {"f": "1"}), manifest(gates=PASSED), aliases=both)
    bad = reg.publish("demo", staging(tmp_path / "2", {"f": "2"}), manifest(gates=FAILED), aliases=both)
    crashed = reg.publish("demo", staging(tmp_path / "3", {"f": "3"}), manifest(gates=None, eval_error="OOM"),
                          aliases=both)
    ungated = reg.publish("demo", staging(tmp_path / "4", {"f": "4"}), manifest(gates=None), aliases=both)
    assert [ok.moved_aliases, bad.moved_aliases, crashed.moved_aliases, ungated.moved_aliases] == [
        ("latest", "production"), (), (), ("latest",)]
    assert reg.aliases("demo") == {"latest": 4, "production": 1}
    assert [v.gate_status for v in reg.versions("demo")] == ["passed", "failed", "failed", "unknown"]


def test_promote_refuses_failed_gates_unless_forced(reg: Registry, tmp_path: Path) -> None:
    reg.publish("demo", staging(tmp_path / "1", {"f": "1"}), manifest(gates=PASSED), aliases=["latest", "production"])
    reg.publish("demo", staging(tmp_path / "2", {"f": "2"}), manifest(gates=FAILED))
    with pytest.raises(RegistryError, match=r"demo@v2 failed its gates \(answer_f1 0.3 >= 0.5: FAIL\).*--force"):
        reg.promote("demo@v2", "production")
    assert reg.aliases("demo")["production"] == 1
    reg.promote("demo@v2", "production", force=True)
    assert reg.aliases("demo")["production"] == 2
    reg.set_alias("demo", "staging", 1)
    assert reg.resolve("demo@staging").number == 1
    with pytest.raises(RegistryError, match=r"no version v9 \(versions: v1, v2\)"):
        reg.set_alias("demo", "staging", 9)
    with pytest.raises(RegistryError, match="not the form vN"):
        reg.set_alias("demo", "v2", 1)


def test_crash_before_rename_leaves_no_version(reg: Registry, stage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def power_cut(src, dst):  # the one step between a finished temp copy and a visible version
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "rename", power_cut)
    with pytest.raises(OSError, match="simulated crash"):
        reg.publish("demo", stage, manifest())
    monkeypatch.undo()
    assert sorted(p.name for p in (reg.root / "demo").iterdir()) == [".lock"]  # temp folder cleaned up
    with pytest.raises(RegistryError, match="no task named 'demo'"):
        reg.resolve("demo")
    assert reg.publish("demo", stage, manifest()).number == 1


WORKER = """
import json, os, sys, time
from pathlib import Path
import components.registry as store
root, stage, go, mode = sys.argv[1:5]
if mode == "crash":  # die like a killed process: after the copy, before the manifest and rename
    store.write_json_durable = lambda *a: os._exit(9)
while not Path(go).exists():
    time.sleep(0.002)
v = store.Registry(root).publish("demo", Path(stage), {"metrics": {"f1": 0.5}})
print(json.dumps([v.number, v.created]))
"""


def run_workers(reg: Registry, stages: list[Path], tmp_path: Path, mode: str = "ok") -> list[subprocess.Popen]:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(reg.root), str(s), str(go), mode], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in stages]
    time.sleep(0.3)  # let them all start and wait at the line, so the publishes overlap
    go.touch()
    for p in procs:
        p.wait(timeout=60)
    return procs


def test_concurrent_processes_get_distinct_versions(reg: Registry, tmp_path: Path) -> None:
    distinct = [staging(tmp_path / f"d{i}", {"adapter/w.bin": os.urandom(64 * 1024)}) for i in range(4)]
    twins = [staging(tmp_path / f"t{i}", {"adapter/w.bin": b"same"}) for i in range(2)]
    procs = run_workers(reg, distinct + twins, tmp_path)
    results = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(n for n, _ in results[:4] + results[4:5]) == [1, 2, 3, 4, 5]
    assert results[4][0] == results[5][0] and sorted([results[4][1], results[5][1]]) == [False, True]
    assert [v.number for v in reg.versions("demo")] == [1, 2, 3, 4, 5]
    for v in reg.versions("demo"):
        reg.open(v.ref)
    assert reg.aliases("demo")["latest"] in range(1, 6)


def test_killed_publisher_leaves_only_a_hidden_temp_that_is_cleaned(reg: Registry, stage: Path, tmp_path: Path) -> None:
    (proc,) = run_workers(reg, [stage], tmp_path, mode="crash")
    assert proc.returncode == 9
    leftovers = [p.name for p in (reg.root / "demo").iterdir()]
    assert any(n.startswith(".tmp-") for n in leftovers) and not any(n.startswith("v") for n in leftovers)
    assert reg.names() == []
    v = reg.publish("demo", stage, {"metrics": {"f1": 0.5}})
    assert v.number == 1
    assert not [p for p in (reg.root / "demo").iterdir() if p.name.startswith(".tmp-")]


def test_bad_inputs_are_refused_with_the_fix(reg: Registry, stage: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="assigns at publish"):
        reg.publish("demo", stage, {"version": 3})
    with pytest.raises(RegistryError, match=r"manifest.metrics.f1 is nan.*store null"):
        reg.publish("demo", stage, {"metrics": {"f1": float("nan")}})
    with pytest.raises(RegistryError, match="Demo"):
        reg.publish("Demo", stage, {})
    with pytest.raises(RegistryError, match="does not exist"):
        reg.publish("demo", tmp_path / "nowhere", {})
    with_manifest = staging(tmp_path / "m", {"manifest.json": "{}"})
    with pytest.raises(RegistryError, match="writes manifest.json itself"):
        reg.publish("demo", with_manifest, {})
    assert reg.names() == []


def test_diff_reports_spec_paths_metric_deltas_and_files(reg: Registry, stage: Path, tmp_path: Path) -> None:
    reg.publish("demo", stage, manifest(f1=0.5, r=8))
    new_files = {**FILES, "adapter/adapter_model.safetensors": b"new", "eval/loss.png": b"png"}
    del new_files["index/index.json"]
    reg.publish("demo", staging(tmp_path / "s2", new_files), manifest(f1=0.75, r=16))
    d = reg.diff("demo@v1", "demo@v2")
    assert d["a"] == "demo@v1" and d["b"] == "demo@v2" and d["same_content"] is False
    assert d["spec"] == {"behavior.adapter.r": {"old": 8, "new": 16}}
    assert d["metrics"] == {"answer_f1": {"old": 0.5, "new": 0.75, "delta": 0.25}}
    assert d["files"] == {"added": ["eval/loss.png"], "removed": ["index/index.json"],
                          "changed": ["adapter/adapter_model.safetensors"], "unchanged": 2}
    assert d["other"] == {}


def test_manifest_base_records_lineage(tmp_path: Path) -> None:
    base = {"id": "tiny", "revision": "main", "weights_hash": "ab", "path": tmp_path / "model"}
    m = manifest_base({"name": "demo"}, base_model=base, route="both", reasons=["docs and data"],
                      data_hashes={"train": "cd"}, metrics={"answer_f1": 0.5}, gates=PASSED,
                      volatile={"wall_s": 3.0}, cwd=REPO)
    assert m["base_model"]["path"] == (tmp_path / "model").as_posix()
    assert m["route"] == {"decision": "both", "reasons": ["docs and data"]}
    assert len(m["spec_hash"]) == 64 and m["gates"] == PASSED and m["volatile"] == {"wall_s": 3.0}
    assert "pydantic" not in m["libraries"] and "torch" in m["libraries"]
    assert len(m["git_commit"]) == 40
    assert manifest_base({"name": "demo"}, base_model=base, cwd=tmp_path)["git_commit"] is None
    with pytest.raises(RegistryError, match="base_model lacks path"):
        manifest_base({"name": "demo"}, base_model={"id": "tiny", "revision": None, "weights_hash": None})


def test_hidden_temp_folders_are_never_versions(reg: Registry, stage: Path) -> None:
    reg.publish("demo", stage, manifest())
    (reg.root / "demo" / ".tmp-1-abc-otherhost" / "adapter").mkdir(parents=True)
    (reg.root / "demo" / "notes").mkdir()
    assert [v.number for v in reg.versions("demo")] == [1]
    assert reg.names() == ["demo"]


def test_root_defaults_to_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTFLOW_REGISTRY", str(tmp_path / "env-reg"))
    assert Registry().root == tmp_path / "env-reg"
    monkeypatch.delenv("ADAPTFLOW_REGISTRY")
    monkeypatch.chdir(tmp_path)
    assert Registry().root == tmp_path / "registry"
