"""Tests for minidiff/files.py: atomic writes, the run-directory lock, output checks, JSON."""

import errno
import json
import tempfile

import pytest

from minidiff import files


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.bin"
    with files.atomic_write(path) as f:
        f.write(b"first")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_write(path) as f:
            f.write(b"half of the second")
            raise KeyboardInterrupt  # killed mid-write
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_remove_temporaries_deletes_only_leftovers(tmp_path):
    (tmp_path / ".ckpt.npz.abc123.tmp").write_bytes(b"orphan")
    (tmp_path / "ckpt.npz").write_bytes(b"kept")
    assert [p.name for p in files.remove_temporaries(tmp_path)] == [".ckpt.npz.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_a_locked_run_directory_is_refused_until_released(tmp_path):
    first = files.RunLock(tmp_path / "run").acquire()
    with pytest.raises(files.RunDirectoryLocked, match=r"run is in use by another training process \(pid \d+\)"):
        files.RunLock(tmp_path / "run").acquire()
    first.release()
    with files.RunLock(tmp_path / "run"):  # free again
        pass


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "No space left on device"),
                                           (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_is_reported_before_the_work(tmp_path, monkeypatch, code, message):
    import os

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(files.OutputPathError, match=rf"--out .*s\.png cannot be written: {message}"):
        files.check_output_path(tmp_path / "s.png", what="--out")


def test_json_has_null_where_python_has_nan(tmp_path):
    path = files.write_json(tmp_path / "r.json", {"accuracy": 1.0, "diversity": float("nan"),
                                                   "rows": [float("inf"), 2]})
    assert json.loads(path.read_text()) == {"accuracy": 1.0, "diversity": None, "rows": [None, 2]}
