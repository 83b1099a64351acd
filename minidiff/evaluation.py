"""Scoring a trained U-Net's samples with the clean evaluation classifier.

Draws class-conditional samples (equal numbers per class), then reports how often the
classifier assigns them the class they were asked for, the classifier FID against real
held-out images, and the within-class feature diversity (see minidiff.metrics).

    setup = load_setup()                                  # released model, judge, held-out data
    images, labels, _ = draw_samples(setup.model, setup.schedule, per_label=20, guidance_scale=3)
    score_samples(setup.judge, images, labels, setup.reference)
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from minidiff import data, metrics, models, pipeline
from minidiff.classifier import Classifier
from minidiff.schedules import Schedule
from minidiff.unet import UNet


@partial(jax.jit, static_argnames=("graphdef",))
def _apply(params, x, t, *, graphdef):
    model = nnx.merge(graphdef, params)
    return model(x, t), model.features(x, t)


def predict(classifier: Classifier, images, t=None, batch_size: int = 500):
    """(logits (N, K), features (N, F)) of a classifier on images (N, H, W, C) in [-1, 1], in
    batches; t (an int) is the timestep of a noised classifier's inputs."""
    graphdef, params = nnx.split(classifier)
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        x = jnp.asarray(images[i : i + batch_size], jnp.float32)
        tt = None if t is None else jnp.full((x.shape[0],), t, jnp.int32)
        lo, fe = _apply(params, x, tt, graphdef=graphdef)
        logits.append(np.asarray(lo))
        feats.append(np.asarray(fe))
    return np.concatenate(logits), np.concatenate(feats)


def draw_samples(model: UNet, s: Schedule, per_label: int, *, seed: int = 0, batch_size: int = 250,
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


def score_samples(judge: Classifier, images, labels, reference_features=None) -> dict:
    """Accuracy and diversity under the judge; classifier FID against reference_features
    (the judge's features of real images) when given. Plain numbers, JSON-ready."""
    logits, features = predict(judge, images)
    result = {"num_samples": len(labels), "accuracy": metrics.accuracy(logits, labels),
              "diversity": metrics.diversity(features, labels),
              "pixels_outside_range": metrics.out_of_range_fraction(images),
              "background_noise": metrics.background_noise(images)}
    if reference_features is not None:
        result["classifier_fid"] = metrics.feature_fid(features, reference_features)
    return result


def real_data_scores(setup: "Setup", num: int) -> dict:
    """What real digits score on the same measures: the held-out images' out-of-range fraction
    and background noise, and the classifier FID of `num` real training images against the
    held-out reference, the floor that a perfect model's samples would reach."""
    train = data.to_model_range(setup.train_images[:num])
    return {"num_train_images": len(train),
            "classifier_fid": metrics.feature_fid(reference_features(setup.judge, train), setup.reference),
            "pixels_outside_range": metrics.out_of_range_fraction(setup.heldout),
            "background_noise": metrics.background_noise(setup.heldout)}


def unseen_floor(setup: "Setup", num: int) -> tuple["Setup", float]:
    """A calibrated classifier FID for samples of size num: the setup with its reference cut to
    the held-out images from num on, and the floor, the FID of the first num held-out images
    (real digits neither the model nor the judge trained on) against that same reference. A
    sample set of num images that scores the floor is as close to real as num real digits are."""
    if not 0 < num < len(setup.heldout):
        raise ValueError(f"num must lie in 1..{len(setup.heldout) - 1} (held-out images), got {num}")
    reference = reference_features(setup.judge, setup.heldout[num:])
    floor = metrics.feature_fid(reference_features(setup.judge, setup.heldout[:num]), reference)
    return dataclasses.replace(setup, reference=reference), floor


def reference_features(judge: Classifier, images) -> np.ndarray:
    """The judge's penultimate features of real images in [-1, 1]: the FID reference."""
    return predict(judge, images)[1]


@dataclasses.dataclass
class Setup:
    """What scoring (and every experiment) starts from."""

    model: UNet  # the U-Net
    schedule: Schedule  # its noise schedule
    judge: Classifier  # the clean evaluation classifier
    heldout: np.ndarray  # held-out real images in [-1, 1], (N, H, W, C)
    heldout_labels: np.ndarray  # (N,)
    reference: np.ndarray  # the judge's features of the held-out images (classifier-FID reference)
    dataset: str
    train_images: np.ndarray  # the training images, uint8 (N, H, W, C): real data's scores
    train_labels: np.ndarray  # (N,)


def judge_path(dataset: str):
    """The released clean evaluation classifier of a data set."""
    return models.CHECKPOINT_DIR / f"{dataset}_classifier.npz"


def load_setup(ckpt=None, judge=None, data_dir=None) -> Setup:
    """The U-Net (default: released MNIST) with its data set's evaluation classifier."""
    model, meta = models.load_model(ckpt)
    dataset = models.dataset_of(meta) or "mnist"  # files from before datasets were recorded: MNIST
    path = judge or judge_path(dataset)
    judge_model, judge_meta = models.load_model(path, kind="classifier")
    models.check_same_dataset(dataset, judge_meta, path, "the judge")
    if judge_model.config.noised:
        raise ValueError(f"{path} is a noised classifier; the judge must be a clean evaluation classifier")
    (train_images, train_labels), (images, labels) = data.load_train_and_heldout(dataset, data_dir)
    heldout = data.to_model_range(images)
    return Setup(model, models.schedule_of(meta), judge_model, heldout, np.asarray(labels),
                 reference_features(judge_model, heldout), dataset, train_images, np.asarray(train_labels))
