"""Every bad input the command line can meet gets exit code 2 and a one-line message naming the
problem, before any work is done. Run in-process (cli.main) to stay fast; the cases that need
separate processes (two trainings on one run directory, kill -9) are in tests/test_cli.py."""

import json
import re

import numpy as np
import pytest
from flax import nnx

from minidiff import checkpoint, cli, models
from tests.helpers import REPO, data_dir

RELEASED = REPO / "data" / "checkpoints"


def run(capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of `minidiff ARGS`, argparse's exits included."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def refused(capsys, message: str, *args) -> str:
    code, err = run(capsys, *args)
    assert code == 2, err
    assert re.search(message, err), err
    assert "Traceback" not in err and "error:" in err.strip().splitlines()[-1], err  # one clear line
    return err


# --- 4. non-finite values are refused up front ------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["sample", "--guidance", "nan"], r"--guidance: must be a finite number, got 'nan'"),
    (["sample", "--guidance", "inf"], r"--guidance: must be a finite number, got 'inf'"),
    (["train-classifier", "--lr", "nan"], r"--lr: must be a positive, finite number, got 'nan'"),
    (["train", "--lr", "nan"], r"--lr: must be a positive, finite number, got 'nan'"),
    (["edit", "--to", "3", "--guidance=-inf"], r"--guidance: must be a finite number"),
])
def test_non_finite_numbers_are_refused(capsys, args, message):
    refused(capsys, message, *args)


def test_a_checkpoint_with_a_nan_weight_is_refused_by_name(capsys, tmp_path):
    model, meta = models.load_model(RELEASED / "mnist.npz")
    kernel = model.conv_out.conv.kernel
    bad = np.array(kernel[...])
    bad[0, 0, 0, 0] = np.nan
    kernel[...] = bad
    models.save_model(tmp_path / "nan.npz", model, meta)
    refused(capsys, r"nan\.npz: array '.*conv_out.*' holds 1 NaN or infinite values",
            "sample", "--ckpt", tmp_path / "nan.npz", "--out", tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


# --- 5. accepted nonsense ---------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["train", "--grad-clip", "-1"], r"--grad-clip: must be a positive, finite number, got '-1'"),
    (["train", "--warmup-steps", "-5"], r"--warmup-steps: must be an integer >= 0, got '-5'"),
    (["train", "--weight-decay", "-0.1"], r"--weight-decay: must be a finite number >= 0"),
    (["sample", "--labels", "3..1"], r"'3\.\.1' is an empty range"),
    (["invert", "--index", "5:2"], r"index '5:2' selects nothing"),
    (["edit", "--to", "3", "--attention", "1.5"], r"--attention: must be a number in \[0, 1\], got '1.5'"),
    (["edit", "--to", "3", "--feature-levels", "0,x"], r"levels must look like '0,2' or 'none'"),
    (["edit", "--to", "3", "--method", "ddim", "--feature-levels", "5", "--index", "0"],
     r"feature levels must lie in 0\.\.2 \(this U-Net has 3\)"),
    (["edit", "--to", "3", "--method", "ddim", "--features", "0.5", "--feature-levels", "none", "--index", "0"],
     r"Controller.features > 0 needs feature_levels"),
])
def test_nonsense_is_refused(capsys, args, message):
    refused(capsys, message, *args)


def test_an_index_past_the_held_out_set_says_how_many_there_are(capsys):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    refused(capsys, r"--index 2000:2010 goes past the held-out set, which has 1000 images",
            "invert", "--data-dir", data_dir(), "--index", "2000:2010", "--method", "ddim")


# --- 6. ordinary mistakes, caught before the work ---------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["train", "--ckpt-every", "0"], r"--ckpt-every: must be a positive integer, got '0'"),
    (["train", "--log-every", "0"], r"--log-every: must be a positive integer, got '0'"),
    (["train-classifier", "--batch-size", "0"], r"--batch-size: must be a positive integer"),
    (["train-classifier", "--steps", "0"], r"--steps: must be a positive integer"),
    (["sample", "--seed", str(2**70)], r"--seed: must be an integer in 0\.\.2\*\*32-1"),
    (["bench", "--repeats", "0"], r"--repeats: must be a positive integer"),
    (["sample", "--per-label", "0"], r"--per-label: must be an integer in 1\.\.10000000"),
])
def test_bad_counts_are_refused(capsys, args, message):
    refused(capsys, message, *args)


def test_an_output_that_is_a_directory_or_under_a_file_is_refused_before_sampling(capsys, tmp_path):
    (tmp_path / "grid.png").mkdir()
    refused(capsys, r"--out .*grid\.png is a directory", "sample", "--out", tmp_path / "grid.png")
    (tmp_path / "file").write_text("not a folder")
    refused(capsys, r"--out .*: .*file is a file, not a folder", "sample", "--out", tmp_path / "file" / "s.npz")
    refused(capsys, r"--out .*e\.txt must end in \.json", "eval", "--out", tmp_path / "e.txt")
    refused(capsys, r"--out .* is a file, not a folder", "train-classifier", "--out", tmp_path / "file" / "c.npz")


def test_malformed_checkpoint_metadata_is_refused_by_name(capsys, tmp_path):
    model, meta = models.load_model(RELEASED / "mnist.npz")
    state = nnx.state(model)
    cases = {"list.npz": ["not", "a", "dict"], "config.npz": dict(meta, unet={"no_such_field": 1}),
             "kind.npz": dict(meta, unet="a string")}
    for name, bad in cases.items():
        checkpoint.save_checkpoint(tmp_path / name, state, bad)
    refused(capsys, r"list\.npz: its metadata is a JSON list, not an object", "sample", "--ckpt", tmp_path / "list.npz")
    refused(capsys, r"config\.npz: its unet config is malformed", "sample", "--ckpt", tmp_path / "config.npz")
    refused(capsys, r"kind\.npz: its unet config is malformed", "sample", "--ckpt", tmp_path / "kind.npz")
    # not JSON at all: written by hand, as a corrupted file would be
    np.savez(tmp_path / "text.npz", __metadata__=np.array("{not json"))
    refused(capsys, r"text\.npz: its metadata is not valid JSON", "sample", "--ckpt", tmp_path / "text.npz")


# --- 7. resources ------------------------------------------------------------------------------

def test_sample_draws_in_batches(capsys, tmp_path, monkeypatch):
    from minidiff import pipeline

    sizes = []

    def fake_generate(model, s, labels, key, **kwargs):  # no sampling: only the batch sizes matter
        sizes.append(len(labels))
        return np.zeros((len(labels), 28, 28, 1), np.float32)

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    code, err = run(capsys, "sample", "--per-label", 3, "--batch-size", 8, "--out", tmp_path / "s.npz")
    assert code == 0, err
    assert sizes == [8, 8, 8, 6]
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (30, 28, 28, 1)


# --- 8. misleading messages --------------------------------------------------------------------

def test_random_bytes_are_not_a_checkpoint_and_unsafe_loading_is_never_suggested(capsys, tmp_path):
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    err = refused(capsys, r"noise\.npz: not a minidiff checkpoint \(not an \.npz archive\)",
                  "sample", "--ckpt", tmp_path / "noise.npz")
    assert "pickle" not in err and "unsafe" not in err


# --- 9. mismatches -----------------------------------------------------------------------------

def test_a_classifier_of_another_data_set_is_refused(capsys):
    refused(capsys, r"--classifier .*mnist_classifier_noisy\.npz was trained on mnist, but the model on fashion_mnist",
            "sample", "--ckpt", RELEASED / "fashion_mnist.npz", "--classifier", RELEASED / "mnist_classifier_noisy.npz")
    refused(capsys, r"the judge .*mnist_classifier\.npz was trained on mnist, but the model on fashion_mnist",
            "eval", "--ckpt", RELEASED / "fashion_mnist.npz", "--judge", RELEASED / "mnist_classifier.npz")


def test_eval_with_one_sample_per_class_writes_valid_json(capsys, tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    code, err = run(capsys, "eval", "--per-label", 1, "--steps", 2, "--guidance", 1, "--data-dir", data_dir(),
                    "--out", tmp_path / "e.json")
    assert code == 0, err

    def no_nan(constant):
        raise AssertionError(f"invalid JSON constant {constant}")

    result = json.loads((tmp_path / "e.json").read_text(), parse_constant=no_nan)
    assert result["num_samples"] == 10 and result["diversity"] is None  # one per class: no pairs
    # beside the samples' picture measures, real digits' (held-out: 0 outside, 3.9e-5 background)
    real = result["real_digits"]
    assert real["pixels_outside_range"] == 0 and real["background_noise"] < 1e-3
    assert real["num_train_images"] == 10 and real["classifier_fid"] > 0
    assert 0 <= result["pixels_outside_range"] <= 1 and result["background_noise"] >= 0
