"""The command line through subprocess, as a user runs it; its error messages in this process
(cli.main, the function the console script calls), which spares each one an interpreter start."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minidiff import checkpoint, cli
from tests.helpers import REPO, data_dir


def minidiff(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "minidiff", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def minidiff_here(capsys, monkeypatch, *args):
    """cli.main on these arguments in this process, run from the checkout as minidiff() is:
    (exit status, what it printed to stderr)."""
    monkeypatch.chdir(REPO)
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    return status, capsys.readouterr().err


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
        (["sample", "--labels", "3,10", "--ckpt", "{model}"], r"--labels \[10\] out of range"),
        (["sample", "--labels", "three"], "labels must look like"),
        (["sample", "--out", "x.jpg", "--ckpt", "{model}"], "must end in .png or .npz"),
        (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ],
)
def test_bad_arguments_give_clear_errors(args, message, capsys, monkeypatch):
    released = REPO / "data" / "checkpoints" / "mnist.npz"  # each error comes before any sampling
    status, stderr = minidiff_here(capsys, monkeypatch, *[a.format(model=released) for a in args])
    assert status == 2
    assert __import__("re").search(message, stderr), stderr


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
def test_bad_inversion_input_gives_clear_errors(args, message, tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "thin.png", np.zeros((1, 40)), cmap="gray")
    status, stderr = minidiff_here(capsys, monkeypatch, *[a.format(thin=tmp_path / "thin.png") for a in args])
    assert status == 2, stderr
    assert __import__("re").search(message, stderr), stderr


def _train_args(run, *extra):
    return ("train", "--dataset", "mnist", "--data-dir", data_dir(), "--out", run, "--channels", "8,16",
            "--batch-size", 16, "--sample-every", 0, "--no-progress", *extra)


@pytest.mark.slow
def test_train_classifier_never_writes_the_released_judge_by_default(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    released = REPO / "data" / "checkpoints" / "mnist_classifier.npz"
    before = released.read_bytes()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "minidiff", "train-classifier", "--data-dir", str(data_dir()),
                          "--steps", "2", "--batch-size", "8", "--no-progress"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "runs" / "mnist_classifier.npz").is_file() and "runs/mnist_classifier.npz" in out.stdout
    assert released.read_bytes() == before


@pytest.mark.slow
def test_a_second_training_on_one_run_directory_is_refused_until_the_first_is_killed(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    import signal
    import time

    run = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    first = subprocess.Popen([sys.executable, "-m", "minidiff", *map(str, _train_args(run, "--steps", 2000,
                              "--log-every", 1, "--ckpt-every", 5, "--lr-schedule", "constant"))],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "ckpt.npz").exists():
        time.sleep(0.1)
    assert first.poll() is None, "the first run ended before the second could start"
    second = minidiff(*_train_args(run, "--steps", 2000, "--log-every", 1, "--ckpt-every", 5,
                                   "--lr-schedule", "constant"))
    assert second.returncode == 2 and f"in use by another training process (pid {first.pid})" in second.stderr, \
        second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    resumed_from = checkpoint.read_metadata(run / "ckpt.npz")["step"]
    third = minidiff(*_train_args(run, "--steps", resumed_from + 3, "--log-every", 1, "--ckpt-every", 5,
                                  "--lr-schedule", "constant"))
    assert third.returncode == 0 and f"(starting at step {resumed_from})" in third.stdout, third.stderr
    assert f"done: step {resumed_from + 3}" in third.stdout, third.stdout


@pytest.mark.slow
def test_divergence_keeps_the_last_good_checkpoint_and_says_which_step(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    run = tmp_path / "run"
    out = minidiff(*_train_args(run, "--steps", 40, "--lr", "1e30", "--warmup-steps", 10, "--ckpt-every", 1,
                                "--log-every", 1))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    found = __import__("re").search(r"the weights after step (\d+) give loss (\S+).*"
                                    r"last good checkpoint is kept at .*ckpt\.npz \(step (\d+)\)", out.stderr)
    assert found, out.stderr
    bad, kept = int(found.group(1)), int(found.group(3))
    assert bad == kept + 1
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged[-1] == kept  # the message and the log count steps alike
    sample = minidiff("sample", "--ckpt", run / "model.npz", "--steps", 3, "--labels", "1", "--per-label", 2,
                      "--out", tmp_path / "s.npz")
    assert sample.returncode == 0, sample.stderr  # the kept model samples to finite images
    with np.load(tmp_path / "s.npz") as f:
        assert np.all(np.isfinite(f["images"]))


@pytest.fixture(scope="module")
def tiny_caption_model(tmp_path_factory):
    """Two training steps of a tiny caption model through the CLI."""
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    run = tmp_path_factory.mktemp("caption_run")
    out = minidiff("train", "--conditioning", "text", "--data-dir", data_dir(), "--out", run, "--channels", "8,16",
                   "--steps", 2, "--batch-size", 16, "--sample-every", 0, "--no-progress")
    assert out.returncode == 0, out.stderr
    meta = checkpoint.read_metadata(run / "model.npz")
    assert meta["unet"]["conditioning"] == "text" and set(meta["captions"]) == {"thickness", "slant"}
    return run / "model.npz"


def test_cross_attention_levels_are_a_training_flag(tmp_path, capsys, monkeypatch):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    common = ("train", "--conditioning", "text", "--data-dir", data_dir(), "--channels", "8,16", "--steps", 1,
              "--batch-size", 8, "--sample-every", 0, "--no-progress")
    # full resolution only: the deepest level has none, but the middle still reads the prompt
    status, err = minidiff_here(capsys, monkeypatch, *common, "--cross-attention-levels", "0", "--out", tmp_path)
    assert status == 0, err
    assert checkpoint.read_metadata(tmp_path / "model.npz")["unet"]["cross_attention_levels"] == [0]
    status, err = minidiff_here(capsys, monkeypatch, *common, "--cross-attention-levels", "2", "--out", tmp_path / "b")
    assert status == 2 and "cross_attention_levels=(2,): each must be a level 0..1" in err, err


@pytest.mark.slow
def test_the_caption_model_samples_prompts_and_edits_words(tiny_caption_model, tmp_path):
    out = minidiff("sample", "--ckpt", tiny_caption_model, "--steps", 2, "--prompt", "bold seven",
                   "--prompt", "thin right-leaning two", "--per-label", 2, "--out", tmp_path / "p.npz")
    assert out.returncode == 0, out.stderr
    saved = np.load(tmp_path / "p.npz")
    assert saved["images"].shape == (4, 28, 28, 1) and saved["labels"].shape == (4, 4)  # prompt tokens
    for flags in (["--to", 3], ["--to-prompt", "bold eight", "--reweight", "bold=2"],
                  ["--prompt", "bold seven", "--reweight", "bold=0.5", "--cross", 1.0]):
        out = minidiff("edit", "--ckpt", tiny_caption_model, "--data-dir", data_dir(), "--index", "0:2", "--steps", 3,
                       "--inner-steps", 2, *flags, "--out", tmp_path / "e.npz")
        assert out.returncode == 0, out.stderr
        assert np.load(tmp_path / "e.npz")["edits"].shape == (2, 28, 28, 1)
    out = minidiff("invert", "--ckpt", tiny_caption_model, "--data-dir", data_dir(), "--index", "0:2", "--steps", 3,
                   "--inner-steps", 2, "--out", tmp_path / "i.png")
    assert out.returncode == 0 and "null inversion" in out.stdout, out.stderr
    out = minidiff("edit", "--ckpt", tiny_caption_model, "--data-dir", data_dir(), "--index", "0:2",
                   "--to-prompt", "bold seventeen", "--out", tmp_path / "e.png")
    assert out.returncode == 2 and "unknown word(s) 'seventeen'" in out.stderr and "vocabulary is" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["sample", "--prompt", "bold seven", "--out", "x.png"], "--prompt needs a caption model"),
    (["edit", "--to-prompt", "seven", "--out", "x.png"], "--to-prompt needs a caption model"),
    (["edit", "--to", "3", "--cross", "0.5", "--out", "x.png"], "--cross needs a caption model"),
    (["edit", "--to", "3", "--reweight", "bold", "--out", "x.png"], "expected WORD=FACTOR"),
    (["train", "--conditioning", "text", "--dataset", "fashion_mnist"], "--conditioning text needs --dataset mnist"),
    (["train", "--cross-attention-levels", "0,1"], "--cross-attention-levels needs --conditioning text"),
    (["train", "--conditioning", "text", "--cross-attention-levels", "1,1"], "at most 8 distinct levels"),
    (["train", "--conditioning", "text", "--cross-attention-levels", "a"], "levels must look like '0,1,2'"),
])
def test_caption_flags_on_the_wrong_model_are_refused(args, message, capsys, monkeypatch):
    if "--to" in args and data_dir() is None:
        pytest.skip("MNIST files not available")
    status, err = minidiff_here(capsys, monkeypatch, *args)
    assert status == 2 and message in err, err
