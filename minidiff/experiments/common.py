"""What every experiment starts from: the released model, its schedule, the evaluation
classifier and the held-out real images; and how results are written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from minidiff import data, evaluation, pipeline

RESULTS_DIR = Path("docs/results")


@dataclasses.dataclass
class Setup:
    model: object  # the U-Net
    schedule: object  # its noise schedule
    judge: object  # the clean evaluation classifier
    heldout: np.ndarray  # held-out real images in [-1, 1], (N, H, W, C)
    heldout_labels: np.ndarray  # (N,)
    reference: np.ndarray  # the judge's features of the held-out images (classifier-FID reference)
    dataset: str


def load_setup(ckpt=None, judge=None, data_dir=None) -> Setup:
    """The U-Net (default: released MNIST) with its data set's evaluation classifier."""
    model, meta = pipeline.load_model(ckpt)
    dataset = meta.get("train", {}).get("dataset", "mnist")
    judge_path = judge or pipeline.CHECKPOINT_DIR / f"{dataset}_classifier.npz"
    judge_model, _ = pipeline.load_model(judge_path, kind="classifier")
    if judge_model.config.noised:
        raise ValueError(f"{judge_path} is a noised classifier; the judge must be a clean evaluation classifier")
    _, (images, labels) = data.load_train_and_heldout(dataset, data_dir)
    heldout = data.to_model_range(images)
    return Setup(model, pipeline.schedule_of(meta), judge_model, heldout, np.asarray(labels),
                 evaluation.reference_features(judge_model, heldout), dataset)


def per_class_grid(images, per_label: int, show: int = 8) -> np.ndarray:
    """The first `show` samples of each class from label_grid-ordered images, (10 * show, ...)."""
    x = np.asarray(images)
    x = x.reshape(-1, per_label, *x.shape[1:])[:, :show]
    return x.reshape(-1, *x.shape[2:])


def save_json(out_dir, name: str, result: dict) -> Path:
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def log_row(row: dict) -> None:
    """Print one result row as it is measured (long experiments show progress)."""
    print(json.dumps(row), flush=True)
