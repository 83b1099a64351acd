"""CIFAR-10 end to end through the command line, as a user runs it (no network, no GPU).

What this proves: given files in the real CIFAR-10 binary format (six batch files of the official
10,000 records of 1 label byte + a channel-first 3x32x32 image, found under
DIR/cifar-10-batches-bin with the loader's default verification on), every command a user runs
works on 32x32x3 images: `train --dataset cifar10` (the CIFAR preset, narrowed by --channels)
writes a model, `train-classifier --dataset cifar10` a judge, `sample` draws (N, 32, 32, 3) images
and a PNG grid, `eval` scores all ten classes against the held-out CIFAR images, `invert` reads
held-out images back in the right pixel layout, and `edit` keeps a colour PNG in colour. It does
not prove the model learns anything: two training steps of a tiny U-Net are enough to exercise
every code path but make no recognisable pictures.

The data are synthetic (a class-coloured disc on dim noise, fixed seed), ~180 MB written once per
module into a temporary folder. Slow (~1.5 min on 2 CPU cores): marked `slow`, so it runs only
with `python -m pytest tests/test_cifar.py --slow`.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RECORDS = 10_000  # the official number of records per batch file (checked by the loader)
FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
PALETTE = np.array([[230, 40, 40], [40, 200, 40], [40, 40, 230], [230, 230, 40], [230, 40, 230],
                    [40, 230, 230], [250, 140, 20], [140, 60, 200], [250, 250, 250], [120, 120, 120]],
                   np.uint8)  # one colour per class


def minidiff(*args, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "minidiff", *map(str, args)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"minidiff {' '.join(map(str, args))}\n{out.stdout}\n{out.stderr}"
    return out


def fake_cifar_batch(rng, n=RECORDS):
    """(labels (n,) uint8, images (n, 3, 32, 32) uint8 channel-first): a disc of the class colour
    on noise in 0..63."""
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    yy, xx = np.mgrid[:32, :32]
    disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 10**2).astype(np.uint8)   # (32, 32)
    images = rng.integers(0, 64, (n, 3, 32, 32), dtype=np.uint8)
    colour = PALETTE[labels][:, :, None, None]                               # (n, 3, 1, 1)
    images = np.where(disc.astype(bool), np.maximum(images, colour), images)
    return labels, images.astype(np.uint8)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """DIR holding cifar-10-batches-bin/*.bin, and the test batch's (labels, images) as written."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in FILES:
        labels, images = fake_cifar_batch(rng)
        records = np.concatenate([labels[:, None], images.reshape(RECORDS, -1)], axis=1)  # (n, 3073)
        (folder / name).write_bytes(records.tobytes())
        assert (folder / name).stat().st_size == RECORDS * 3073
    return root, labels, images  # labels, images of test_batch.bin, the last file written


@pytest.fixture(scope="module")
def models(cifar, tmp_path_factory):
    """Two training steps each of a narrow CIFAR U-Net and of the evaluation classifier."""
    root, _, _ = cifar
    out_dir = tmp_path_factory.mktemp("models")
    run = out_dir / "run"
    out = minidiff("train", "--dataset", "cifar10", "--data-dir", root, "--out", run,
                   "--channels", "8,16", "--steps", 2, "--batch-size", 8, "--sample-every", 0,
                   "--no-progress")
    assert "50000 training images" in out.stdout, out.stdout  # the five train batches, not test[:-1000]
    assert "done: step 2" in out.stdout, out.stdout
    assert (run / "model.npz").is_file()
    clf = out_dir / "clf.npz"
    out = minidiff("train-classifier", "--dataset", "cifar10", "--data-dir", root, "--steps", 2,
                   "--batch-size", 8, "--out", clf, "--no-progress")
    assert "(1000 images)" in out.stdout, out.stdout  # held out: the last 1000 test images
    assert clf.is_file()
    return run / "model.npz", clf


def test_sample_draws_colour_images_and_a_grid(models, tmp_path):
    model, _ = models
    minidiff("sample", "--ckpt", model, "--steps", 3, "--labels", "0..2", "--per-label", 2,
             "--out", tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (6, 32, 32, 3) and np.all(np.isfinite(images))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    minidiff("sample", "--ckpt", model, "--steps", 3, "--labels", "0..2", "--per-label", 2,
             "--out", tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_scores_every_class_against_held_out_cifar(models, cifar, tmp_path):
    model, clf = models
    root, _, _ = cifar
    minidiff("eval", "--ckpt", model, "--judge", clf, "--data-dir", root, "--per-label", 1,
             "--steps", 2, "--guidance", 1, "--out", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_samples"] == 10  # one per CIFAR-10 class
    assert math.isfinite(result["accuracy"]) and 0 <= result["accuracy"] <= 1
    assert math.isfinite(result["classifier_fid"]) and result["classifier_fid"] >= 0


def test_invert_reads_held_out_images_in_the_right_layout(models, cifar, tmp_path):
    model, _ = models
    root, test_labels, test_images = cifar
    minidiff("invert", "--ckpt", model, "--dataset", "cifar10", "--data-dir", root, "--index", "0:2",
             "--method", "ddim", "--steps", 3, "--out", tmp_path / "inv.npz")
    with np.load(tmp_path / "inv.npz") as f:
        sources, reconstructions, labels = f["sources"], f["reconstructions"], f["labels"]
    assert sources.shape == reconstructions.shape == (2, 32, 32, 3)
    # Held-out image i is test record 9000 + i; the file stores it channel-first (3, 32, 32).
    expected = test_images[-1000:][:2].transpose(0, 2, 3, 1).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(sources, expected, atol=1e-6)
    assert labels.tolist() == test_labels[-1000:][:2].tolist()
    assert np.all(np.isfinite(reconstructions))


def test_edit_keeps_a_colour_png_in_colour(models, tmp_path):
    import matplotlib.pyplot as plt

    model, _ = models
    picture = np.zeros((40, 50, 3))
    picture[..., 2] = 1.0                   # blue paper ...
    picture[10:30, 15:35] = (1.0, 0.0, 0.0)  # ... with a red square in the middle
    plt.imsave(tmp_path / "colour.png", picture)
    minidiff("edit", "--ckpt", model, "--image", tmp_path / "colour.png", "--label", 1, "--to", 2,
             "--method", "ddim", "--steps", 3, "--out", tmp_path / "edit.npz")
    with np.load(tmp_path / "edit.npz") as f:
        source, edits, targets = f["sources"], f["edits"], f["targets"]
    assert source.shape == edits.shape == (1, 32, 32, 3) and targets.tolist() == [2]
    red, blue = source[0, ..., 0], source[0, ..., 2]   # in [-1, 1]
    assert red[16, 16] > 0.9 and blue[16, 16] < -0.9    # inside the square: red
    assert red[2, 2] < -0.9 and blue[2, 2] > 0.9        # the corner: blue
    out = minidiff("edit", "--ckpt", model, "--image", tmp_path / "colour.png", "--label", 1,
                   "--to", 2, "--method", "null", "--steps", 2, "--inner-steps", 2,
                   "--out", tmp_path / "edit.png")
    assert "null inversion" in out.stdout, out.stdout
    assert (tmp_path / "edit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
