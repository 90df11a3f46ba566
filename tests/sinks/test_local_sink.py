"""Local sink: atomic visibility, fsync'd rename, idempotent re-finalize, permissions, errors."""

from __future__ import annotations

import os
import stat

import orjson
import pytest

from stream_app.sinks.base import FileConflict, NotOwner, SinkError
from stream_app.sinks.local import LocalSink


def test_write_is_atomic_and_leaves_no_tmp(tmp_path):
    sink = LocalSink(tmp_path, 0o640)
    result = sink.write("A.txt", lambda: [b"hello\n"])
    assert (tmp_path / "A.txt").read_bytes() == b"hello\n"
    assert not list(tmp_path.glob("*.tmp"))
    assert not result.already_present and result.bytes == 6
    assert stat.S_IMODE(os.stat(tmp_path / "A.txt").st_mode) == 0o640


def test_rewrite_of_identical_file_is_a_no_op_and_conflicts_are_refused(tmp_path):
    sink = LocalSink(tmp_path)
    sink.write("A.txt", lambda: [b"one"])
    assert sink.write("A.txt", lambda: [b"one"]).already_present
    with pytest.raises(FileConflict):
        sink.write("A.txt", lambda: [b"two"])
    assert (tmp_path / "A.txt").read_bytes() == b"one"
    assert not list(tmp_path.glob("*.tmp"))


def test_failure_is_classified_and_leaves_nothing_visible(tmp_path):
    sink = LocalSink(tmp_path / "gone")
    with pytest.raises(SinkError) as err:
        sink.write("A.txt", lambda: [b"x"])
    assert err.value.error_class == "ENOENT" and err.value.transient


def test_a_partial_tmp_from_a_crash_is_overwritten(tmp_path):
    (tmp_path / "A.txt.tmp").write_bytes(b"partial garbage that is longer")
    LocalSink(tmp_path).write("A.txt", lambda: [b"full"])
    assert (tmp_path / "A.txt").read_bytes() == b"full"
    assert not (tmp_path / "A.txt.tmp").exists()


def test_manifest_lines_are_written_once_per_file(tmp_path):
    sink = LocalSink(tmp_path)
    sink.write("A.txt", lambda: [b"x"])
    sink.record_manifest("A.txt", {"name": "A.txt", "records": 1})
    sink.record_manifest("A.txt", {"name": "A.txt", "records": 1})
    LocalSink(tmp_path).record_manifest("A.txt", {"name": "A.txt", "records": 1})  # after a restart
    lines = (tmp_path / "manifest.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["name"] for line in lines] == ["A.txt"]


def test_check_writable(tmp_path):
    LocalSink(tmp_path).check_writable()
    with pytest.raises(SinkError):
        LocalSink(tmp_path / "nope").check_writable()


def test_discard_partials_removes_tmp_files_only(tmp_path):
    (tmp_path / "A.txt.tmp").write_bytes(b"half")
    (tmp_path / "B.txt").write_bytes(b"done")
    assert LocalSink(tmp_path).discard_partials() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.txt"]


def test_a_writer_that_lost_its_partition_puts_nothing_in_place(tmp_path):
    sink = LocalSink(tmp_path)
    checked = []

    def not_owner() -> None:
        checked.append((tmp_path / "A.txt.tmp").exists())  # written, not yet renamed
        raise NotOwner("A.txt", "partition in/0 is no longer assigned to this worker")

    with pytest.raises(NotOwner) as err:
        sink.write("A.txt", lambda: [b"x"], not_owner)
    assert checked == [True] and err.value.error_class == "PARTITION_REVOKED" and err.value.transient
    assert list(tmp_path.iterdir()) == []
