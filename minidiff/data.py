"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as uint8 NHWC arrays, found locally or downloaded.

    images, labels = load_split("mnist", "test")    # (10000, 28, 28, 1) uint8, (10000,) int32
    x0 = to_model_range(images)                     # float32 in [-1, 1], the model's convention

Files are looked for in the `data_dir` argument alone when it is given (a folder that lacks a
file is an error); otherwise under $MINIDIFF_DATA_DIR, then the download cache
($MINIDIFF_CACHE_DIR, else ~/.cache/minidiff). In each root first in the dataset's subfolder
(`mnist/`, `fashion-mnist/`, `cifar-10-batches-bin/`), then in the root itself. The first folder
holding every file of the split wins. If none does and `download=True`, the files are fetched
from the official mirrors into the cache with files.atomic_write, so an interrupted download
never leaves a half-written file; if that fails too, the error lists every folder searched.

What is verified:
  * always: the file structure. IDX files (MNIST, Fashion-MNIST) must have the right magic number,
    dimensions and exact byte length; CIFAR-10 batches must be whole 3073-byte records with labels
    in 0..9. A bad file raises DatasetError naming the file and the problem, never a partial array.
  * with verify=True (the default): the SHA-256 of the decompressed IDX bytes where we know it
    (IDX_SHA256), and that each CIFAR-10 batch holds the official 10,000 records.
  * at download time: the published MD5 of the downloaded file where we know it (ARCHIVE_MD5).
Pass verify=False to read small files you wrote yourself in the same formats.
"""

import gzip
import hashlib
import os
import struct
import tarfile
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minidiff.files import atomic_write

DATASETS = ("mnist", "fashion_mnist", "cifar10")
_ALIASES = {"fashion-mnist": "fashion_mnist"}
SPLITS = ("train", "test")

CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"),
}

# Per-dataset subfolder of a data root, and the files that make up each split.
_FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist", "cifar10": "cifar-10-batches-bin"}
_IDX_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"  # one download holding both splits
_CIFAR_RECORD = 1 + 3 * 32 * 32            # 1 label byte + a 3x32x32 image stored channel-first
_CIFAR_BATCH_SIZE = 10_000                 # records in each official batch file

# Base URLs, tried in order; a file's URL is base + file name.
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# SHA-256 of the DECOMPRESSED IDX bytes (robust to gzip headers differing between mirrors),
# from ../shared/data/README.md. The SHA-256 of the MNIST training files is not known offline,
# so those two are checked only by their published MD5 when downloaded (below).
IDX_SHA256 = {
    ("mnist", "t10k-images-idx3-ubyte.gz"): "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ("mnist", "t10k-labels-idx1-ubyte.gz"): "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ("fashion_mnist", "train-images-idx3-ubyte.gz"): "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"): "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"): "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"): "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Published MD5 of downloaded files whose SHA-256 we do not know. No digest of the individual
# CIFAR-10 .bin files is known offline: after extraction they are checked by structure only.
ARCHIVE_MD5 = {
    ("mnist", "train-images-idx3-ubyte.gz"): "f68b3c2dcbeaee79b1dfeec0fd03f9d7",
    ("mnist", "train-labels-idx1-ubyte.gz"): "d53e105ee54ea40749a09fcbcd1e9432",
    ("cifar10", _CIFAR_ARCHIVE): "c32a1d4ab5d03f1284b67883e8d87530",
}


class DatasetError(ValueError):
    """A data file is truncated, corrupt or fails its checksum. The message names the file."""


def _canonical(name):
    name = _ALIASES.get(name, name)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS} (or 'fashion-mnist')")
    return name


def num_classes(name):
    """Number of class labels (10 for all three datasets)."""
    return len(CLASS_NAMES[_canonical(name)])


def image_shape(name):
    """(H, W, C) of one image: (28, 28, 1) for the MNISTs, (32, 32, 3) for CIFAR-10."""
    return (32, 32, 3) if _canonical(name) == "cifar10" else (28, 28, 1)


def to_model_range(images):
    """uint8 pixels 0..255 -> float32 in [-1, 1] (x / 127.5 - 1), the range the model works in."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.astype(np.float32) / 127.5 - 1.0


def from_model_range(x):
    """float in [-1, 1] -> uint8 pixels: clip, rescale, round. Inverts to_model_range exactly."""
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return np.round((x + 1.0) * 127.5).astype(np.uint8)


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """The example indices of the batch at a given step: a function of (seed, step) alone.

    Each epoch is a fresh permutation drawn from (seed, epoch); the last partial batch of an
    epoch is dropped.
    """
    per_epoch = num_examples // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset ({num_examples})")
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[i * batch_size : (i + 1) * batch_size]


# ----------------------------------------------------------------------------- finding files

def cache_dir():
    """Where downloads go: $MINIDIFF_CACHE_DIR, else ~/.cache/minidiff."""
    return Path(os.environ.get("MINIDIFF_CACHE_DIR", "~/.cache/minidiff")).expanduser()


def search_dirs(name, data_dir=None):
    """The folders searched for `name`'s files, in order (see the module docstring). An explicit
    data_dir is the only root searched: a folder that lacks a file is an error, not a reason to
    read another copy from $MINIDIFF_DATA_DIR or the cache."""
    roots = [data_dir] if data_dir is not None else [os.environ.get("MINIDIFF_DATA_DIR"), cache_dir()]
    folder = _FOLDERS[_canonical(name)]
    return [directory for root in roots if root for directory in (Path(root) / folder, Path(root))]


def _split_files(name, split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return _CIFAR_FILES[split] if name == "cifar10" else _IDX_FILES[split]


def _locate(name, split, data_dir, download):
    """The folder holding every file of the split, downloading it into the cache if allowed."""
    files = _split_files(name, split)
    candidates = search_dirs(name, data_dir)
    for directory in candidates:
        if all((directory / file).is_file() for file in files):
            return directory
    looked = "\n  ".join(str(directory) for directory in candidates)
    if data_dir is not None:
        raise FileNotFoundError(f"{name} {split} files {files} not found in the data folder given:\n  {looked}")
    if not download:
        raise FileNotFoundError(f"{name} {split} files {files} not found in any of:\n  {looked}\n"
                                "(pass download=True to fetch them)")
    try:
        return download_split(name, split)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name} {split} files {files} not found in any of:\n  {looked}\n"
                                f"and the download failed: {err}") from err


# ----------------------------------------------------------------------------- downloading

def download_url(url, path, md5=None):
    """Download `url` (http(s):// or file://) to `path` atomically; check its MD5 if given."""
    path = Path(path)
    digest = hashlib.md5(usedforsecurity=False)
    with atomic_write(path) as out, urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as progress:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                progress.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise DatasetError(f"{url} (for {path}): checksum mismatch: "
                               f"expected MD5 {md5}, got {digest.hexdigest()}")
    return path


def _download_from_mirrors(name, file, path, mirrors):
    """Try each mirror in turn; a network error moves on to the next, a bad checksum does not."""
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file
        try:
            return download_url(url, path, md5=ARCHIVE_MD5.get((name, file)))
        except OSError as error:  # includes urllib's URLError and HTTPError
            errors.append(f"{url}: {error}")
    raise FileNotFoundError(f"could not download {file} from any mirror:\n  " + "\n  ".join(errors))


def _extract_cifar(archive, target):
    """Copy only the six expected batch files out of the tarball (no other member is touched)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for file in _CIFAR_FILES["train"] + _CIFAR_FILES["test"]:
                member = tar.getmember(f"cifar-10-batches-bin/{file}")
                if not member.isfile():
                    raise DatasetError(f"{archive}: member {member.name} is not a regular file")
                with atomic_write(target / file) as out:
                    out.write(tar.extractfile(member).read())
    except KeyError as error:
        raise DatasetError(f"{archive}: missing member {error}") from error
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DatasetError(f"{archive}: corrupted archive ({error})") from error


def download_split(name, split, root=None, mirrors=None):
    """Download one split of `name` into root/<dataset folder> (root defaults to cache_dir()).

    MNIST-style datasets download the split's two .gz files; CIFAR-10 downloads its single
    archive, extracts both splits and deletes the archive. Returns the folder.
    """
    name = _canonical(name)
    files = _split_files(name, split)
    root = cache_dir() if root is None else Path(root)
    mirrors = MIRRORS[name] if mirrors is None else mirrors
    target = root / _FOLDERS[name]
    if name == "cifar10":
        archive = _download_from_mirrors(name, _CIFAR_ARCHIVE, root / _CIFAR_ARCHIVE, mirrors)
        try:
            _extract_cifar(archive, target)
        finally:
            archive.unlink()
    else:
        for file in files:
            if not (target / file).is_file():
                _download_from_mirrors(name, file, target / file, mirrors)
    return target


# ----------------------------------------------------------------------------- parsing

def parse_idx(data, path):
    """Parse IDX bytes (the MNIST format) into a uint8 array, checking the structure exactly.

    Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions n,
    then n big-endian uint32 sizes, then prod(sizes) values in C order.
    """
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DatasetError(f"{path}: bad magic number {data[:4].hex()!r} "
                           "(expected 000008 then the number of dimensions)")
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise DatasetError(f"{path}: truncated: expected a {header}-byte header, got {len(data)} bytes")
    dims = struct.unpack(f">{data[3]}I", data[4:header])
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "too long"
        raise DatasetError(f"{path}: {problem}: expected {expected} bytes for dims {dims}, got {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx(name, path, item_shape, verify):
    """Decompress and parse one .gz IDX file whose items have shape `item_shape`."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DatasetError(f"{path}: gzip stream corrupted or truncated ({error})") from error
    array = parse_idx(data, path)
    if array.shape[1:] != item_shape:
        raise DatasetError(f"{path}: expected items of shape {item_shape}, got {array.shape[1:]}")
    expected = IDX_SHA256.get((name, path.name))
    if verify and expected is not None and (actual := hashlib.sha256(data).hexdigest()) != expected:
        raise DatasetError(f"{path}: checksum mismatch: expected SHA-256 {expected}, got {actual}")
    return array


def _check_labels(labels, path):
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{path}: label {labels.max()} out of range 0..9")


def _load_idx(name, directory, split, verify):
    image_file, label_file = (directory / file for file in _IDX_FILES[split])
    images = _read_idx(name, image_file, (28, 28), verify)  # (N, 28, 28)
    labels = _read_idx(name, label_file, (), verify)        # (N,)
    if len(images) != len(labels):
        raise DatasetError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
    _check_labels(labels, label_file)
    return images[..., None].copy(), labels.astype(np.int32)  # (N, 28, 28, 1), (N,)


def _read_cifar_batch(path, verify):
    data = path.read_bytes()
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DatasetError(f"{path}: truncated: {len(data)} bytes is not a whole number "
                           f"of {_CIFAR_RECORD}-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)  # (N, 3073)
    if verify and len(records) != _CIFAR_BATCH_SIZE:
        raise DatasetError(f"{path}: expected {_CIFAR_BATCH_SIZE} records, got {len(records)}")
    labels = records[:, 0].astype(np.int32)                                  # (N,)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)     # CHW -> (N, 32, 32, 3)
    _check_labels(labels, path)
    return images, labels


def _load_cifar(directory, split, verify):
    batches = [_read_cifar_batch(directory / file, verify) for file in _CIFAR_FILES[split]]
    images = np.concatenate([images for images, _ in batches])  # (N, 32, 32, 3), a fresh copy
    labels = np.concatenate([labels for _, labels in batches])  # (N,)
    return images, labels


# ----------------------------------------------------------------------------- public loaders

def load_split(name, split, data_dir=None, download=True, verify=True):
    """Load one split as (images uint8 (N, H, W, C), labels int32 (N,)).

    name: "mnist", "fashion_mnist" (or "fashion-mnist") or "cifar10"; split: "train" or "test".
    Searches data_dir, $MINIDIFF_DATA_DIR and the cache; downloads if allowed and not found.
    verify=False skips the digest and record-count checks (structure is always checked).
    """
    name = _canonical(name)
    directory = _locate(name, split, data_dir, download)
    if name == "cifar10":
        return _load_cifar(directory, split, verify)
    return _load_idx(name, directory, split, verify)


def load_train_and_heldout(name, data_dir=None, download=True, heldout=1000, verify=True):
    """((train_images, train_labels), (heldout_images, heldout_labels)) for training and evaluation.

    The held-out set is always the LAST `heldout` images of the test split, which training never
    sees. Training data is the train split if it is found or can be downloaded; otherwise (e.g.
    offline MNIST, where only the 10k test digits exist) it falls back, with a warning, to the
    first len(test) - heldout test images. Both choices are deterministic: no shuffling.
    """
    test_images, test_labels = load_split(name, "test", data_dir, download, verify)
    if not 0 < heldout < len(test_labels):
        raise ValueError(f"heldout must be in 1..{len(test_labels) - 1}, got {heldout}")
    held = (test_images[-heldout:], test_labels[-heldout:])
    try:
        train = load_split(name, "train", data_dir, download, verify)
    except FileNotFoundError as error:
        warnings.warn(f"{name}: train split unavailable, so training on test[:-{heldout}] "
                      f"({len(test_labels) - heldout} images) and holding out test[-{heldout}:]. "
                      f"Reason: {error}", stacklevel=2)
        train = (test_images[:-heldout], test_labels[:-heldout])
    return train, held


MAX_IMAGE_PIXELS = 4096 * 4096  # a picture to invert is resized to 28x28 or 32x32 anyway


def _rgba(picture, path) -> np.ndarray:
    """A PIL picture as (H, W, 4) float32 RGBA in [0, 1], scaled by its real bit depth: 16-bit
    grey (modes I;16*) by 65535, everything PIL converts to RGBA by 255. Pictures of 32-bit
    integer or floating-point pixels (modes I and F: TIFFs), whose range no header states, are
    refused with a DatasetError rather than guessed at."""
    if picture.mode.startswith("I;16"):
        grey = np.asarray(picture, np.float32) / 65535.0  # (H, W)
        return np.concatenate([np.repeat(grey[..., None], 3, axis=-1), np.ones_like(grey)[..., None]], axis=-1)
    if picture.mode in ("I", "F"):
        kind = "floating-point" if picture.mode == "F" else "32-bit integer"
        raise DatasetError(f"{path}: its pixels are {kind} values (mode {picture.mode}), whose range minidiff "
                           "cannot know; save it as an 8- or 16-bit PNG")
    return np.asarray(picture.convert("RGBA"), np.float32) / 255.0


def load_image(path, size: int, channels: int = 1) -> np.ndarray:
    """A picture file (PNG) as one image (size, size, channels) uint8, ready for to_model_range.
    Pixels are scaled by their bit depth (8 or 16 bits); float or 32-bit pictures are refused.

    Transparent pixels are composited onto the background the alpha implies: the opposite of the
    opaque pixels' mean brightness (dark strokes on a transparent sheet become dark on white).
    channels=1 (digits): colour is averaged to grey, the picture is resized (bilinear) to
    size x size, and a light background (mean above mid-grey) is inverted so strokes are light
    on dark, as in MNIST. channels=3 (CIFAR-10): the RGB colours are kept (a grey picture is
    repeated into three channels) and only resized. Pictures above MAX_IMAGE_PIXELS are refused
    from their header, before decoding. Raises DatasetError naming the file if it cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as picture:  # reads the header only
            width, height = picture.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DatasetError(f"{path}: the picture is {width}x{height} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS} pixels minidiff decodes (it is resized to {size}x{size} anyway)")
            rgba = _rgba(picture, path)  # (H, W, 4) in [0, 1]
    except Image.DecompressionBombError as err:  # PIL's own limit, checked when it opens the file
        raise DatasetError(f"{path}: the picture has more than the {MAX_IMAGE_PIXELS} pixels "
                           f"minidiff decodes ({err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read as an image ({err})") from err
    if min(rgba.shape[:2]) < 2:
        raise DatasetError(f"{path}: expected a 2-D picture, got one of {width}x{height} pixels")
    rgb, alpha = rgba[..., :3], rgba[..., 3:]  # (H, W, 3), (H, W, 1)
    opaque = alpha[..., 0] > 0.5
    background = 1.0 - round(float(rgb[opaque].mean())) if opaque.any() and not opaque.all() else 0.0
    rgb = rgb * alpha + background * (1.0 - alpha)  # composite; a no-op where alpha = 1
    picture = rgb.mean(axis=-1, keepdims=True) if channels == 1 else rgb  # (H, W, C)
    import jax.image

    image = np.asarray(jax.image.resize(picture, (size, size, channels), "bilinear"))  # (size, size, C)
    if channels == 1 and image.mean() > 0.5:
        image = 1.0 - image
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
