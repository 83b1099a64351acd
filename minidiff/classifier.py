"""Classifiers: a noisy, time-conditioned p(y | x_t, t) for classifier guidance, and a clean
evaluation classifier whose accuracy and penultimate features score generated samples.

Both are the same small residual CNN built from the U-Net's blocks (minidiff/layers.py):
conv3x3, then per level a ResBlock and a stride-2 conv, then a dense hidden layer (the feature
vector) and a linear layer to logits. The noisy one adds a timestep embedding to every
ResBlock. This module holds the network only; minidiff/classifier_train.py trains it (as
guided-diffusion's scripts/classifier_train.py does) and evaluates it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.layers import Conv3x3, GroupNorm, ResBlock, timestep_embedding


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The classifier's shape, and whether it is time-conditioned (noised)."""

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
