"""Writing files safely: atomic writes, run-directory locks, output paths checked up front, and
a Ctrl-C that leaves no half-written file.

    with atomic_write(path) as f:      # a temporary file beside path, fsynced, then os.replace'd
        f.write(data)                  # onto path: a crash leaves the old file or the new, never half
    with RunLock(run_dir):             # an OS lock that dies with its process (kill -9 included)
        ...                            # a second process on the same run directory is refused
    check_output_path(path, inputs={"--ckpt": ckpt})  # before the work, not after: is a directory,
                                       # a file as its parent, an input, a model file, not writable,
                                       # no space -> OutputPathError
    write_json(path, result)           # valid JSON (NaN -> null), written atomically
    run_interruptibly(work)            # work() in a thread; Ctrl-C stops it within a fraction of a
                                       # second, removing every temporary file (KeyboardInterrupt)

Temporary files are named `.NAME.XXXXXXXX.tmp` beside their target; `remove_temporaries` deletes
the ones a killed process left behind (call it only while holding the directory's lock).

No write replaces a minidiff model file (an .npz archive with METADATA_KEY) unless it says it
writes models (`atomic_write(path, replaces_models=True)`, which only checkpoint.py passes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import threading
import zipfile
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
METADATA_KEY = "__metadata__"  # the JSON member every minidiff checkpoint and model file holds

_pending: set[str] = set()  # temporary files of the atomic writes under way
_pending_lock = threading.Lock()  # held while a temporary file is made, renamed or discarded
_stopped = threading.Event()  # set by a Ctrl-C: no atomic write completes after it


class OutputPathError(ValueError):
    """An output path cannot be written; the message names it and the reason."""


class RunDirectoryLocked(ValueError):
    """Another live process holds the run directory's lock."""


def is_model_file(path) -> bool:
    """Whether path is a minidiff checkpoint or model file: an .npz archive holding METADATA_KEY."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{METADATA_KEY}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):  # missing, a directory, or not a zip archive
        return False


@contextlib.contextmanager
def atomic_write(path, mode: int = 0o644, replaces_models: bool = False):
    """Yield a binary file open beside `path`; on success flush, fsync and os.replace it onto
    `path` (atomic on POSIX). On any error the temporary file is removed and `path` is untouched.

    A `path` that is a minidiff model file is refused (OutputPathError) unless replaces_models;
    after a Ctrl-C (see run_interruptibly) nothing is written (KeyboardInterrupt)."""
    path = Path(path)
    if not replaces_models and is_model_file(path):
        raise OutputPathError(f"{path} is a minidiff model file; only training overwrites models")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _pending_lock:
        if _stopped.is_set():
            raise KeyboardInterrupt
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
        _pending.add(temporary)
    try:
        os.chmod(temporary, mode)  # mkstemp makes files private; these are shared artefacts
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        with _pending_lock:  # a Ctrl-C either comes after this rename or prevents it
            if _stopped.is_set():
                raise KeyboardInterrupt
            os.replace(temporary, path)
            _pending.discard(temporary)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        with _pending_lock:
            _pending.discard(temporary)
        raise


def run_interruptibly(work):
    """work()'s result, computed in a worker thread while the main thread waits for Ctrl-C.

    A jitted JAX call holds the main thread inside C++ for as long as it runs, where Python
    cannot raise KeyboardInterrupt; here the main thread only waits, so SIGINT reaches it within
    0.2 s. It then stops every atomic write (none completes after it), deletes their temporary
    files and raises KeyboardInterrupt; the worker, a daemon thread, dies with the process (the
    caller exits: see arguments.run_command). An exception of work() is raised here as it is."""
    outcome = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the main thread, which raises it
            outcome["error"] = err

    worker = threading.Thread(target=target, name="minidiff-work", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        stop_writes()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def stop_writes() -> None:
    """Let no atomic write complete from now on, and delete the temporary files of those under way."""
    with _pending_lock:
        _stopped.set()
        for temporary in _pending:
            Path(temporary).unlink(missing_ok=True)
        _pending.clear()


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
        check_output_folder(self.path.parent, what="run directory")
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


def same_file(a, b) -> bool:
    """Whether paths a and b name the same file (hard links and symbolic links included)."""
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b) if a.exists() and b.exists() else a.resolve() == b.resolve()
    except OSError:
        return False


def check_output_path(path, *, suffixes: tuple[str, ...] = (), create_parent: bool = True,
                      what: str = "output", inputs: dict | None = None, writes_models: bool = False) -> Path:
    """Check, before any work, that a file can be written at `path`; returns it as a Path.

    Refused with OutputPathError (naming the path and the reason): a wrong suffix, a path that
    is a directory, one of `inputs` ({flag: path}; None values are skipped), a minidiff model
    file (unless writes_models), a parent that is a file or cannot be created, a folder that
    refuses a small test write (read-only, full disk). The parent folder is created if create_parent."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise OutputPathError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a directory; give a file name")
    for flag, given in (inputs or {}).items():
        if given is not None and same_file(path, given):
            raise OutputPathError(f"{what} {path} is the input {flag} {given}; give the output another name")
    if not writes_models and is_model_file(path):
        raise OutputPathError(f"{what} {path} is a minidiff model file, which this command never overwrites; "
                              "give the output another name")
    _check_folder(path.parent, create_parent, f"{what} {path}")
    return path


def check_output_folder(folder, what: str = "output folder") -> Path:
    """Check, before any work, that files can be written in `folder` (created if missing):
    OutputPathError naming it if it is a file, lies under a file, or refuses a test write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{what} {folder} is a file, not a folder")
    _check_folder(folder, True, f"{what} {folder}")
    return folder


def _check_folder(folder: Path, create: bool, shown: str) -> None:
    """Refuse (naming `shown`) a folder under a file, or one that refuses a 64 KB test write."""
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                raise OutputPathError(f"{shown}: {above} is a file, not a folder")
            break
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.", suffix=TEMPORARY_SUFFIX) as probe:
            probe.write(b"\0" * 65536)  # a full disk refuses this; a read-only folder refuses the open
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OutputPathError(f"{shown} cannot be written: {err.strerror or err}") from err


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
