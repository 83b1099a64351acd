"""Writing files safely: atomic writes, run-directory locks, and output paths checked up front.

    with atomic_write(path) as f:      # a temporary file beside path, fsynced, then os.replace'd
        f.write(data)                  # onto path: a crash leaves the old file or the new, never half
    with RunLock(run_dir):             # an OS lock that dies with its process (kill -9 included)
        ...                            # a second process on the same run directory is refused
    check_output_path(path)            # before the work, not after: is a directory, a file as its
                                       # parent, not writable, no space -> OutputPathError
    write_json(path, result)           # valid JSON (NaN -> null), written atomically

Temporary files are named `.NAME.XXXXXXXX.tmp` beside their target; `remove_temporaries` deletes
the ones a killed process left behind (call it only while holding the directory's lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


class OutputPathError(ValueError):
    """An output path cannot be written; the message names it and the reason."""


class RunDirectoryLocked(ValueError):
    """Another live process holds the run directory's lock."""


@contextlib.contextmanager
def atomic_write(path, mode: int = 0o644):
    """Yield a binary file open beside `path`; on success flush, fsync and os.replace it onto
    `path` (atomic on POSIX). On any error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        os.chmod(temporary, mode)  # mkstemp makes files private; these are shared artefacts
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporaries(folder) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in folder (not recursive)."""
    removed = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunLock:
    """An exclusive flock on RUN_DIR/.lock, held until release() or the process ends.

    flock locks belong to the open file and vanish when the process dies, so a kill -9 never
    leaves a stale lock behind. The lock file records the holder's pid, for the error message."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def acquire(self) -> "RunLock":
        check_output_path(self.path.parent / ".write-test", create_parent=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            self.file = None
            raise RunDirectoryLocked(f"{self.path.parent} is in use by another training process (pid {holder}); "
                                     "wait for it to finish, stop it, or use another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_output_path(path, *, suffixes: tuple[str, ...] = (), create_parent: bool = True,
                      what: str = "output") -> Path:
    """Check, before any work, that a file can be written at `path`; returns it as a Path.

    Refused with OutputPathError (naming the path and the reason): a wrong suffix, a path that
    is a directory, a parent that is a file or cannot be created, a folder that refuses a small
    test write (read-only, full disk). The parent folder is created if create_parent."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise OutputPathError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a directory; give a file name")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputPathError(f"{what} {path}: {folder} is a file, not a folder")
            break
    try:
        if create_parent:
            parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test.", suffix=TEMPORARY_SUFFIX) as probe:
            probe.write(b"\0" * 65536)  # a full disk refuses this; a read-only folder refuses the open
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OutputPathError(f"{what} {path} cannot be written: {err.strerror or err}") from err
    return path


def json_ready(value):
    """value with every NaN or infinite float replaced by None: JSON has no NaN, and a reader
    should see "no value" (e.g. the diversity of one sample per class), not invalid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json(path, value) -> Path:
    """Write value as indented, valid JSON (see json_ready), atomically; returns the path."""
    with atomic_write(path) as f:
        f.write((json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n").encode())
    return Path(path)
