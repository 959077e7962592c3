"""Specifications of ratkit.files, the one writer every file of ratkit goes through: a reader or a
second writer of the same path sees an old file or a new one, never half of one, and no two
writers ever share a temporary file."""

import json
import os
import threading

import pytest
import torch

from ratkit import files


def test_atomic_write_bytes_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    files.atomic_write_bytes(path, b"old")
    files.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_the_file_gets_the_usual_permissions_not_those_of_a_temporary_file(tmp_path):
    umask = os.umask(0o022)
    try:
        files.atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells a directory's descriptor by /proc")
def test_the_data_and_the_rename_are_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(f"/proc/self/fd/{fd}")), real(fd)))
    files.atomic_write_bytes(tmp_path / "f", b"x")
    assert synced == [False, True]  # the file, then its directory


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f"
    files.atomic_write_bytes(path, b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_two_writers_of_one_path_never_share_a_temporary_nor_leave_half_a_file(tmp_path, monkeypatch):
    """Two threads write large, different records to one path while a third reads it: every read is
    one record whole, each write went through a temporary of its own, none is left behind."""
    path = tmp_path / "record.json"
    payloads = ["A" * (1 << 20), "B" * (1 << 20)]
    files.write_json_atomic(path, payloads[0])
    temporaries, lock = [], threading.Lock()
    real_replace = os.replace

    def recording_replace(src, dst):
        with lock:
            temporaries.append(str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    done = threading.Event()
    seen = set()

    def read():
        while not done.is_set():
            seen.add(path.read_bytes())

    def write(payload):
        for _ in range(20):
            files.write_json_atomic(path, payload)

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert seen and seen <= {(json.dumps(p, indent=1) + "\n").encode() for p in payloads}
    assert len(temporaries) == 40 == len(set(temporaries))
    assert os.listdir(tmp_path) == ["record.json"]


def test_write_json_atomic_writes_indented_json_with_a_final_newline(tmp_path):
    files.write_json_atomic(tmp_path / "a" / "r.json", {"x": [1, 2]})
    text = (tmp_path / "a" / "r.json").read_text()
    assert json.loads(text) == {"x": [1, 2]} and text == json.dumps({"x": [1, 2]}, indent=1) + "\n"


def test_tensors_sha256_sees_names_dtypes_shapes_and_values_not_the_order():
    t = torch.arange(6, dtype=torch.float32)
    digest = files.tensors_sha256({"a": t, "b": t + 1})
    assert digest == files.tensors_sha256({"b": t + 1, "a": t.clone()})
    assert digest != files.tensors_sha256({"a": t, "c": t + 1})
    assert digest != files.tensors_sha256({"a": t.double(), "b": t + 1})
    assert digest != files.tensors_sha256({"a": t.reshape(2, 3), "b": t + 1})
    assert digest != files.tensors_sha256({"a": t, "b": t + 2})


def test_the_old_homes_give_the_same_functions():
    from ratkit.checkpoints import atomic_write_bytes, tensors_sha256
    from ratkit.study import write_json_atomic
    from ratkit.study.records import write_json_atomic as from_records

    assert atomic_write_bytes is files.atomic_write_bytes and tensors_sha256 is files.tensors_sha256
    assert write_json_atomic is from_records is files.write_json_atomic
