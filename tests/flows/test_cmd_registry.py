"""`adaptflow registry ...` through typer's CliRunner against a real registry in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.registry import Registry
from flows.cli import app

runner = CliRunner()
GOOD = {"passed": True, "results": [
    {"metric": "answer_f1", "op": ">=", "threshold": 0.5, "value": 0.6, "passed": True, "reason": None}]}
BAD = {"passed": False, "results": [
    {"metric": "answer_f1", "op": ">=", "threshold": 0.5, "value": 0.3, "passed": False, "reason": "low"}]}


def _publish(reg: Registry, folder: Path, weights: bytes, f1: float, r: int, gates: dict) -> None:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    manifest = {
        "spec": {"name": "demo", "behavior": {"adapter": {"method": "lora", "r": r}}},
        "route": {"decision": "behavior", "reasons": ["train data given"]},
        "base_model": {"id": "tiny", "revision": None, "weights_hash": "ab12", "path": "/models/tiny"},
        "metrics": {"answer_f1": f1, "exact_match": 0.25},
        "gates": gates,
    }
    reg.publish("demo", folder, manifest, aliases=["latest", "production"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    reg = Registry(tmp_path / "reg")
    _publish(reg, tmp_path / "s1", b"w1", 0.6, 8, GOOD)
    _publish(reg, tmp_path / "s2", b"w2", 0.3, 16, BAD)  # failed gates: no alias moves
    return reg.root


def invoke(*args: str) -> object:
    return runner.invoke(app, ["registry", *args])


def test_list_shows_versions_aliases_and_key_metrics(root: Path) -> None:
    result = invoke("list", "--root", str(root))
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "VERSIONS", "ALIASES", "NEWEST", "CREATED", "METRICS"]
    assert row.startswith("demo") and " 2 " in row and "latest=v1, production=v1" in row
    assert " v2 " in row and row.endswith("answer_f1=0.3")


def test_list_empty_registry(tmp_path: Path) -> None:
    result = invoke("list", "--root", str(tmp_path / "none"))
    assert result.exit_code == 0 and "no versions in" in result.stdout


def test_show_summary_and_json(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTFLOW_REGISTRY", str(root))  # no --root: the env var picks the registry
    text = invoke("show", "demo@v2")
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("demo@v2\n")
    assert "gates:       failed: answer_f1 0.3 >= 0.5: FAIL" in text.stdout
    assert "loads from /models/tiny" in text.stdout and "- train data given" in text.stdout
    default = invoke("show", "demo")
    assert default.stdout.startswith("demo@v1  (latest, production)")
    as_json = invoke("show", "demo@v1", "--json")
    assert json.loads(as_json.stdout) == json.loads((root / "demo" / "v1" / "manifest.json").read_text())


def test_show_errors_exit_1_with_the_fix(root: Path) -> None:
    unknown = invoke("show", "nope", "--root", str(root))
    assert unknown.exit_code == 1 and "known: demo" in unknown.stderr
    (root / "demo" / "v1" / "adapter" / "adapter_model.safetensors").write_bytes(b"tampered")
    corrupt = invoke("show", "demo@v1", "--root", str(root))
    assert corrupt.exit_code == 1 and "modified adapter/adapter_model.safetensors" in corrupt.stderr
    assert invoke("show", "demo@v1", "--no-verify", "--root", str(root)).exit_code == 0


def test_promote_refuses_failed_gates_unless_forced(root: Path) -> None:
    refused = invoke("promote", "demo@v2", "production", "--root", str(root))
    assert refused.exit_code == 1
    assert "demo@v2 failed its gates (answer_f1 0.3 >= 0.5: FAIL)" in refused.stderr and "--force" in refused.stderr
    assert Registry(root).aliases("demo")["production"] == 1
    forced = invoke("promote", "demo@v2", "production", "--force", "--root", str(root))
    assert forced.exit_code == 0 and forced.stdout.strip() == "demo@production -> v2 (was v1)"
    assert invoke("promote", "demo@v1", "staging", "--root", str(root)).stdout.strip() == "demo@staging -> v1"
    assert Registry(root).aliases("demo") == {"latest": 1, "production": 2, "staging": 1}


def test_diff_text_and_json(root: Path) -> None:
    text = invoke("diff", "demo@v1", "demo@v2", "--root", str(root))
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0] == "demo@v1 -> demo@v2"
    assert "  behavior.adapter.r: 8 -> 16" in lines
    assert "  answer_f1: 0.6 -> 0.3 (-0.3)" in lines and "  exact_match: 0.25 -> 0.25 (+0)" in lines
    assert "files: 1 changed, 0 added, 0 removed, 0 unchanged" in lines and "  ~ adapter/adapter_model.safetensors" in lines
    assert any(line.startswith("  gates.passed: true -> false") for line in lines)
    as_json = json.loads(invoke("diff", "demo@v1", "demo@v2", "--json", "--root", str(root)).stdout)
    assert as_json["metrics"]["answer_f1"]["delta"] == pytest.approx(-0.3)
    missing = invoke("diff", "demo@v1", "demo@v9", "--root", str(root))
    assert missing.exit_code == 1 and "versions: v1, v2" in missing.stderr


@pytest.fixture
def read_only(root: Path, tmp_path: Path):
    """The registry behind a real read-only bind mount (root, where mounts are allowed), else made
    immutable with chattr +i, else made unwritable with chmod (for a non-root user)."""
    import os
    import subprocess

    view = tmp_path / "ro"
    view.mkdir()
    mounted = (os.geteuid() == 0
               and subprocess.run(["mount", "--bind", str(root), str(view)], capture_output=True).returncode == 0)
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode == 0:
        yield view
        subprocess.run(["umount", str(view)], check=True)
        return
    if mounted:
        subprocess.run(["umount", str(view)], check=True)
    demo = root / "demo"
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(demo)], capture_output=True).returncode != 0:
            pytest.skip("running as root where neither a read-only bind mount nor chattr +i is allowed")
        yield root
        subprocess.run(["chattr", "-i", str(demo)], check=True)
    else:
        demo.chmod(0o555)
        yield root
        demo.chmod(0o755)


def test_promote_on_a_read_only_registry_is_one_error_line(read_only: Path) -> None:
    done = invoke("promote", "demo@v1", "staging", "--root", str(read_only))
    assert done.exit_code == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot write") and "writable" in line and "--root" in line, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
