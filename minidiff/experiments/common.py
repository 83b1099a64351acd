"""What every experiment shares: where results go, and how they are written.

Every experiment starts from an evaluation.Setup (the model, its schedule, the evaluation
classifier and the held-out real images), made by evaluation.load_setup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minidiff.files import write_json

RESULTS_DIR = Path("docs/results")


def per_class_grid(images, per_label: int, show: int = 8) -> np.ndarray:
    """The first `show` samples of each class from label_grid-ordered images, (10 * show, ...)."""
    x = np.asarray(images)
    x = x.reshape(-1, per_label, *x.shape[1:])[:, :show]  # (classes, show, H, W, C)
    return x.reshape(-1, *x.shape[2:])


def save_json(out_dir, name: str, result: dict) -> Path:
    """Write result to out_dir/NAME.json (valid JSON: NaN becomes null), atomically."""
    return write_json(Path(out_dir) / f"{name}.json", result)


def log_row(row: dict) -> None:
    """Print one result row as it is measured (long experiments show progress)."""
    print(json.dumps(row), flush=True)
