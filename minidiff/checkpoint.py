"""Checkpoints as .npz archives of named arrays: atomic writes, no pickle.

A checkpoint holds a pytree of arrays, flattened to {"path/to/leaf": array}, and a JSON
metadata string (configs, step). Loading needs a template pytree of the same structure
(built from the saved config), so every array is checked by name, shape and dtype (from its
header, before anything is decompressed) and for non-finite values, and a file that does not
fit is refused with a CheckpointError naming it. `np.load(allow_pickle=False)` means a
checkpoint can never run code.

Writes go through files.atomic_write: a temporary file in the same folder, flushed to disk,
then renamed over the target with os.replace, which is atomic: a process killed mid-write
leaves the previous checkpoint intact and never a half-written one under its name.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np

from minidiff.files import METADATA_KEY as _META_KEY
from minidiff.files import atomic_write

MAX_METADATA_CHARS = 1_000_000  # a JSON config is a few kB; refuse to decompress more


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
    arrays = {name: np.asarray(leaf) for name, leaf in _named_leaves(tree).items()}
    arrays[_META_KEY] = np.array(json.dumps(metadata, allow_nan=False))  # a unicode array, not an object
    with atomic_write(path, replaces_models=True) as f:
        np.savez_compressed(f, **arrays)


def read_metadata(path) -> dict:
    """The metadata dict of a checkpoint, without loading its arrays."""
    with _open(path) as data:
        return _metadata(data, path)


def load_checkpoint(path, template):
    """Load the arrays of path into a pytree shaped like template; returns (tree, metadata).

    The template's leaves need only .shape and .dtype (arrays or jax.ShapeDtypeStruct).

    Raises CheckpointError naming the file and the first array that is missing, whose
    shape/dtype differs from the template's (checked from the header, before decompressing),
    or that holds NaN or infinite values.
    """
    expected = _named_leaves(template)
    with _open(path) as data:
        metadata = _metadata(data, path)
        names = set(data.files) - {_META_KEY}
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: arrays do not match the model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        leaves = []
        for name, want in expected.items():
            shape, dtype = _header(data, name, path)
            if shape != tuple(want.shape) or dtype != want.dtype:
                raise CheckpointError(
                    f"{path}: array {name!r} has shape {shape} {dtype}, "
                    f"expected {tuple(want.shape)} {want.dtype}"
                )
            got = _read(data, name, path)
            if np.issubdtype(got.dtype, np.inexact) and not np.all(np.isfinite(got)):
                raise CheckpointError(f"{path}: array {name!r} holds {np.sum(~np.isfinite(got))} "
                                      "NaN or infinite values; the file is not usable")
            leaves.append(got)
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata


def _header(data, name: str, path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one member of an open .npz, read from its .npy header alone."""
    try:
        with data.zip.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"{path}: cannot read the header of array {name!r} ({err})") from err
    if dtype.hasobject:
        raise CheckpointError(f"{path}: array {name!r} holds pickled Python objects, which minidiff never loads")
    return tuple(shape), dtype


def _metadata(data, path) -> dict:
    shape, dtype = _header(data, _META_KEY, path)
    if shape != () or dtype.kind != "U" or dtype.itemsize // 4 > MAX_METADATA_CHARS:
        raise CheckpointError(f"{path}: its metadata is not a JSON string of at most "
                              f"{MAX_METADATA_CHARS} characters (found {dtype} of shape {shape})")
    text = str(_read(data, _META_KEY, path))
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: its metadata is a JSON {type(metadata).__name__}, not an object")
    return metadata


def _read(data, name: str, path) -> np.ndarray:
    """One array of an open .npz; object (pickled) or damaged members raise CheckpointError."""
    try:
        return data[name]
    except ValueError as err:
        if "pickle" in str(err):
            raise CheckpointError(f"{path}: array {name!r} holds pickled Python objects, "
                                  "which minidiff never loads") from None
        raise CheckpointError(f"{path}: cannot read array {name!r} ({err})") from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"{path}: cannot read array {name!r} ({err})") from err


class _open:
    """np.load as a context manager that turns unreadable files into CheckpointError."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        if self.path.is_dir():
            inside = self.path / "model.npz"  # what a training run directory holds
            hint = f"; the model file inside it is {inside}" if inside.is_file() else ""
            raise CheckpointError(f"{self.path} is a directory, not a model file{hint}")
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint not found: {self.path}")
        if not zipfile.is_zipfile(self.path):  # np.load would try to unpickle anything else
            raise CheckpointError(f"{self.path}: not a minidiff checkpoint (not an .npz archive)")
        try:
            self.data = np.load(self.path, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise CheckpointError(f"{self.path}: unreadable checkpoint ({err})") from err
        if _META_KEY not in self.data.files:
            self.data.close()
            raise CheckpointError(f"{self.path}: not a minidiff checkpoint (no metadata)")
        return self.data

    def __exit__(self, *exc):
        self.data.close()
