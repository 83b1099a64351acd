import numpy as np
import pytest

from minidiff import checkpoint

TREE = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)},
        "step": np.array(7, np.int32)}


def test_round_trip_restores_every_array_and_the_metadata(tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, TREE, {"step": 7, "note": "hi"})
    template = {"params": {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)},
                "step": np.array(0, np.int32)}
    tree, meta = checkpoint.load_checkpoint(path, template)
    np.testing.assert_array_equal(tree["params"]["w"], TREE["params"]["w"])
    np.testing.assert_array_equal(tree["params"]["b"], TREE["params"]["b"])
    assert int(tree["step"]) == 7 and meta == {"step": 7, "note": "hi"}
    assert checkpoint.read_metadata(path)["note"] == "hi"


def test_shape_mismatch_names_the_array(tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, TREE, {})
    template = {"params": {"w": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)},
                "step": np.array(0, np.int32)}
    with pytest.raises(checkpoint.CheckpointError, match=r"params/w.*\(2, 3\).*expected \(3, 3\)"):
        checkpoint.load_checkpoint(path, template)
    with pytest.raises(checkpoint.CheckpointError, match="missing"):
        checkpoint.load_checkpoint(path, {"other": np.zeros(1)})


def test_missing_truncated_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.read_metadata(tmp_path / "nope.npz")
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, TREE, {})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(checkpoint.CheckpointError, match="truncated.npz"):
        checkpoint.load_checkpoint(truncated, TREE)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(2))
    with pytest.raises(checkpoint.CheckpointError, match="not a minidiff checkpoint"):
        checkpoint.read_metadata(foreign)


def test_pickled_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"__metadata__": np.array("{}"), "step": np.array([object()], dtype=object)})
    with pytest.raises(checkpoint.CheckpointError, match="step"):
        checkpoint.load_checkpoint(path, {"step": np.zeros(1, np.int32)})


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, TREE, {"step": 7})
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, TREE, {"step": 8})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temporary left behind


def test_an_array_is_checked_from_its_header_before_it_is_decompressed(tmp_path):
    """A small file that declares a 1.6 GB array is refused without inflating it."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (20000, 20000)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        meta = io.BytesIO()
        np.save(meta, np.array("{}"))
        z.writestr("__metadata__.npy", meta.getvalue())
        z.writestr("w.npy", header.getvalue() + b"\0" * 1024)  # far less data than declared
    with pytest.raises(checkpoint.CheckpointError, match=r"bomb\.npz: array 'w' has shape \(20000, 20000\) float32, expected \(2, 3\)"):
        checkpoint.load_checkpoint(path, {"w": np.zeros((2, 3), np.float32)})


def test_non_finite_weights_are_refused(tmp_path):
    path = tmp_path / "ckpt.npz"
    tree = {"w": np.array([1.0, np.inf], np.float32)}
    checkpoint.save_checkpoint(path, tree, {})
    with pytest.raises(checkpoint.CheckpointError, match=r"ckpt\.npz: array 'w' holds 1 NaN or infinite values"):
        checkpoint.load_checkpoint(path, {"w": np.zeros(2, np.float32)})
