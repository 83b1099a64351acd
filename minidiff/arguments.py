"""The command line's value types: each parses one flag and refuses a bad value up front.

argparse turns an ArgumentTypeError into `minidiff CMD: error: argument --lr: must be a positive,
finite number, got 'nan'` and exit code 2, before any model is loaded or data read. The library
checks the same bounds again where it is called directly (TrainConfig, null_class_inversion, ...).
"""

from __future__ import annotations

import argparse
import math


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


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
seed = _number(int, lambda v: 0 <= v < 2**32, "an integer in 0..2**32-1")
finite_float = _number(float, math.isfinite, "a finite number")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive, finite number")
nonnegative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
probability = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
below_one = _number(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")  # EMA decay, a percentile


def labels(text: str) -> list[int]:
    """'0..9' -> [0, ..., 9]; '3,5,7' -> [3, 5, 7]; '4' -> [4]. An empty range is refused."""
    try:
        if ".." in text:
            lo, hi = text.split("..")
            values = list(range(int(lo), int(hi) + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels must look like '0..9' or '1,4,7', got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty range: the first label must not exceed the last")
    return values


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
    """'16,48,128' -> (16, 48, 128): the U-Net's width per resolution level."""
    return _int_tuple(text, "channels", "16,48,128", 1)


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
