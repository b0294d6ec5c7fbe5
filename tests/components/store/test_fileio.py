"""components.store.fileio on real folders: the one recipe every published folder goes through."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from components.store.fileio import (
    atomic_write,
    atomic_write_json,
    file_problem,
    publish_verified_dir,
    sha256_file,
    stat_stamp,
    verify_dir,
)


def _fill(tmp):
    (tmp / "sub").mkdir()
    (tmp / "a.bin").write_bytes(b"alpha")
    (tmp / "sub" / "b.txt").write_text("beta")


def _record(facts):
    return {"files": {rel: f["sha256"] for rel, f in facts.items()}}


def test_publish_writes_every_file_and_the_marker_with_their_hashes(tmp_path):
    final = tmp_path / "out"
    data = publish_verified_dir(final, _fill, "marker.json", _record)
    assert data == {"files": {"a.bin": hashlib.sha256(b"alpha").hexdigest(),
                              "sub/b.txt": hashlib.sha256(b"beta").hexdigest()}}
    assert json.loads((final / "marker.json").read_text()) == data
    assert verify_dir(final, data["files"]) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left


def test_a_failing_fill_or_record_leaves_the_old_folder_and_no_temp(tmp_path):
    final = tmp_path / "out"
    publish_verified_dir(final, _fill, "marker.json", _record)

    def broken(tmp):
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_verified_dir(final, broken, "marker.json", _record)
    with pytest.raises(ValueError, match="no"):
        publish_verified_dir(final, _fill, "marker.json", lambda facts: (_ for _ in ()).throw(ValueError("no")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in final.iterdir()) == ["a.bin", "marker.json", "sub"]


def test_an_existing_folder_is_replaced_kept_or_refused(tmp_path):
    final = tmp_path / "out"
    publish_verified_dir(final, _fill, "m.json", _record)
    publish_verified_dir(final, lambda t: (t / "new").write_text("n"), "m.json", _record)
    assert sorted(p.name for p in final.iterdir()) == ["m.json", "new"]
    publish_verified_dir(final, _fill, "m.json", _record, existing="keep")
    assert sorted(p.name for p in final.iterdir()) == ["m.json", "new"]
    with pytest.raises(FileExistsError):
        publish_verified_dir(final, _fill, "m.json", _record, existing="error")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_verify_names_each_problem(tmp_path):
    folder = tmp_path / "out"
    data = publish_verified_dir(folder, _fill, "m.json", lambda facts: {"files": facts})
    files = {rel: {"sha256": f["sha256"], "bytes": f["bytes"]} for rel, f in data["files"].items()}
    (folder / "a.bin").write_bytes(b"alphA")  # same size, other bytes
    (folder / "sub" / "b.txt").write_text("be")  # truncated
    files["gone"] = {"sha256": "0" * 64, "bytes": 1}
    assert verify_dir(folder, files) == {"a.bin": "sha256", "sub/b.txt": "bytes", "gone": "missing"}


def test_a_recorded_stat_stamp_skips_the_read_and_any_write_forces_it(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    recorded = {"sha256": "not-the-hash", "stat": stat_stamp(path)}
    assert file_problem(path, recorded) is None  # untouched since recorded: trusted without reading
    path.write_bytes(b"weightz")
    os.utime(path, ns=(1, 1))
    assert file_problem(path, recorded) == "sha256"
    assert file_problem(path, sha256_file(path)) is None


def test_atomic_writes_replace_whole_files_and_clean_up_after_a_failure(tmp_path):
    path = tmp_path / "aliases.json"
    atomic_write_json(path, {"latest": 1})
    atomic_write_json(path, {"latest": 2}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "latest": 2\n}\n'

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"latest": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aliases.json"]
