"""Scoring a trained U-Net's samples with the clean evaluation classifier.

Draws class-conditional samples (equal numbers per class), then reports how often the
classifier assigns them the class they were asked for, the classifier FID against real
held-out images, and the within-class feature diversity (see minidiff.metrics).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from tqdm.auto import tqdm

from minidiff import classifier, metrics, pipeline


def draw_samples(model, s, per_label: int, *, seed: int = 0, batch_size: int = 250,
                 progress: bool = False, **sampling):
    """(images (N, H, W, C), labels (N,), seconds): per_label samples of every class, drawn in
    batches with pipeline.generate(**sampling). The seed fixes the noise, batch by batch."""
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    labels = pipeline.label_grid(model.config.num_classes, per_label)
    chunks = np.array_split(labels, max(1, -(-len(labels) // batch_size)))
    start, images = time.perf_counter(), []
    for i, chunk in enumerate(tqdm(chunks, disable=not progress, desc="sampling", unit="batch")):
        images.append(np.asarray(pipeline.generate(model, s, chunk, jax.random.PRNGKey(seed * 1000 + i),
                                                   **sampling)))
    return np.concatenate(images), labels, time.perf_counter() - start


def score_samples(judge, images, labels, reference_features=None) -> dict:
    """Accuracy and diversity under the judge; classifier FID against reference_features
    (the judge's features of real images) when given. Plain numbers, JSON-ready."""
    logits, features = classifier.predict(judge, images)
    result = {"num_samples": len(labels), "accuracy": metrics.accuracy(logits, labels),
              "diversity": metrics.diversity(features, labels)}
    if reference_features is not None:
        result["classifier_fid"] = metrics.feature_fid(features, reference_features)
    return result


def reference_features(judge, images) -> np.ndarray:
    """The judge's penultimate features of real images in [-1, 1]: the FID reference."""
    return classifier.predict(judge, images)[1]

