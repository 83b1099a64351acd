"""Issue 31, case by case: outputs that cannot destroy inputs, atomic pictures, bounded memory,
Ctrl-C that stops cleanly. Each case runs through cli.main or the experiments' main and checks the
exit status, a one-line message naming the flag or the file, no traceback, and that no input
file changed. The memory cases run in a child process (its peak RSS); Ctrl-C is sent to a child
process (the slow tier)."""

import dataclasses
import errno
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minidiff import checkpoint, cli, data, models
from minidiff.experiments.__main__ import main as experiments_main
from tests.helpers import REPO, TINY_UNET, data_dir

RELEASED = REPO / "data" / "checkpoints"
TRAIN_META = {"train": {"dataset": "mnist", "T": 1000, "schedule": "linear"}}


def digests(*paths) -> dict:
    """{path: sha256 of its bytes} of the files among paths (folders: every file inside)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])]
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def run(capsys, *args, main=cli.main) -> tuple[int, str]:
    """(exit status, stderr) of a command line, argparse's exits included."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def refused(capsys, message: str, *args, inputs=(), main=cli.main) -> str:
    """Run args; assert exit status 2, one line matching message, no traceback, inputs unchanged."""
    before = digests(*inputs)
    code, err = run(capsys, *args, main=main)
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # argparse prints its usage above
    assert re.search(message, line) and "error:" in line and len(line) < 400, err  # one short line
    assert digests(*inputs) == before
    return err


def experiment_refused(capsys, message, *args, inputs=()):
    return refused(capsys, message, *args, inputs=inputs, main=experiments_main)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained U-Net model file (with a schedule digest) in a folder of its own."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    models.save_model(path, models.build_model(TINY_UNET), TRAIN_META)
    return path


@pytest.fixture
def copy(tmp_path, tiny):
    """A copy of the tiny model file, free to be put at risk."""
    return shutil.copy(tiny, tmp_path / "model.npz")


def with_metadata(tmp_path, tiny, name, **changes):
    """A copy of the tiny model whose metadata has these top-level or train fields changed."""
    model, meta = models.load_model(tiny)
    meta = json.loads(json.dumps(meta))
    for key, value in changes.items():
        if key in ("T", "schedule"):
            meta["train"][key] = value
        else:
            meta[key] = value
    from flax import nnx

    checkpoint.save_checkpoint(tmp_path / name, nnx.state(model), meta)
    return tmp_path / name


@pytest.fixture
def no_sampling(monkeypatch):
    """pipeline.generate and invert_and_edit replaced by zeros: only the command's own checks run."""
    from minidiff import pipeline

    monkeypatch.setattr(pipeline, "generate", lambda model, s, labels, key, **kw: np.zeros(
        (len(labels), 28, 28, 1), np.float32))
    monkeypatch.setattr(pipeline, "invert_and_edit", lambda model, s, x0, source, **kw: {
        "reconstructions": np.asarray(x0), **({"edits": np.asarray(x0)} if kw.get("targets") is not None else {})})


# --- data loss: 1-3 -----------------------------------------------------------------------------

def test_1_sample_never_writes_over_the_released_model(capsys, monkeypatch, tiny, copy):
    monkeypatch.chdir(REPO)
    released = RELEASED / "mnist.npz"
    refused(capsys, r"--out data/checkpoints/mnist\.npz is the input --ckpt", "sample", "--steps", 2,
            "--per-label", 1, "--out", "data/checkpoints/mnist.npz", inputs=[released])
    # with another --ckpt, the file is still a model: refused for that
    refused(capsys, r"--out .*model\.npz is a minidiff model file, which this command never overwrites",
            "sample", "--ckpt", tiny, "--steps", 2, "--out", copy, inputs=[copy, tiny])


@pytest.mark.parametrize("command", ["sample", "invert", "edit"])
def test_2_an_output_is_never_its_own_input(capsys, command, copy, tmp_path):
    extra = ["--to", "3"] if command == "edit" else []
    refused(capsys, rf"--out .*model\.npz is the input --ckpt", command, "--ckpt", copy, "--out", copy, *extra,
            inputs=[copy])
    picture = tmp_path / "digit.png"
    picture.write_bytes(b"not really a picture, but an input")
    if command != "sample":
        refused(capsys, r"--out .*digit\.png is the input --image", command, "--ckpt", copy, "--image", picture,
                "--label", 1, "--out", picture, *extra, inputs=[copy, picture])


def test_2_eval_experiments_and_train_classifier_protect_models(capsys, copy, tmp_path):
    json_model = shutil.copy(copy, tmp_path / "m.json")
    refused(capsys, r"--out .*m\.json is a minidiff model file", "eval", "--ckpt", copy, "--out", json_model,
            inputs=[copy, json_model])
    refused(capsys, r"--out .*model\.png is the input --classifier .*model\.png; give the output another name",
            "sample", "--ckpt", copy, "--classifier", shutil.copy(copy, tmp_path / "model.png"),
            "--out", tmp_path / "model.png", inputs=[copy, tmp_path / "model.png"])
    refused(capsys, r"--out .*model\.npz is a minidiff model file but not a classifier", "train-classifier",
            "--out", copy, inputs=[copy])
    # an experiment whose fixed output name is a model file: the writer refuses to replace it
    from minidiff.files import OutputPathError, atomic_write

    with pytest.raises(OutputPathError, match=r"model\.npz is a minidiff model file"):
        with atomic_write(copy) as f:
            f.write(b"results")
    assert models.load_model(copy)[0] is not None


def test_2_an_experiment_never_writes_over_a_model(capsys, tmp_path, copy):
    shutil.copy(copy, tmp_path / "diag.json")
    experiment_refused(capsys, r"--name .*diag\.json is a minidiff model file, which this command never overwrites",
                       "diagnosis", "--name", "diag", "--out-dir", tmp_path, inputs=[tmp_path / "diag.json", copy])
    experiment_refused(capsys, r"--name .*model\.json is the input --ckpt", "diagnosis", "--ckpt",
                       shutil.copy(copy, tmp_path / "model.json"), "--name", "model", "--out-dir", tmp_path,
                       inputs=[tmp_path / "model.json"])


def test_3_a_full_disk_leaves_the_old_picture_whole(capsys, monkeypatch, tmp_path, no_sampling, tiny):
    import matplotlib.figure

    keep = tmp_path / "keep.png"
    keep.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 500)  # the picture that must survive
    before = keep.read_bytes()

    def full_disk(self, f, **kwargs):  # half a picture, then the disk is full
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    refused(capsys, r"No space left on device", "sample", "--ckpt", tiny, "--per-label", 1, "--out", keep,
            inputs=[tiny])
    assert keep.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temporary left behind


def test_3_every_picture_goes_through_the_atomic_writer(monkeypatch, tmp_path):
    """save_grid, save_panels and save_figure (every picture of the CLI and the experiments)."""
    import matplotlib.pyplot as plt

    from minidiff import files, plotting

    written = []
    real = files.atomic_write

    def spy(path, *args, **kwargs):
        written.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(plotting, "atomic_write", spy)
    plotting.save_grid(tmp_path / "g.png", np.zeros((2, 28, 28, 1)), 2)
    plotting.save_panels(tmp_path / "p.png", {"y": {None: ([0, 1], [1, 2])}}, "x")
    plotting.save_figure(tmp_path / "f.png", plt.figure())
    assert written == ["g.png", "p.png", "f.png"]
    assert all((tmp_path / n).read_bytes()[:4] == b"\x89PNG" for n in written)


# --- unbounded memory: 4-6, in a child process whose peak memory is measured -----------------------

# The child's own peak is VmHWM, its address space's high-water mark. Not getrusage's ru_maxrss: Linux
# carries the parent's peak over fork and exec into it, so beside a pytest process of 2.6 GB every child
# "peaked" at 2.6 GB.
CHILD = ("import re, sys\nfrom minidiff import cli\nstatus = cli.main(sys.argv[1:])\n"
         "peak_kb = int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
         "print(peak_kb // 1024, status)")


def child_refused(message: str, *args, inputs=()) -> str:
    """Run the CLI in a child process: exit status 2, the message, and a peak RSS under 1 GB."""
    before = digests(*inputs)
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    err = out.stderr
    if out.returncode == 0:  # cli.main returned: the last line is "PEAK_MB STATUS"
        peak, status = map(int, out.stdout.split()[-2:])
    else:  # argparse exited before the print
        peak, status = 0, out.returncode
    assert status == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert re.search(message, line) and "error:" in line and len(line) < 300, err
    assert peak < 1024, f"peak RSS {peak} MB"
    assert digests(*inputs) == before
    return err


def test_the_child_peak_is_the_childs_own(tmp_path, tiny):
    """A parent that has touched 1.5 GB does not lend its peak to the child it starts."""
    ballast = np.ones(3 * 2**26)  # 1.5 GB of float64, every page touched
    huge = with_metadata(tmp_path, tiny, "huge.npz", T=1_000_000_000)  # refused by cli.main, after the imports
    child_refused(r"huge\.npz: its T \(diffusion steps\) must be", "sample", "--ckpt", huge, inputs=[huge])
    del ballast


def test_4_a_huge_T_in_the_metadata_is_refused_before_any_allocation(tmp_path, tiny):
    huge = with_metadata(tmp_path, tiny, "huge.npz", T=1_000_000_000)
    child_refused(r"huge\.npz: its T \(diffusion steps\) must be an integer in 1\.\.100000, got 1000000000",
                  "sample", "--ckpt", huge, "--out", tmp_path / "s.npz", inputs=[huge])
    wide = with_metadata(tmp_path, tiny, "wide.npz", unet=dict(models.load_model(tiny)[1]["unet"],
                                                               channels=[8, 1_000_000]))
    child_refused(r"wide\.npz: its unet config's channels \[8, 1000000\] exceeds", "sample", "--ckpt", wide,
                  inputs=[wide])
    big = with_metadata(tmp_path, tiny, "big.npz", unet=dict(models.load_model(tiny)[1]["unet"], image_size=4096))
    child_refused(r"big\.npz: its unet config's image_size 4096 exceeds 1024", "sample", "--ckpt", big, inputs=[big])
    assert not (tmp_path / "s.npz").exists()


def test_5_more_samples_than_memory_holds_are_refused_up_front(tmp_path, tiny):
    child_refused(r"--per-label: must be an integer in 1\.\.10000000, got '300000000'", "sample", "--ckpt", tiny,
                  "--steps", 2, "--per-label", 300000000, inputs=[tiny])
    child_refused(r"--per-label: 50000000 images of 28x28x1 would need .* GiB", "sample", "--ckpt", tiny,
                  "--steps", 2, "--per-label", 5_000_000, "--out", tmp_path / "s.npz", inputs=[tiny])
    child_refused(r"--per-label: a grid of 10 rows of 5000 images would be 300004 pixels across", "sample",
                  "--ckpt", tiny, "--steps", 2, "--per-label", 5000, "--out", tmp_path / "s.png", inputs=[tiny])
    assert not list(tmp_path.iterdir())


def test_6_a_huge_label_range_is_refused_before_it_is_expanded(tmp_path, tiny):
    err = child_refused(r"--labels: labels '0\.\.30000000' name more than 10000 labels", "sample", "--ckpt", tiny,
                        "--labels", "0..30000000", inputs=[tiny])
    assert len(err.strip().splitlines()[-1]) < 100


def test_6_out_of_range_labels_are_listed_briefly(capsys, tiny, tmp_path):
    err = refused(capsys, r"--labels \[10, 11, 12, 13, 14, \.\.\. \(9990 in all\)\] out of range: this model "
                  r"knows classes 0\.\.9", "sample", "--ckpt", tiny, "--labels", "0..9999", "--out", tmp_path / "s.npz")
    assert len(err) < 200


@pytest.mark.parametrize("args, message", [
    (["invert", "--steps", "99999999999"], r"--steps: must be an integer in 1\.\.100000"),
    (["sample", "--batch-size", "99999999999"], r"--batch-size: must be an integer in 1\.\.10000000"),
    (["sample", "--steps", "2000", "--ckpt", "{tiny}"], r"--steps 2000 is more than the model's 1000 diffusion steps"),
])
def test_6_every_count_is_bounded(capsys, tiny, args, message):
    refused(capsys, message, *[a.format(tiny=tiny) for a in args], inputs=[tiny])


@pytest.mark.parametrize("command", ["train", "train-classifier"])
def test_6_a_training_batch_is_bounded_by_the_training_set(capsys, tmp_path, monkeypatch, command):
    images, labels = np.zeros((16, 28, 28, 1), np.uint8), np.arange(16) % 10
    monkeypatch.setattr(data, "load_train_and_heldout", lambda *a, **k: ((images, labels), (images, labels)))
    out = tmp_path / ("run" if command == "train" else "c.npz")
    refused(capsys, r"--batch-size 1000000 is more than the 16 training images", command, "--batch-size", 1000000,
            "--out", out)
    assert not (tmp_path / "run" / "ckpt.npz").exists() and not (tmp_path / "c.npz").exists()


# --- tracebacks: 7-10 (11: Ctrl-C, below) ------------------------------------------------------------

def test_7_a_null_train_section_is_refused_by_name(capsys, tmp_path, tiny):
    bad = with_metadata(tmp_path, tiny, "null.npz", train=None)
    refused(capsys, r"null\.npz: its training settings \(metadata 'train'\) are a JSON NoneType, not an object",
            "sample", "--ckpt", bad, inputs=[bad])


def test_8_and_13_inversion_iterations_are_bounded(capsys):
    refused(capsys, r"--inner-steps: must be an integer in 1\.\.10000, got '99999999999'",
            "invert", "--method", "null", "--inner-steps", "99999999999")
    refused(capsys, r"--fixed-point-iterations: must be an integer in 1\.\.1000, got '99999999999'",
            "invert", "--method", "fixed_point", "--fixed-point-iterations", "99999999999")


def test_9_zero_seeds_are_refused(capsys):
    experiment_refused(capsys, r"--seeds: must be an integer in 1\.\.", "sampler-table", "--seeds", "0")


def test_10_bench_refuses_widths_no_machine_holds(capsys):
    refused(capsys, r"--channels: channels must be at most 8 widths of at most 4096, got '100000'",
            "bench", "--channels", "100000", "--repeats", "1")


def test_10_an_out_of_memory_error_is_one_line(capsys, monkeypatch):
    from minidiff import bench

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 40000000000 bytes.\nmore")

    monkeypatch.setattr(bench, "run_bench", exhausted)
    refused(capsys, r"minidiff bench: error: out of memory \(RESOURCE_EXHAUSTED: .*\); ask for less: smaller "
            r"--channels", "bench", "--repeats", "1")


# --- silent wrong results: 14-18 ---------------------------------------------------------------------

def test_14_a_16_bit_picture_reads_as_its_8_bit_original(capsys, tmp_path, tiny, no_sampling):
    from PIL import Image

    strokes = np.zeros((28, 28), np.uint8)
    strokes[4:24, 12:16], strokes[4:8, 8:20] = 255, 128
    Image.fromarray(strokes).save(tmp_path / "8.png")
    Image.fromarray(strokes.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    sources = []
    for bits in (8, 16):
        code, err = run(capsys, "invert", "--ckpt", tiny, "--image", tmp_path / f"{bits}.png", "--label", 1,
                        "--method", "ddim", "--out", tmp_path / f"{bits}.npz")
        assert code == 0, err
        with np.load(tmp_path / f"{bits}.npz") as f:
            sources.append(f["sources"])
    np.testing.assert_array_equal(sources[0], sources[1])


def test_15_a_float_picture_is_refused_by_name(capsys, tmp_path, tiny):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).random((28, 28), np.float32)).save(tmp_path / "f.tif")
    refused(capsys, r"f\.tif: its pixels are floating-point values \(mode F\)", "invert", "--ckpt", tiny,
            "--image", tmp_path / "f.tif", "--label", 1, "--out", tmp_path / "i.npz", inputs=[tmp_path / "f.tif"])
    assert not (tmp_path / "i.npz").exists()


@pytest.mark.parametrize("command", ["invert", "edit"])
def test_16_a_data_set_mismatch_is_refused(capsys, tmp_path, command):
    fashion = RELEASED / "fashion_mnist.npz"
    refused(capsys, r"--dataset mnist, but the model .*fashion_mnist\.npz was trained on fashion_mnist",
            command, "--ckpt", fashion, "--dataset", "mnist", "--index", "0:2", "--out", tmp_path / "o.npz",
            *(["--to", "3"] if command == "edit" else []), inputs=[fashion])


@pytest.mark.parametrize("args, message", [
    (["reconstruction", "--num", "-1"], r"--num: must be an integer in 1\.\.10000000, got '-1'"),  # 17
    (["reconstruction", "--num", "0"], r"--num: must be an integer in 1\.\."),  # 20
    (["inversion", "--batch", "0"], r"--batch: must be an integer in 1\.\."),  # 21
    (["reconstruction", "--steps", "10,0"], r"--steps: each of '10,0' must be an integer in 1\.\."),
    (["sampler-table", "--etas", "0,2"], r"--etas: each of '0,2' must be a number in \[0, 1\]"),
])
def test_17_20_21_the_experiments_flags_share_the_validation_layer(capsys, args, message):
    experiment_refused(capsys, message, *args)


def test_17_more_images_than_the_held_out_set_are_refused(capsys, tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    experiment_refused(capsys, r"--num 5000 is more than the 1000 held-out images", "reconstruction",
                       "--num", 5000, "--data-dir", data_dir(), "--out-dir", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_18_a_changed_T_is_caught_by_the_schedule_digest(capsys, tmp_path, tiny):
    assert checkpoint.read_metadata(tiny)["schedule_digest"]
    changed = with_metadata(tmp_path, tiny, "t10.npz", T=10)
    refused(capsys, r"t10\.npz: its schedule \(linear, T=10\) is not the one it was trained with",
            "sample", "--ckpt", changed, inputs=[changed])
    cosine = with_metadata(tmp_path, tiny, "cosine.npz", schedule="cosine")
    refused(capsys, r"cosine\.npz: its schedule \(cosine, T=1000\)", "sample", "--ckpt", cosine, inputs=[cosine])


# --- misleading messages: 19-26 ----------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["sample", "--eta", "1e308"], r"--eta: must be a number in \[0, 1\], got '1e308'"),
    (["invert", "--lr", "1e308"], r"--lr: must be a number in \[0, 10\], got '1e308'"),
])
def test_19_huge_eta_and_lr_are_refused_by_flag(capsys, args, message):
    refused(capsys, message, *args)


def test_22_a_name_with_a_folder_is_refused(capsys, tmp_path):
    experiment_refused(capsys, r"--name: must be a file name without a folder, got '\.\./\.\./evil'",
                       "diagnosis", "--name", "../../evil", "--out-dir", tmp_path / "xo")
    assert not (tmp_path / "xo").exists() and not list(tmp_path.parent.glob("evil*"))


def test_23_resuming_with_other_channels_names_the_settings(capsys, tmp_path, monkeypatch):
    from minidiff import train
    from minidiff.unet import UNetConfig

    images = np.zeros((256, 28, 28, 1), np.uint8)  # more than a batch
    labels = np.arange(256) % 10
    config = dataclasses.replace(UNetConfig.mnist(), channels=(8, 16), cross_attention_levels=(1,))  # as `train --channels 8,16` makes it
    trainer = train.Trainer(config, train.TrainConfig(), tmp_path / "run", images, labels)
    trainer.save()
    monkeypatch.setattr(data, "load_train_and_heldout", lambda *a, **k: ((images, labels), (images, labels)))
    refused(capsys, r"ckpt\.npz was written by a different configuration \(unet\.channels: \[8, 16\] in the "
            r"checkpoint, \[16, 32\] now\); use another run directory or the same settings", "train", "--out", tmp_path / "run", "--channels", "16,32",
            inputs=[tmp_path / "run"])


def test_24_a_directory_as_ckpt_is_named_as_one(capsys, tmp_path, tiny):
    (tmp_path / "run1").mkdir()
    refused(capsys, r"run1 is a directory, not a model file$", "sample", "--ckpt", tmp_path / "run1")
    shutil.copy(tiny, tmp_path / "run1" / "model.npz")
    refused(capsys, r"run1 is a directory, not a model file; the model file inside it is .*run1/model\.npz",
            "sample", "--ckpt", tmp_path / "run1", inputs=[tmp_path / "run1"])


@pytest.mark.parametrize("field, value, message", [
    ("T", -5, r"bad\.npz: its T \(diffusion steps\) must be an integer in 1\.\.100000, got -5"),
    ("T", "abc", r"bad\.npz: its T \(diffusion steps\) must be an integer in 1\.\.100000, got 'abc'"),
    ("schedule", "bogus", r"bad\.npz: its schedule 'bogus' is not one of \('linear', 'cosine'\)"),
])
def test_25_bad_schedule_metadata_names_the_file(capsys, tmp_path, tiny, field, value, message):
    bad = with_metadata(tmp_path, tiny, "bad.npz", **{field: value})
    refused(capsys, message, "sample", "--ckpt", bad, inputs=[bad])


def test_26_train_into_a_file_is_refused_before_the_data_is_read(capsys, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the data was read before --out was checked")

    monkeypatch.setattr(data, "load_train_and_heldout", never)
    (tmp_path / "afile").write_text("mine")
    err = refused(capsys, r"--out .*afile is a file, not a folder", "train", "--out", tmp_path / "afile",
                  inputs=[tmp_path / "afile"])
    assert ".write-test" not in err


def test_train_never_overwrites_a_model_it_did_not_make(capsys, tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(data, "load_train_and_heldout", lambda *a, **k: pytest.fail("data read"))
    (tmp_path / "run").mkdir()
    shutil.copy(tiny, tmp_path / "run" / "model.npz")
    refused(capsys, r"--out .*run holds a model\.npz but no ckpt\.npz", "train", "--out", tmp_path / "run",
            inputs=[tmp_path / "run"])


# --- Ctrl-C: 11-12, sent to a child process -----------------------------------------------------------

def interrupt(process, after_s: float) -> tuple[int, str, float]:
    """SIGINT to process after after_s seconds: (exit status, stderr, seconds it took to stop).
    The child is killed if it has not ended, so a failed check leaves nothing running."""
    try:
        time.sleep(after_s)
        assert process.poll() is None, process.communicate()
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        return process.returncode, err, time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def start(*args, module="minidiff"):
    """The command in a child process that takes Ctrl-C as a terminal would give it: a test run
    started in the background by a script (`pytest &`) passes SIGINT on ignored, and a Python
    started with SIGINT ignored never raises KeyboardInterrupt."""
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
def test_12_ctrl_c_stops_sample_at_once_and_leaves_nothing(tmp_path):
    process = start("sample", "--steps", 1000, "--per-label", 20, "--out", tmp_path / "s.png")
    # after the imports (up to ~22 s on a loaded 2-core machine), well inside 200 samples x 1000 steps
    status, err, seconds = interrupt(process, after_s=45)
    assert status == 130, err
    assert err.strip() == "minidiff sample: interrupted; no output is left half-written", err
    assert seconds < 5
    assert not list(tmp_path.iterdir())  # no picture, no temporary file


@pytest.mark.slow
def test_12_ctrl_c_stops_an_experiment_too(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    process = start("reconstruction", "--num", 200, "--steps", "1000", "--data-dir", data_dir(), "--out-dir",
                    tmp_path / "out", module="minidiff.experiments")
    status, err, seconds = interrupt(process, after_s=45)  # after the imports, inside the work
    assert status == 130, err
    assert err.strip().splitlines()[-1] == "minidiff.experiments reconstruction: interrupted; no output is left " \
        "half-written", err
    assert "Traceback" not in err and seconds < 5
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_11_ctrl_c_stops_train_in_one_line_and_it_resumes(tmp_path):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    run_dir = tmp_path / "run"
    common = ["train", "--data-dir", data_dir(), "--out", run_dir, "--channels", "8,16", "--batch-size", 16,
              "--ckpt-every", 5, "--log-every", 5, "--sample-every", 0, "--lr-schedule", "constant", "--no-progress"]
    process = start(*common, "--steps", 100000)
    deadline = time.monotonic() + 240
    while not (run_dir / "ckpt.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    status, err, seconds = interrupt(process, after_s=3)
    assert status == 130, err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(r"minidiff train: interrupted; .*ckpt\.npz \(step \d+\) is intact; the same command "
                        r"resumes from it", line), err
    assert "Traceback" not in err and seconds < 5
    assert not list(run_dir.glob(".*.tmp"))
    step = checkpoint.read_metadata(run_dir / "ckpt.npz")["step"]
    resumed = subprocess.run([sys.executable, "-m", "minidiff", *map(str, [*common, "--steps", step + 5])], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"starting at step {step}" in resumed.stdout and f"done: step {step + 5}" in resumed.stdout
