"""Training and evaluating the classifiers of minidiff/classifier.py.

The noisy classifier p(y | x_t, t) is trained on q_sample'd images at uniform t, as
guided-diffusion's scripts/classifier_train.py does with --noised (Dhariwal & Nichol 2021,
Sec. 4.1); the clean evaluation classifier sees only data, with small random shifts as
augmentation. Both use AdamW with a cosine-decayed learning rate and the deterministic batch
order of U-Net training (data.batch_indices).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from minidiff import data, diffusion, metrics, schedules
from minidiff.classifier import Classifier, ClassifierConfig
from minidiff.evaluation import predict


def random_shift(key, x: jax.Array, max_shift: int = 2) -> jax.Array:
    """Translate each image by up to max_shift pixels (zero = -1 padding), (B, H, W, C)."""
    B, H, W, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (B, 2), 0, 2 * max_shift + 1)  # (B, 2): top-left corner
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (H, W, img.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


@partial(jax.jit, static_argnames=("graphdef", "optimizer", "noised"), donate_argnums=(0, 1))
def _train_step(params, opt_state, x0, y, key, s, *, graphdef, optimizer, noised: bool):
    key_shift, key_t, key_eps = jax.random.split(key, 3)
    if noised:  # x_t ~ q(x_t | x_0) at uniform t
        t = jax.random.randint(key_t, (x0.shape[0],), 0, s.num_timesteps)
        x = diffusion.q_sample(s, x0, t, jax.random.normal(key_eps, x0.shape))
    else:
        t, x = None, random_shift(key_shift, x0)

    def loss_fn(p):
        logits = nnx.merge(graphdef, p)(x, t)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def train_classifier(config: ClassifierConfig, images, labels, *, steps: int = 2000,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     schedule: schedules.Schedule | None = None, progress: bool = True) -> Classifier:
    """Train with AdamW (cosine-decayed lr) on images in [-1, 1] (N, H, W, C), labels (N,).

    A noised classifier sees q_sample'd images under `schedule` (default: the linear DDPM one,
    that of the released U-Nets); it must be the schedule of the U-Net it will guide."""
    if steps < 1 or batch_size < 1 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"need steps >= 1, batch_size >= 1 and a positive, finite lr; got "
                         f"steps={steps}, batch_size={batch_size}, lr={lr}")
    s = schedule if schedule is not None else schedules.linear_schedule()
    graphdef, params = nnx.split(Classifier(config, rngs=nnx.Rngs(seed)))
    optimizer = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    key = jax.random.PRNGKey(seed)
    bar = tqdm(range(steps), disable=not progress, desc="classifier", unit="step")
    for step in bar:
        idx = data.batch_indices(step, len(images), batch_size, seed)
        params, opt_state, loss = _train_step(params, opt_state, images[idx], labels[idx],
                                              jax.random.fold_in(key, step), s,
                                              graphdef=graphdef, optimizer=optimizer,
                                              noised=config.noised)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
    if not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params)):
        raise ValueError(f"classifier training diverged: its weights are NaN or infinite after {steps} "
                         f"steps at lr {lr} (final loss {float(loss)}); try a smaller lr")
    return nnx.merge(graphdef, params)


def evaluate(classifier: Classifier, images, labels, timesteps=(0, 250, 500, 750), seed: int = 0,
             schedule: schedules.Schedule | None = None) -> dict:
    """Accuracy on clean images {"clean": acc}, or for a noised classifier on the images
    q_sample'd (under `schedule`, default linear) to each of a few timesteps {"t=250": acc, ...}."""
    if not classifier.config.noised:
        return {"clean": metrics.accuracy(predict(classifier, images)[0], labels)}
    s = schedule if schedule is not None else schedules.linear_schedule()
    noise = jax.random.normal(jax.random.PRNGKey(seed), np.shape(images))
    result = {}
    for t in timesteps:
        x_t = diffusion.q_sample(s, jnp.asarray(images), jnp.full((len(images),), t), noise)
        result[f"t={t}"] = metrics.accuracy(predict(classifier, np.asarray(x_t), t)[0], labels)
    return result
