"""The registry on a real S3-compatible server (moto's server, in its own process; s3fs as the client).

No boto mocks: every call below is an HTTP request to 127.0.0.1. Covers publish (temp prefix,
lock, manifest last), dedupe, aliases, the content-addressed local cache, damaged remote files,
a publisher that died mid-copy, an abandoned lock, and real processes publishing at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from components.registry import Registry, RegistryError, RegistryIntegrityError
from components.registry.remote import ObjectRegistry
from components.store.objectstore import ObjectStore
from tests.components.registry.test_registry import FILES, manifest, staging
from tests.s3server import S3Server

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.url = server.bucket("adaptflow")
        yield server


@pytest.fixture
def url(s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "home"))
    return f"{s3.url}/{uuid.uuid4().hex[:8]}/registry"  # one bucket, a fresh prefix per test


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    return staging(tmp_path / "stage", FILES)


def test_url_root_gives_the_object_registry_and_env_selects_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(Registry(url), ObjectRegistry)
    monkeypatch.setenv("ADAPTFLOW_REGISTRY", url)
    assert isinstance(Registry(), ObjectRegistry) and Registry().root == url
    assert type(Registry("file:///tmp/x")) is Registry
    assert Registry(Path(url)).root == url  # a typer Path option turns s3:// into s3:/
    assert type(Registry(Path("notaprotocol:/x"))) is Registry


def test_registry_cli_reads_the_bucket(url: str, stage: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    Registry(url).publish("demo", stage, manifest())
    result = CliRunner().invoke(app, ["registry", "list", "--root", url])
    assert result.exit_code == 0 and "demo" in result.output and "v1" in result.output, result.output


def test_publish_resolve_open_and_dedupe(url: str, stage: Path, tmp_path: Path) -> None:
    reg = Registry(url)
    v1 = reg.publish("demo", stage, manifest())
    assert (v1.number, v1.created, v1.moved_aliases) == (1, True, ("latest",))
    store = ObjectStore(url)
    assert store.children("demo") == ["aliases.json", "v1"]  # temp prefix and lock gone
    assert store.read_json("demo/v1/manifest.json")["files"] == v1.files
    again = reg.publish("demo", staging(tmp_path / "copy", FILES), manifest())
    assert (again.number, again.created) == (1, False)
    v2 = Registry(url).publish("demo", staging(tmp_path / "s2", {**FILES, "eval/report.json": "{}"}), manifest(),
                               aliases=["latest", "production"])
    assert v2.number == 2 and reg.aliases("demo") == {"latest": 2, "production": 2}
    assert reg.names() == ["demo"] and [v.number for v in reg.versions("demo")] == [1, 2]
    opened = Registry(url, cache=tmp_path / "fresh-cache").open("demo@production")
    assert opened.path.parent == tmp_path / "fresh-cache" and opened.path.name == opened.manifest["content_digest"]
    assert (opened.path / "adapter/adapter_model.safetensors").read_bytes() == FILES["adapter/adapter_model.safetensors"]
    reg.promote("demo@v1", "production")
    assert Registry(url).resolve("demo@production").number == 1


def test_open_caches_by_content_digest(url: str, stage: Path, tmp_path: Path) -> None:
    Registry(url).publish("demo", stage, manifest())
    reader = Registry(url, cache=tmp_path / "cache")
    first = reader.open("demo@latest")
    ObjectStore(url).delete("demo/v1/adapter")  # a second open must not need the remote files
    again = Registry(url, cache=tmp_path / "cache").open("demo@v1")
    assert again.path == first.path
    with pytest.raises(FileNotFoundError):
        Registry(url, cache=tmp_path / "other-cache").open("demo")


def test_damaged_remote_file_or_cached_copy_is_refused(url: str, stage: Path, tmp_path: Path) -> None:
    Registry(url).publish("demo", stage, manifest())
    ObjectStore(url).fs.pipe_file(ObjectStore(url).key("demo/v1/index/index.json"), b'{"dim": 5}')
    with pytest.raises(RegistryIntegrityError, match="index/index.json do not match the manifest"):
        Registry(url, cache=tmp_path / "c1").open("demo")
    assert not (tmp_path / "c1").exists() or not any((tmp_path / "c1").iterdir())  # nothing half-cached
    good = Registry(url).open("demo")  # the publisher's own cache was seeded from its staging folder
    (good.path / "eval/report.json").write_text("{}")
    with pytest.raises(RegistryIntegrityError, match="modified eval/report.json"):
        Registry(url).open("demo")


def test_version_without_manifest_is_invisible_and_cleaned(url: str, stage: Path, tmp_path: Path) -> None:
    store = ObjectStore(url)
    store.upload_tree(stage, "demo/v1")  # a publisher that died after the copy, before the manifest
    reg = Registry(url)
    assert reg.names() == [] and reg._numbers("demo") == []
    v = reg.publish("demo", staging(tmp_path / "s2", {"adapter/w.bin": b"other"}), manifest())
    assert v.number == 1  # removed under the lock, so its number is free again
    assert store.fs.find(store.key("demo/v1")) == [store.key("demo/v1/adapter/w.bin"), store.key("demo/v1/manifest.json")]
    Registry(url).open("demo@v1")


def test_abandoned_lock_is_broken_after_its_lease(url: str, stage: Path) -> None:
    store = ObjectStore(url)
    store.write_json("demo/.lock", {"owner": "dead-host-1", "expires": time.time() - 1})
    assert Registry(url).publish("demo", stage, manifest()).number == 1
    store.write_json("demo/.lock", {"owner": "live-host-2", "expires": time.time() + 60})
    with pytest.raises(RegistryError, match="live-host-2 holds it"):
        Registry(url, lock_timeout=0.5).set_alias("demo", "staging", 1)


WORKER = """
import json, sys, time
from pathlib import Path
from components.registry import Registry
url, stage, go = sys.argv[1:4]
reg = Registry(url)
while not Path(go).exists():
    time.sleep(0.005)
v = reg.publish("demo", Path(stage), {"metrics": {"f1": 0.5}})
print(json.dumps([v.number, v.created]))
"""


def test_concurrent_publisher_processes(url: str, tmp_path: Path) -> None:
    distinct = [staging(tmp_path / f"d{i}", {"adapter/w.bin": os.urandom(32 * 1024)}) for i in range(2)]
    twins = [staging(tmp_path / f"t{i}", {"adapter/w.bin": b"same"}) for i in range(2)]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(s), str(go)], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in distinct + twins]
    time.sleep(3)  # imports done; all four wait at the line so the publishes overlap
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(n for n, _ in results[:3]) == [1, 2, 3]
    assert results[2][0] == results[3][0] and sorted([results[2][1], results[3][1]]) == [False, True]
    reg = Registry(url)
    assert [v.number for v in reg.versions("demo")] == [1, 2, 3] and reg.aliases("demo") == {"latest": 3}
    for v in reg.versions("demo"):
        reg.open(v.ref)
    assert [e for e in ObjectStore(url).children("demo") if e.startswith(".")] == []


def test_load_system_from_the_object_store(url: str, tmp_path: Path, tokenizer, tiny_llama_dir: Path) -> None:
    from adaptflow.system import System, load_system
    from tests.adaptflow.test_system import encode, make_adapter, system_logits, task_spec

    spec = task_spec(tiny_llama_dir, {"method": "lora", "r": 2})
    make_adapter(tokenizer, spec, 7, tmp_path / "stage" / "adapter")
    Registry(url).publish("tiny", tmp_path / "stage", {"spec": spec.model_dump(mode="json")})
    system = load_system("tiny@latest", Registry(url, cache=tmp_path / "reader-cache"))
    assert [p.name for p in (tmp_path / "reader-cache").iterdir()] == [Registry(url).resolve("tiny").manifest["content_digest"]]
    local = System("tiny@v1", spec, tmp_path / "stage" / "adapter", None)
    enc = encode(tokenizer, "Where is my parcel?")
    assert torch.equal(system_logits(system, enc), system_logits(local, enc))
