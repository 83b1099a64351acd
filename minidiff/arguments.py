"""The command line's value types: each parses one flag and refuses a bad value up front.

argparse turns an ArgumentTypeError into `minidiff CMD: error: argument --lr: must be a positive,
finite number, got 'nan'` and exit code 2, before any model is loaded or data read. The library
checks the same bounds again where it is called directly (TrainConfig, null_class_inversion, ...).
Counts have upper bounds too, so that no flag can ask for more memory or time than a machine has;
what depends on the model (its classes, its image size) is checked by check_sample_count and
check_labels once the model file's metadata is read, still before any work. The experiments'
parser (minidiff/experiments/__main__.py) uses the same types.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from minidiff.files import run_interruptibly

MAX_STEPS = 100_000  # sampling steps (a model's own T, at most models.MAX_T, bounds them further)
MAX_INNER_STEPS = 10_000  # null-class inversion's Adam steps per sampling step (the default is 50)
MAX_ITERATIONS = 1_000  # fixed-point iterations per inverse DDIM step (the default is 5)
MAX_COUNT = 10_000_000  # any other count flag (images, samples, batch size, seeds)
MAX_LABELS = 10_000  # entries of --labels, refused before a range is expanded
MAX_CHANNELS = 4096  # U-Net width per level (Stable Diffusion's widest is 1280)
MAX_LEVELS = 8  # U-Net resolution levels
MAX_LR = 10.0  # null-class inversion's relative Adam step (the default is 0.1)
PICTURE_PIXELS = 2**16 - 1  # matplotlib's limit on a PNG's width and height


def _number(convert, ok, requirement: str):
    """An argparse type: convert the text, then require ok(value)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    parse.__name__ = requirement
    return parse


def bounded_int(low: int, high: int):
    """An argparse type for an integer in low..high."""
    return _number(int, lambda v: low <= v <= high, f"an integer in {low}..{high}")


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
count = bounded_int(1, MAX_COUNT)  # images, samples, seeds, a batch size
steps = bounded_int(1, MAX_STEPS)
inner_steps = bounded_int(1, MAX_INNER_STEPS)
iterations = bounded_int(1, MAX_ITERATIONS)
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
seed = _number(int, lambda v: 0 <= v < 2**32, "an integer in 0..2**32-1")
finite_float = _number(float, math.isfinite, "a finite number")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive, finite number")
nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
probability = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
below_one = _number(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")  # EMA decay, a percentile
relative_lr = _number(float, lambda v: 0.0 <= v <= MAX_LR, f"a number in [0, {MAX_LR:g}]")


def _comma_list(item, what: str):
    """An argparse type for 'a,b,c', each parsed by the argparse type `item`."""

    def parse(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(","))
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"each of {text!r} {err}") from None

    parse.__name__ = f"comma-separated {what}"
    return parse


steps_list = _comma_list(steps, "step counts")
iterations_list = _comma_list(bounded_int(0, MAX_ITERATIONS), "iteration counts")
finite_floats = _comma_list(finite_float, "numbers")
probabilities = _comma_list(probability, "numbers in [0, 1]")


def file_name(text: str) -> str:
    """A bare file name (no folder, no path separator), such as an experiment's NAME."""
    if not text or text in (".", "..") or "/" in text or os.sep in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a file name without a folder, got {text!r}")
    return text


def labels(text: str) -> list[int]:
    """'0..9' -> [0, ..., 9]; '3,5,7' -> [3, 5, 7]; '4' -> [4]. An empty range is refused, and so
    is one of more than MAX_LABELS labels (before it is expanded)."""
    too_many = argparse.ArgumentTypeError(f"labels {_short(text)} name more than {MAX_LABELS} labels")
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            if hi - lo >= MAX_LABELS:
                raise too_many
            values = list(range(lo, hi + 1))
        else:
            if text.count(",") >= MAX_LABELS:
                raise too_many
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels must look like '0..9' or '1,4,7', got {_short(text)}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty range: the first label must not exceed the last")
    return values


def _short(text: str, limit: int = 40) -> str:
    """repr(text), cut to about `limit` characters: messages stay one short line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def check_labels(labels: list[int], num_classes: int, what: str) -> list[int]:
    """labels, if every one is a class of the model; else a ValueError naming the flag (and at
    most five of the bad labels)."""
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(f"{what} [{shown}] out of range: this model knows classes 0..{num_classes - 1}")
    return labels


def inputs_of(args) -> dict:
    """{flag: path} of the files a command reads that an output could be mistaken for: its model
    files (the released model when --ckpt is not given) and --image. No output may be one of them."""
    from minidiff import models

    return {"--ckpt": getattr(args, "ckpt", None) or models.DEFAULT_CHECKPOINT,
            **{flag: getattr(args, flag[2:], None) for flag in ("--classifier", "--judge", "--image")}}


def check_steps(steps, s, flag: str = "--steps") -> None:
    """Refuse more sampling steps (an int, a tuple of them, or None) than the schedule s has (its
    T), naming the flag."""
    for value in steps if isinstance(steps, tuple) else (steps,):
        if value is not None and value > s.num_timesteps:
            raise ValueError(f"{flag} {value} is more than the model's {s.num_timesteps} diffusion steps")


def check_batch_size(batch_size: int, num_images: int) -> None:
    """Refuse a training batch larger than the training set (each batch is drawn without repeats)."""
    if batch_size > num_images:
        raise ValueError(f"--batch-size {batch_size} is more than the {num_images} training images")


def memory_bytes() -> int:
    """The machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_sample_count(rows: int, per_row: int, image_shape: tuple, flag: str, picture: bool) -> int:
    """rows * per_row, the images a command will draw, if they fit: their float32 arrays (three
    copies: the batches, the raw values, the clipped ones) in a quarter of the machine's memory,
    and, for a picture (one row of per_row images each), in a PNG's largest width and height.
    Else a ValueError naming `flag`, before any work."""
    total = rows * per_row
    needed = 3 * 4 * total * math.prod(image_shape)
    if needed > memory_bytes() // 4:
        raise ValueError(f"{flag}: {total} images of {'x'.join(map(str, image_shape))} would need "
                         f"{needed / 2**30:.1f} GiB, more than a quarter of this machine's "
                         f"{memory_bytes() / 2**30:.0f} GiB; ask for fewer")
    if picture:
        height, width = image_shape[:2]
        size = 2 * (max(rows * (height + 2), per_row * (width + 2)) + 2)  # save_grid: 2 px padding, scale 2
        if size > PICTURE_PIXELS:
            raise ValueError(f"{flag}: a grid of {rows} rows of {per_row} images would be {size} pixels "
                             f"across, more than a PNG picture holds ({PICTURE_PIXELS}); write .npz instead")
    return total


def _int_tuple(text: str, what: str, example: str, minimum: int) -> tuple[int, ...]:
    """'a,b,c' -> (a, b, c), each an integer >= minimum."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must look like '{example}', got {text!r}") from None
    if any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {text!r}")
    return values


def channels(text: str) -> tuple[int, ...]:
    """'16,48,128' -> (16, 48, 128): the U-Net's width per resolution level (each at most
    MAX_CHANNELS, at most MAX_LEVELS levels)."""
    values = _int_tuple(text, "channels", "16,48,128", 1)
    if len(values) > MAX_LEVELS or max(values) > MAX_CHANNELS:
        raise argparse.ArgumentTypeError(f"channels must be at most {MAX_LEVELS} widths of at most "
                                         f"{MAX_CHANNELS}, got {_short(text)}")
    return values


def resolution_levels(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): U-Net resolution levels (0 = full resolution), each named once."""
    values = _int_tuple(text, "levels", "0,1,2", 0)
    if len(values) > MAX_LEVELS or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"levels must be at most {MAX_LEVELS} distinct levels, got {_short(text)}")
    return tuple(sorted(values))


def index(text: str) -> slice:
    """'0:100' -> slice(0, 100); '7' -> slice(7, 8). Empty or negative selections are refused."""
    try:
        if ":" in text:
            lo, hi = text.split(":")
            selection = slice(int(lo or 0), int(hi))
        else:
            selection = slice(int(text), int(text) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"index must look like '0:100' or '7', got {text!r}") from None
    if selection.start < 0 or selection.stop <= selection.start:
        raise argparse.ArgumentTypeError(f"index {text!r} selects nothing: use START:STOP with 0 <= START < STOP")
    return selection


def levels(text: str) -> tuple[int, ...]:
    """'0,2' -> (0, 2): decoder levels (0 the deepest); 'none' or '' -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return _int_tuple(text, "levels", "0,2' or 'none", 0)


def reweight(text: str) -> tuple[str, float]:
    """WORD=FACTOR, e.g. bold=2: Prompt-to-Prompt's reweighting of one word's attention."""
    word, sep, factor = text.partition("=")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if not sep or not word or value is None or not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected WORD=FACTOR with a finite FACTOR >= 0, e.g. bold=2; got {text!r}")
    return word.lower(), value


def run_command(prog: str, work, interrupted=lambda: "no output is left half-written") -> int:
    """Run work() (files.run_interruptibly) as command `prog` of a command line; its exit status.

    A ValueError or OSError (a bad file, a bad value, a full disk) is one line `PROG: error: ...`
    and status 2; so is XLA's out-of-memory error. Ctrl-C prints `PROG: interrupted; ...` with
    interrupted()'s words and ends the process at once with status 130 (exit_interrupted)."""
    try:
        run_interruptibly(work)
    except (ValueError, OSError) as err:  # incl. CheckpointError, DatasetError, TrainingDiverged, full disks
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        exit_interrupted(prog, interrupted())
    except Exception as err:
        if "RESOURCE_EXHAUSTED" not in str(err):  # XLA's out-of-memory error; anything else is a bug
            raise
        print(f"{prog}: error: out of memory ({str(err).splitlines()[0][:160]}); ask for less: smaller "
              "--channels, --batch-size or counts", file=sys.stderr)
        return 2
    return 0


def exit_interrupted(prog: str, what: str) -> None:
    """After a Ctrl-C: `PROG: interrupted; WHAT` on stderr, and the process ends with status 130
    at once, without waiting for the worker thread's JAX call (os._exit, after flushing)."""
    print(f"{prog}: interrupted; {what}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)
