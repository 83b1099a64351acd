"""Scoring a trained U-Net's samples with the clean evaluation classifier.

Draws class-conditional samples (equal numbers per class), then reports how often the
classifier assigns them the class they were asked for, the classifier FID against real
held-out images, and the within-class feature diversity (see minidiff.metrics).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from minidiff import classifier, metrics, pipeline


def evaluate_samples(model, s, judge, *, per_label: int = 20, guidance_scale: float = 3.0,
                     steps: int = 50, eta: float = 0.0, sampler: str = "ddim", seed: int = 0,
                     reference_images=None, batch_size: int = 250) -> dict:
    """Sample per_label images of every class and score them with the classifier judge.

    reference_images (N, H, W, C) in [-1, 1], when given, adds the classifier FID of the
    samples against them. Returns a dict of plain numbers (JSON-ready).
    """
    labels = pipeline.label_grid(model.config.num_classes, per_label)
    start = time.perf_counter()
    images = []
    for i, chunk in enumerate(np.array_split(labels, max(1, len(labels) // batch_size))):
        images.append(np.asarray(pipeline.generate(
            model, s, chunk, jax.random.PRNGKey(seed * 1000 + i), sampler=sampler, steps=steps,
            eta=eta, guidance_scale=guidance_scale)))
    images = np.concatenate(images)
    seconds = time.perf_counter() - start
    logits, features = classifier.predict(judge, images)
    result = {
        "num_samples": int(len(labels)), "guidance": guidance_scale, "sampler": sampler,
        "steps": steps, "eta": eta, "accuracy": metrics.accuracy(logits, labels),
        "diversity": metrics.diversity(features, labels), "sampling_seconds": round(seconds, 1),
    }
    if reference_images is not None:
        _, ref_features = classifier.predict(judge, reference_images)
        result["classifier_fid"] = metrics.feature_fid(features, ref_features)
    return result
