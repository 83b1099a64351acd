"""Classifiers: a noisy, time-conditioned p(y | x_t, t) for classifier guidance, and a clean
evaluation classifier whose accuracy and penultimate features score generated samples.

Both are the same small residual CNN built from the U-Net's blocks (ResBlock, Conv3x3,
GroupNorm): conv3x3, then per level a ResBlock and a stride-2 conv, then a dense hidden
layer (the feature vector) and a linear layer to logits. The noisy one adds a timestep embedding
to every ResBlock and is trained on q_sample'd images at uniform t, as guided-diffusion's
classifier_train.py does with --noised (Dhariwal & Nichol 2021, Sec. 4.1); the clean one sees
only data (with small random shifts as augmentation).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.tree_util import Partial
from tqdm.auto import tqdm

from minidiff import diffusion, schedules
from minidiff.unet import Conv3x3, GroupNorm, ResBlock, timestep_embedding


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 28  # input height = width
    in_channels: int = 1  # image channels
    channels: tuple[int, ...] = (16, 32, 64)  # convolution width per level, full resolution first
    num_classes: int = 10  # output classes
    noised: bool = False  # True: time-conditioned p(y | x_t, t) for guidance; False: clean
    feature_dim: int = 128  # width of the penultimate layer (the features classifier FID uses)
    emb_dim: int = 64  # width of the timestep embedding (noised only)
    num_groups: int = 8  # GroupNorm groups

    def __post_init__(self):
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"image_size={self.image_size} must be divisible by "
                             f"2**(len(channels)-1)={2 ** (len(self.channels) - 1)}")
        if any(c % self.num_groups for c in self.channels):
            raise ValueError(f"channels={self.channels} must be multiples of num_groups={self.num_groups}")


class Classifier(nnx.Module):
    """logits(x, t): (B, H, W, C), (B,) -> (B, num_classes). t is ignored unless noised."""

    def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
        self.config = config
        chs, G = config.channels, config.num_groups
        self.time_mlp = nnx.Linear(config.emb_dim, config.emb_dim, rngs=rngs) if config.noised else None
        self.conv_in = Conv3x3(config.in_channels, chs[0], rngs=rngs)
        blocks, ch = [], chs[0]
        for level, out_ch in enumerate(chs):
            blocks.append(ResBlock(ch, out_ch, config.emb_dim, G, rngs=rngs))
            ch = out_ch
            if level < len(chs) - 1:
                blocks.append(Conv3x3(ch, ch, strides=2, rngs=rngs))  # halve H, W
        self.blocks = nnx.List(blocks)
        self.norm_out = GroupNorm(ch, G)
        side = config.image_size // 2 ** (len(chs) - 1)
        self.dense = nnx.Linear(side * side * ch, config.feature_dim, rngs=rngs)
        self.head = nnx.Linear(config.feature_dim, config.num_classes, rngs=rngs)

    def features(self, x: jax.Array, t: jax.Array | None = None) -> jax.Array:
        """Penultimate features (B, feature_dim): the hidden layer before the linear head."""
        B = x.shape[0]
        if self.config.noised:
            if t is None:
                raise ValueError("a noised classifier needs the timestep t")
            emb = nnx.silu(self.time_mlp(timestep_embedding(jnp.broadcast_to(t, (B,)), self.config.emb_dim)))
        else:
            emb = jnp.zeros((B, self.config.emb_dim), x.dtype)  # no conditioning: biases only
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        h = nnx.silu(self.norm_out(h)).reshape(B, -1)  # (B, side * side * C_last)
        return nnx.silu(self.dense(h))  # (B, feature_dim)

    def __call__(self, x: jax.Array, t: jax.Array | None = None) -> jax.Array:
        return self.head(self.features(x, t))  # (B, num_classes)


def _log_prob(graphdef, params, x_t, t, y):
    logits = nnx.merge(graphdef, params)(x_t, t)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def log_prob_fn(classifier: Classifier):
    """log p(y | x_t, t) as log_prob_fn(x_t, t, y) -> (B,), for guidance.classifier_guidance."""
    graphdef, params = nnx.split(classifier)
    return Partial(partial(_log_prob, graphdef), params)


def random_shift(key, x: jax.Array, max_shift: int = 2) -> jax.Array:
    """Translate each image by up to max_shift pixels (zero = -1 padding), (B, H, W, C)."""
    B, H, W, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (B, 2), 0, 2 * max_shift + 1)
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
    """Train with AdamW (cosine-decayed lr) on images in [-1, 1] (N, H, W, C), labels (N,)."""
    from minidiff.train import batch_indices  # the same deterministic batch order

    s = schedule if schedule is not None else schedules.linear_schedule()
    graphdef, params = nnx.split(Classifier(config, rngs=nnx.Rngs(seed)))
    optimizer = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    opt_state = optimizer.init(params)
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    key = jax.random.PRNGKey(seed)
    bar = tqdm(range(steps), disable=not progress, desc="classifier", unit="step")
    for step in bar:
        idx = batch_indices(step, len(images), batch_size, seed)
        params, opt_state, loss = _train_step(params, opt_state, images[idx], labels[idx],
                                              jax.random.fold_in(key, step), s,
                                              graphdef=graphdef, optimizer=optimizer,
                                              noised=config.noised)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{float(loss):.4f}")
    return nnx.merge(graphdef, params)


@partial(jax.jit, static_argnames=("graphdef",))
def _apply(params, x, t, *, graphdef):
    model = nnx.merge(graphdef, params)
    return model(x, t), model.features(x, t)


def predict(classifier: Classifier, images, t=None, batch_size: int = 500):
    """(logits (N, K), features (N, F)) for images in [-1, 1], in batches."""
    graphdef, params = nnx.split(classifier)
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        x = jnp.asarray(images[i : i + batch_size], jnp.float32)
        tt = None if t is None else jnp.full((x.shape[0],), t, jnp.int32)
        lo, fe = _apply(params, x, tt, graphdef=graphdef)
        logits.append(np.asarray(lo))
        feats.append(np.asarray(fe))
    return np.concatenate(logits), np.concatenate(feats)


def evaluate(classifier: Classifier, images, labels, timesteps=(0, 250, 500, 750), seed: int = 0) -> dict:
    """Accuracy on clean images {"clean": acc}, or for a noised classifier on the images
    q_sample'd to each of a few timesteps {"t=250": acc, ...}."""
    from minidiff.metrics import accuracy

    if not classifier.config.noised:
        return {"clean": accuracy(predict(classifier, images)[0], labels)}
    s = schedules.linear_schedule()
    noise = jax.random.normal(jax.random.PRNGKey(seed), np.shape(images))
    result = {}
    for t in timesteps:
        x_t = diffusion.q_sample(s, jnp.asarray(images), jnp.full((len(images),), t), noise)
        result[f"t={t}"] = accuracy(predict(classifier, np.asarray(x_t), t)[0], labels)
    return result
