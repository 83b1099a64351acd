"""Tests for minidiff/data.py: real local MNIST / Fashion-MNIST files, and small files in the
real formats (IDX, CIFAR-10 binary) written here to exercise parsing, downloads and errors.
No test touches the network: downloads use file:// URLs."""

import gzip
import hashlib
import io
import os
import re
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from minidiff import data

DATA_DIR = Path(os.environ.get("MINIDIFF_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data")
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def needs(*folders):
    missing = [f for f in folders if not (DATA_DIR / f).is_dir()]
    if missing:
        pytest.skip(f"local data {missing} not found under {DATA_DIR}")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty download cache, no MINIDIFF_DATA_DIR: only what a test passes or serves is found."""
    monkeypatch.delenv("MINIDIFF_DATA_DIR", raising=False)
    monkeypatch.setenv("MINIDIFF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mnist_test():
    needs("mnist")
    return data.load_split("mnist", "test", data_dir=DATA_DIR, download=False)


@pytest.fixture(scope="module")
def fashion():
    """Fashion-MNIST decompressed once: load_train_and_heldout's result, the test split, warnings."""
    needs("fashion-mnist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, held = data.load_train_and_heldout("fashion_mnist", data_dir=DATA_DIR, download=False)
    test = data.load_split("fashion-mnist", "test", data_dir=DATA_DIR, download=False)
    return train, held, test, caught


def idx_bytes(array):
    """Encode a uint8 array in the IDX format (the inverse of data.parse_idx)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_pair(folder, images, labels, split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    image_file, label_file = data._IDX_FILES[split]
    (folder / image_file).write_bytes(gzip.compress(idx_bytes(images)))
    (folder / label_file).write_bytes(gzip.compress(idx_bytes(labels)))
    return folder / image_file, folder / label_file


def small_idx(n=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), np.uint8), np.arange(n, dtype=np.uint8)


def cifar_records(n, seed):
    """n CIFAR-10 records: (file bytes, images as stored (n, 3, 32, 32), labels (n,))."""
    rng = np.random.default_rng(seed)
    images_chw = rng.integers(0, 256, (n, 3, 32, 32), np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    records = np.concatenate([labels[:, None], images_chw.reshape(n, -1)], axis=1)  # (n, 3073)
    return records.tobytes(), images_chw, labels


@pytest.fixture
def cifar_dir(tmp_path):
    """5 train batches of 7 records and a test batch of 7, in tmp_path/cifar-10-batches-bin."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = {"train": ([], []), "test": ([], [])}
    for seed, split in enumerate(["train"] * 5 + ["test"]):
        raw, images_chw, labels = cifar_records(7, seed)
        file = data._CIFAR_FILES[split][seed % 5] if split == "train" else "test_batch.bin"
        (folder / file).write_bytes(raw)
        expected[split][0].append(images_chw)
        expected[split][1].append(labels)
    return folder, {split: (np.concatenate(i), np.concatenate(l)) for split, (i, l) in expected.items()}


# ----------------------------------------------------------------------------- real data

def test_mnist_test_split(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert images.min() == 0 and images.max() == 255


def test_fashion_mnist_splits(fashion):
    (train_images, train_labels), _, (test_images, test_labels), _ = fashion
    assert train_images.shape == (60000, 28, 28, 1) and test_images.shape == (10000, 28, 28, 1)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10


def test_heldout_with_train_split_available(fashion):
    (train_images, _), (held_images, held_labels), (test_images, test_labels), caught = fashion
    assert caught == []
    assert len(train_images) == 60000
    np.testing.assert_array_equal(held_images, test_images[-1000:])
    np.testing.assert_array_equal(held_labels, test_labels[-1000:])


@pytest.mark.parametrize("download", [False, True])
def test_heldout_falls_back_offline_mnist(mnist_test, isolated, tmp_path, monkeypatch, download):
    needs("mnist")
    # download=True must fail over to the fallback too: every mirror is unreachable.
    monkeypatch.setitem(data.MIRRORS, "mnist", ((tmp_path / "no-such-mirror").as_uri(),))
    with pytest.warns(UserWarning, match=r"train split unavailable.*test\[:-1000\]"):
        (train_images, train_labels), (held_images, held_labels) = data.load_train_and_heldout(
            "mnist", data_dir=DATA_DIR, download=download)
    test_images, test_labels = mnist_test
    assert train_images.shape == (9000, 28, 28, 1) and held_images.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(train_images, test_images[:9000])
    np.testing.assert_array_equal(train_labels, test_labels[:9000])
    np.testing.assert_array_equal(held_images, test_images[-1000:])
    np.testing.assert_array_equal(held_labels, test_labels[-1000:])
    assert not {im.tobytes() for im in train_images} & {im.tobytes() for im in held_images}
    assert not list(isolated.rglob("*.gz")), "a failed download left files behind"


def test_heldout_size_is_checked(mnist_test):
    with pytest.raises(ValueError, match="heldout"):
        data.load_train_and_heldout("mnist", data_dir=DATA_DIR, download=False, heldout=0)


def test_checksum_mismatch_on_real_file_names_it(tmp_path, isolated):
    needs("mnist")
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes((DATA_DIR / "mnist/t10k-images-idx3-ubyte.gz").read_bytes())
    labels = data.parse_idx(gzip.decompress((DATA_DIR / "mnist/t10k-labels-idx1-ubyte.gz").read_bytes()), "x").copy()
    labels[0] = (labels[0] + 1) % 10  # one wrong label: structure fine, digest not
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(data.DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: checksum mismatch"):
        data.load_split("mnist", "test", data_dir=tmp_path, download=False)
    _, loaded = data.load_split("mnist", "test", data_dir=tmp_path, download=False, verify=False)
    np.testing.assert_array_equal(loaded, labels)


# ----------------------------------------------------------------------------- helpers

def test_model_range_round_trip():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = data.to_model_range(pixels)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 127.5 - 1, atol=1e-7)
    np.testing.assert_array_equal(data.from_model_range(x), pixels)
    np.testing.assert_array_equal(data.from_model_range(np.array([-3.0, 0.0, 3.0])), [0, 128, 255])
    with pytest.raises(TypeError):
        data.to_model_range(x)


def test_names_shapes_and_classes(mnist_test):
    for name in data.DATASETS:
        assert len(data.CLASS_NAMES[name]) == data.num_classes(name) == 10
    assert data.image_shape("fashion-mnist") == (28, 28, 1) == mnist_test[0].shape[1:]
    assert data.image_shape("cifar10") == (32, 32, 3)
    assert data.CLASS_NAMES["fashion_mnist"][9] == "Ankle boot" and data.CLASS_NAMES["cifar10"][0] == "airplane"


def test_unknown_name_split_and_missing_files(tmp_path, isolated):
    with pytest.raises(ValueError, match="cifar10"):
        data.load_split("imagenet", "test")
    with pytest.raises(ValueError, match="split"):
        data.load_split("mnist", "validation")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "cifar-10-batches-bin"))):
        data.load_split("cifar10", "test", data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------- CIFAR-10

def test_cifar_loads_chw_records_as_nhwc(cifar_dir):
    folder, expected = cifar_dir
    for split, n in [("train", 35), ("test", 7)]:
        images, labels = data.load_split("cifar10", split, data_dir=folder.parent, download=False, verify=False)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
        images_chw, true_labels = expected[split]
        np.testing.assert_array_equal(images, images_chw.transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(labels, true_labels)
    # pixel (row 4, col 9) of channel 2 of image 3 sits at record byte 1 + 2*1024 + 4*32 + 9
    raw = (folder / "test_batch.bin").read_bytes()
    assert images[3, 4, 9, 2] == raw[3 * 3073 + 1 + 2 * 1024 + 4 * 32 + 9]
    with pytest.raises(data.DatasetError, match="expected 10000 records, got 7"):
        data.load_split("cifar10", "test", data_dir=folder.parent, download=False)


def test_cifar_download_and_extract(cifar_dir, tmp_path, isolated, monkeypatch):
    folder, expected = cifar_dir
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, arcname=f"cifar-10-batches-bin/{file.name}")
        evil = tarfile.TarInfo("../escaped.txt")  # must never be extracted
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    monkeypatch.setitem(data.MIRRORS, "cifar10", ((tmp_path / "down").as_uri(), mirror.as_uri()))

    monkeypatch.setitem(data.ARCHIVE_MD5, ("cifar10", "cifar-10-binary.tar.gz"), "0" * 32)
    with pytest.raises(data.DatasetError, match=r"cifar-10-binary\.tar\.gz.*checksum mismatch"):
        data.load_split("cifar10", "train", verify=False)
    assert not isolated.exists() or not any(isolated.rglob("*")), "a failed download left files behind"

    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.ARCHIVE_MD5, ("cifar10", "cifar-10-binary.tar.gz"), md5)
    images, labels = data.load_split("cifar10", "train", verify=False)
    np.testing.assert_array_equal(images, expected["train"][0].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(labels, expected["train"][1])
    files = sorted(p.relative_to(isolated).as_posix() for p in isolated.rglob("*"))
    assert files == ["cifar-10-batches-bin"] + sorted(f"cifar-10-batches-bin/{f.name}" for f in folder.iterdir())
    assert not (tmp_path / "escaped.txt").exists()


def test_cifar_structure_errors(cifar_dir):
    folder, _ = cifar_dir
    test_file = folder / "test_batch.bin"
    raw = test_file.read_bytes()
    test_file.write_bytes(raw[:-100])
    with pytest.raises(data.DatasetError, match=r"test_batch\.bin: truncated.*3073"):
        data.load_split("cifar10", "test", data_dir=folder, download=False, verify=False)
    test_file.write_bytes(bytes([10]) + raw[1:])  # label 10 does not exist
    with pytest.raises(data.DatasetError, match=r"test_batch\.bin: label 10 out of range"):
        data.load_split("cifar10", "test", data_dir=folder, download=False, verify=False)


# ----------------------------------------------------------------------------- IDX and downloads

def test_idx_download_via_file_url(tmp_path, isolated, monkeypatch):
    images, labels = small_idx()
    mirror = tmp_path / "mirror"
    write_idx_pair(mirror, images, labels)
    monkeypatch.setitem(data.MIRRORS, "mnist", ((tmp_path / "down").as_uri(), mirror.as_uri()))
    # The served files are fine as IDX but are not the real MNIST: the SHA-256 check names the file.
    with pytest.raises(data.DatasetError, match=r"mnist/t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        data.load_split("mnist", "test")
    # Downloaded into the cache's mnist/ folder and readable without the digest check.
    loaded_images, loaded_labels = data.load_split("mnist", "test", download=False, verify=False)
    assert sorted(p.name for p in (isolated / "mnist").iterdir()) == sorted(data._IDX_FILES["test"])
    np.testing.assert_array_equal(loaded_images[..., 0], images)
    np.testing.assert_array_equal(loaded_labels, labels)


def test_download_url_checks_md5(tmp_path):
    source = tmp_path / "payload.bin"
    source.write_bytes(b"minidiff" * 1000)
    good = hashlib.md5(source.read_bytes()).hexdigest()
    out = data.download_url(source.as_uri(), tmp_path / "out" / "copy.bin", md5=good)
    assert out.read_bytes() == source.read_bytes()
    with pytest.raises(data.DatasetError, match=rf"bad\.bin.*checksum mismatch: expected MD5 {'f' * 32}, got {good}"):
        data.download_url(source.as_uri(), tmp_path / "out" / "bad.bin", md5="f" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.bin"]


@pytest.mark.parametrize("corrupt, message", [
    (lambda gz, raw: gz[: len(gz) // 2], "gzip stream corrupted or truncated"),
    (lambda gz, raw: gz[:40] + bytes([gz[40] ^ 0xFF]) + gz[41:], "gzip stream corrupted or truncated"),
    (lambda gz, raw: gzip.compress(raw[:-5]), "truncated: expected 2368 bytes .* got 2363"),
    (lambda gz, raw: gzip.compress(b"\x00\x00\x09" + raw[3:]), "bad magic number"),
    (lambda gz, raw: gzip.compress(raw + b"\x00"), "too long"),
])
def test_corrupt_idx_files_raise(tmp_path, corrupt, message):
    images, labels = small_idx()
    image_file, _ = write_idx_pair(tmp_path / "mnist", images, labels)
    image_file.write_bytes(corrupt(image_file.read_bytes(), idx_bytes(images)))
    with pytest.raises(data.DatasetError, match=rf"t10k-images-idx3-ubyte\.gz: {message}"):
        data.load_split("mnist", "test", data_dir=tmp_path, download=False, verify=False)


def test_idx_wrong_image_shape_and_count(tmp_path):
    images, labels = small_idx()
    write_idx_pair(tmp_path, images[:, :27], labels)  # files directly in the root also count
    with pytest.raises(data.DatasetError, match=r"expected items of shape \(28, 28\)"):
        data.load_split("mnist", "test", data_dir=tmp_path, download=False, verify=False)
    write_idx_pair(tmp_path, images, labels[:2])
    with pytest.raises(data.DatasetError, match="3 images but .* 2 labels"):
        data.load_split("mnist", "test", data_dir=tmp_path, download=False, verify=False)


# ----------------------------------------------------------------------------- refusals

def test_an_explicit_data_dir_is_the_only_place_searched(tmp_path, monkeypatch):
    needs("mnist")
    monkeypatch.setenv("MINIDIFF_DATA_DIR", str(DATA_DIR))  # holds MNIST, but was not asked for
    with pytest.raises(FileNotFoundError, match=r"not found in the data folder given:\n  .*empty"):
        data.load_split("mnist", "test", data_dir=tmp_path / "empty")


def test_a_failed_download_lists_every_folder_searched(tmp_path, isolated, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setitem(data.MIRRORS, "mnist", ((tmp_path / "no-mirror").as_uri() + "/",))
    with pytest.raises(FileNotFoundError) as caught:
        data.load_split("mnist", "test")
    message = str(caught.value)
    assert "nowhere" in message and str(isolated) in message and "the download failed" in message


def _png_header_only(path, width, height):
    """A valid PNG signature and IHDR for width x height, one tiny IDAT, IEND: small on disk."""
    import zlib as z

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", z.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", z.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [5000, 30000])  # above minidiff's limit, and above PIL's own
def test_a_huge_picture_is_refused_from_its_header(tmp_path, size):
    _png_header_only(tmp_path / "huge.png", size, size)
    with pytest.raises(data.DatasetError, match=r"huge\.png: the picture .*more than the 16777216 pixels"):
        data.load_image(tmp_path / "huge.png", 28)


def test_dark_strokes_on_a_transparent_sheet_are_composited_onto_white(tmp_path):
    import matplotlib.pyplot as plt

    rgba = np.zeros((40, 40, 4))  # black everywhere, transparent ...
    rgba[5:35, 18:22, 3] = 1.0    # ... but an opaque black stroke
    plt.imsave(tmp_path / "stroke.png", rgba)
    image = data.load_image(tmp_path / "stroke.png", 28)[..., 0]
    assert image[14, 14] > 200 and image[2, 2] < 30  # a light stroke on dark, as MNIST draws it
