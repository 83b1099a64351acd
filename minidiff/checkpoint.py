"""Checkpoints as .npz archives of named arrays: atomic writes, no pickle.

A checkpoint holds a pytree of arrays, flattened to {"path/to/leaf": array}, and a JSON
metadata string (configs, step). Loading needs a template pytree of the same structure
(built from the saved config), so every array is checked by name, shape and dtype and a
file that does not fit is refused with a clear error. `np.load(allow_pickle=False)` means
a checkpoint can never run code.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over
the target with os.replace, which is atomic: a process killed mid-write leaves the previous
checkpoint intact and never a half-written one under the checkpoint's name.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np

_META_KEY = "__metadata__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not match what was expected."""


def _named_leaves(tree) -> dict:
    """{"params/down/0/conv/kernel": leaf, ...}: one entry per pytree leaf."""
    named = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        named[name] = leaf
    return named


def save_checkpoint(path, tree, metadata: dict) -> None:
    """Write tree's arrays and JSON-serialisable metadata to path (.npz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(leaf) for name, leaf in _named_leaves(tree).items()}
    arrays[_META_KEY] = np.array(json.dumps(metadata))  # a unicode array, not an object
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes files private; checkpoints are shared artefacts
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(path) -> dict:
    """The metadata dict of a checkpoint, without loading its arrays."""
    with _open(path) as data:
        return json.loads(str(_read(data, _META_KEY, path)))


def load_checkpoint(path, template):
    """Load the arrays of path into a pytree shaped like template; returns (tree, metadata).

    The template's leaves need only .shape and .dtype (arrays or jax.ShapeDtypeStruct).

    Raises CheckpointError naming the file and the first array that is missing or whose
    shape/dtype differs from the template's.
    """
    expected = _named_leaves(template)
    with _open(path) as data:
        metadata = json.loads(str(_read(data, _META_KEY, path)))
        names = set(data.files) - {_META_KEY}
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: arrays do not match the model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        leaves = []
        for name, want in expected.items():
            got = _read(data, name, path)
            if got.shape != tuple(want.shape) or got.dtype != want.dtype:
                raise CheckpointError(
                    f"{path}: array {name!r} has shape {got.shape} {got.dtype}, "
                    f"expected {want.shape} {want.dtype}"
                )
            leaves.append(got)
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata


def _read(data, name: str, path) -> np.ndarray:
    """One array of an open .npz; object (pickled) or damaged members raise CheckpointError."""
    try:
        return data[name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"{path}: cannot read array {name!r} ({err})") from err


class _open:
    """np.load as a context manager that turns unreadable files into CheckpointError."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint not found: {self.path}")
        try:
            self.data = np.load(self.path, allow_pickle=False)
            if _META_KEY not in self.data.files:
                raise CheckpointError(f"{self.path}: not a minidiff checkpoint (no metadata)")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(f"{self.path}: unreadable checkpoint ({err})") from err
        return self.data

    def __exit__(self, *exc):
        self.data.close()
