"""The command line through subprocess, as a user runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, data_dir


def minidiff(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "minidiff", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    out = minidiff("--help")
    assert out.returncode == 0 and "train" in out.stdout and "sample" in out.stdout
    out = minidiff("sample", "--help")
    assert out.returncode == 0 and "--guidance" in out.stdout and "--per-label" in out.stdout


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Two training steps of a tiny U-Net through the CLI: a real, if useless, model file."""
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    run = tmp_path_factory.mktemp("run")
    out = minidiff("train", "--dataset", "mnist", "--data-dir", data_dir(), "--out", run,
                   "--channels", "8,16", "--steps", 2, "--batch-size", 16, "--sample-every", 0,
                   "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "done: step 2" in out.stdout
    return run / "model.npz"


@pytest.mark.slow
def test_sample_writes_a_png_and_an_npz(tiny_model, tmp_path):
    out = minidiff("sample", "--ckpt", tiny_model, "--steps", 3, "--labels", "2..4", "--per-label", 2,
                   "--out", tmp_path / "grid.png")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = minidiff("sample", "--ckpt", tiny_model, "--steps", 3, "--labels", "1,7", "--per-label", 3,
                   "--out", tmp_path / "s.npz")
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (6, 28, 28, 1) and f["labels"].tolist() == [1, 1, 1, 7, 7, 7]


def test_sample_without_ckpt_uses_the_released_mnist_model(tmp_path):
    out = minidiff("sample", "--labels", "7", "--per-label", 2, "--steps", 5, "--out", tmp_path / "s.npz")
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "s.npz") as f:
        images = f["images"]
    assert images.shape == (2, 28, 28, 1)
    assert 0.05 < float((images > 0).mean()) < 0.5  # a trained model draws strokes on black


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "--ckpt", "missing.npz"], "checkpoint not found: missing.npz"),
        (["sample", "--labels", "3,10", "--ckpt", "{model}"], r"label\(s\) \[10\] out of range"),
        (["sample", "--labels", "three"], "labels must look like"),
        (["sample", "--out", "x.jpg", "--ckpt", "{model}"], "must end in .png or .npz"),
        (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ],
)
def test_bad_arguments_give_clear_errors(args, message):
    released = REPO / "data" / "checkpoints" / "mnist.npz"  # each error comes before any sampling
    out = minidiff(*[a.format(model=released) for a in args])
    assert out.returncode == 2
    assert __import__("re").search(message, out.stderr), out.stderr


@pytest.mark.slow
def test_eval_reports_accuracy_fid_and_diversity(tiny_model, tmp_path):
    out = minidiff("eval", "--ckpt", tiny_model, "--per-label", 2, "--steps", 2, "--guidance", 1,
                   "--data-dir", data_dir(), "--out", tmp_path / "r.json", "--grid", tmp_path / "g.png")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_samples"] == 20 and 0 <= result["accuracy"] <= 1
    assert result["classifier_fid"] > 0 and result["diversity"] > 0 and (tmp_path / "g.png").exists()
    out = minidiff("eval", "--ckpt", tiny_model, "--judge", "missing.npz", "--data-dir", data_dir())
    assert out.returncode == 2 and "missing.npz" in out.stderr
    out = minidiff("eval", "--ckpt", tiny_model, "--judge", REPO / "data/checkpoints/mnist_classifier_noisy.npz",
                   "--data-dir", data_dir())
    assert out.returncode == 2 and "noised classifier" in out.stderr, out.stderr


@pytest.mark.slow
def test_invert_and_edit_held_out_digits(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    out = minidiff("invert", "--data-dir", data_dir(), "--index", "0:2", "--method", "ddim", "--steps", 4,
                   "--out", tmp_path / "inv.npz")
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "inv.npz") as f:
        assert f["sources"].shape == f["reconstructions"].shape == (2, 28, 28, 1)
        # 4 DDIM steps at w = 7.5 reconstruct poorly (~8-10 dB), but far better than noise (~0 dB).
        assert f["psnr"].shape == (2,) and np.all(f["psnr"] > 5)
    out = minidiff("edit", "--data-dir", data_dir(), "--index", "3", "--to", 8, "--steps", 4,
                   "--out", tmp_path / "edit.png")
    assert out.returncode == 0, out.stderr
    assert "null inversion" in out.stdout and (tmp_path / "edit.png").stat().st_size > 1000


def test_invert_reads_a_drawn_png_of_any_size(tmp_path):
    import matplotlib.pyplot as plt

    picture = np.ones((90, 70))  # black strokes on white paper, not 28x28
    picture[20:70, 30:40] = 0.0
    plt.imsave(tmp_path / "one.png", picture, cmap="gray")
    out = minidiff("invert", "--image", tmp_path / "one.png", "--label", 1, "--method", "ddim",
                   "--steps", 3, "--out", tmp_path / "one.npz")
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "one.npz") as f:
        source = f["sources"][0, ..., 0]
    assert source.shape == (28, 28) and source[14, 14] > 0.5 and source[2, 2] < -0.5  # inverted to light-on-dark


@pytest.mark.parametrize(
    "args, message",
    [
        (["invert", "--image", "README.md", "--label", "1"], "cannot read as an image"),
        (["invert", "--image", "missing.png", "--label", "1"], "image not found"),
        (["invert", "--image", "{thin}", "--label", "1"], "expected a 2-D picture"),
        (["invert", "--image", "{thin}"], "--image needs --label"),
        (["edit", "--to", "11"], r"--to \[11\] out of range"),
        (["invert", "--image", "{thin}", "--label", "-1"], r"--label \[-1\] out of range"),
    ],
)
def test_bad_inversion_input_gives_clear_errors(args, message, tmp_path):
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "thin.png", np.zeros((1, 40)), cmap="gray")
    out = minidiff(*[a.format(thin=tmp_path / "thin.png") for a in args])
    assert out.returncode == 2, out.stderr
    assert __import__("re").search(message, out.stderr), out.stderr
