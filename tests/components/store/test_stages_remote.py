"""The stage store shared through a real S3-compatible server: first writer of a key wins, readers verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.registry.files import RegistryIntegrityError
from components.store.objectstore import ObjectStore
from components.store.stages import DONE, StageStore
from tests.s3server import S3Server

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.integration

WORKER = """
import sys, time
from pathlib import Path
from components.store.stages import StageStore
go, payload = sys.argv[1:3]
store = StageStore()
work = store.work("train", "k1")
(work / "adapter").mkdir(exist_ok=True)
(work / "adapter" / "w.bin").write_bytes(payload.encode() * 1000)
while not Path(go).exists():
    time.sleep(0.005)
print(store.commit("train", "k1", {"record": {"payload": payload}}))
"""


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.url = server.bucket("stages") + "/shared"
        yield server


def machine(s3: S3Server, home: Path) -> dict[str, str]:
    return {**os.environ, **s3.env, "ADAPTFLOW_HOME": str(home), "ADAPTFLOW_STAGES": s3.url, "PYTHONPATH": str(REPO)}


def test_two_workers_commit_one_key_first_wins_and_a_third_machine_reuses_it(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(go), payload], env=machine(s3, tmp_path / payload),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for payload in ("a", "b")]
    time.sleep(3)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for key, value in machine(s3, tmp_path / "third").items():
        monkeypatch.setenv(key, value)
    remote = ObjectStore(s3.url)
    marker = remote.read_json(f"train/k1/{DONE}")
    assert remote.children("train/k1") == sorted([DONE, marker["prefix"]])  # the loser's upload is gone
    done = StageStore().done("train", "k1")
    assert done == tmp_path / "third" / "stages" / "train" / "k1"
    payload = marker["record"]["payload"]
    assert (done / "adapter" / "w.bin").read_bytes() == payload.encode() * 1000
    assert json.loads((done / DONE).read_text())["record"] == {"payload": payload}
    assert StageStore().done("train", "missing") is None


def test_a_damaged_remote_output_is_refused(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in machine(s3, tmp_path / "one").items():
        monkeypatch.setenv(key, value)
    store = StageStore()
    (store.work("index", "k2") / "index.faiss").write_bytes(b"vectors")
    store.commit("index", "k2", {"index": {"n": 1}})
    store.set_pointer("index", "lore", "k2")
    remote = ObjectStore(s3.url)
    prefix = remote.read_json(f"index/k2/{DONE}")["prefix"]
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "two"))
    assert StageStore().pointer("index", "lore") == tmp_path / "two" / "stages" / "index" / "k2"
    remote.fs.pipe_file(remote.key(f"index/k2/{prefix}/index.faiss"), b"tampered")
    monkeypatch.setenv("ADAPTFLOW_HOME", str(tmp_path / "three"))
    with pytest.raises(RegistryIntegrityError, match="index.faiss do not match"):
        StageStore().done("index", "k2")
    assert not (tmp_path / "three" / "stages" / "index" / "k2").exists()
