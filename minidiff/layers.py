"""The building blocks that the U-Net and the classifiers share, in Flax NNX.

    timestep_embedding   sinusoidal t -> (B, dim)                  (Vaswani et al. 2017; DDPM App. B)
    GroupNorm            group normalisation                       (Wu & He 2018)
    Conv3x3              every 3x3 convolution, 'SAME' padding     (the one place to swap a kernel)
    ResBlock             GroupNorm-SiLU-conv twice, + embedding    (DDPM, after Wide ResNets)
    AttentionBlock       residual multi-head self-attention        (DDPM's 16x16 attention)
    take_rows            one row's maps or features into another   (attention control)
    Upsample             conv3x3 at low resolution, then x2 repeat

Images are NHWC: (B, H, W, C).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim).

    The Transformer's positional encoding (Vaswani et al. 2017, Sec. 3.5), used for diffusion
    timesteps by DDPM (Ho et al. 2020, Appendix B). With half = dim // 2 and
    freq_i = max_period ** (-i / half) for i = 0..half-1:

        emb(t) = [sin(t * freq_0), ..., sin(t * freq_{half-1}),
                  cos(t * freq_0), ..., cos(t * freq_{half-1})]

    so t = 0 maps to half zeros followed by half ones.
    """
    if dim % 2:
        raise ValueError(f"dim={dim} must be even")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # (half,)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]  # (B, half)
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # (B, dim)


class GroupNorm(nnx.Module):
    """Group normalisation (Wu & He 2018): normalise each sample over (H, W, C/G) per group.

        mu_g = mean of x over (H, W, channels of group g),  var_g = E[x^2] - mu_g^2
        y = scale * (x - mu_g) / sqrt(var_g + eps) + bias

    Same maths as nnx.GroupNorm, computed as per-channel moments pooled into groups, which XLA
    differentiates faster on CPU than a reduction over a (B, H*W, G, C/G) view.
    """

    def __init__(self, num_features: int, num_groups: int, *, eps: float = 1e-6):
        self.num_groups, self.eps = num_groups, eps
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        B, H, W, C = x.shape
        G = self.num_groups
        mean = jnp.mean(x, axis=(1, 2)).reshape(B, G, C // G).mean(-1)  # (B, G)
        mean_sq = jnp.mean(jnp.square(x), axis=(1, 2)).reshape(B, G, C // G).mean(-1)  # (B, G)
        inv_std = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.eps)  # (B, G)
        a = jnp.repeat(inv_std, C // G, axis=1) * self.scale[...]  # (B, C), so that y = a x + b
        b = self.bias[...] - jnp.repeat(mean, C // G, axis=1) * a  # (B, C)
        return x * a[:, None, None, :] + b[:, None, None, :]  # (B, H, W, C)


class Conv3x3(nnx.Module):
    """3x3 convolution with 'SAME' padding, NHWC. The one home of every 3x3 conv in the U-Net.

    strides=2 halves the resolution (downsampling). zero_init=True starts the kernel at zero.
    """

    def __init__(self, in_features: int, out_features: int, *, strides: int = 1,
                 zero_init: bool = False, rngs: nnx.Rngs):
        extra = {"kernel_init": nnx.initializers.zeros_init()} if zero_init else {}
        self.conv = nnx.Conv(in_features, out_features, kernel_size=(3, 3),
                             strides=(strides, strides), padding="SAME", rngs=rngs, **extra)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)  # (B, H, W, C_in) -> (B, H / strides, W / strides, C_out)


class ResBlock(nnx.Module):
    """GroupNorm, SiLU, conv3x3, + projected embedding, GroupNorm, SiLU, conv3x3, + skip.

    The residual block of DDPM (Ho et al. 2020) after Wide ResNets; the skip path is a 1x1
    convolution when the channel count changes.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, num_groups: int, *, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(in_ch, num_groups)
        self.conv1 = Conv3x3(in_ch, out_ch, rngs=rngs)
        self.emb_proj = nnx.Linear(emb_dim, out_ch, rngs=rngs)
        self.norm2 = GroupNorm(out_ch, num_groups)
        self.conv2 = Conv3x3(out_ch, out_ch, rngs=rngs)
        # 1x1 convolution on the skip path, written as a Linear on the channel axis (same maths,
        # but XLA runs it as a plain matmul, which is several times faster on CPU).
        self.skip = nnx.Linear(in_ch, out_ch, rngs=rngs) if in_ch != out_ch else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        # x: (B, H, W, C_in); emb: (B, emb_dim), already passed through SiLU.
        h = self.conv1(nnx.silu(self.norm1(x)))  # (B, H, W, C_out)
        h = h + self.emb_proj(emb)[:, None, None, :]  # broadcast (B, 1, 1, C_out)
        h = self.conv2(nnx.silu(self.norm2(h)))  # (B, H, W, C_out)
        return h + (x if self.skip is None else self.skip(x))


def take_rows(h: jax.Array, source: jax.Array, weight: jax.Array) -> jax.Array:
    """Row b of h replaced by row source[b], as far as weight[b] says: (1 - w) h[b] + w h[source[b]].

    The one operation of attention control (Prompt-to-Prompt, Hertz et al. 2022; Plug-and-Play,
    Tumanyan et al. 2023) when the source and edit branches share a batch: weight 0 leaves a
    row alone, weight 1 gives it the source row's attention maps or features. h: (B, ...);
    source: (B,) int row indices; weight: (B,) in [0, 1].
    """
    w = weight.reshape((-1,) + (1,) * (h.ndim - 1)).astype(h.dtype)  # (B, 1, ...)
    return h + w * (h[source] - h)


class AttentionBlock(nnx.Module):
    """Residual multi-head self-attention over the H*W positions (DDPM's 16x16 attention).

    The projections are nnx.MultiHeadAttention's; the attention weights are computed here, so
    that a forward pass can return them and take another row's in their place (`take`, as
    `take_rows` reads it): Prompt-to-Prompt's self-attention control.
    """

    def __init__(self, ch: int, num_heads: int, num_groups: int, *, rngs: nnx.Rngs):
        self.norm = GroupNorm(ch, num_groups)
        self.attn = nnx.MultiHeadAttention(num_heads=num_heads, in_features=ch, decode=False,
                                           keep_rngs=False, rngs=rngs)  # no dropout

    def __call__(self, x: jax.Array, take: tuple[jax.Array, jax.Array] | None = None):
        """x (B, H, W, C) -> (x + attention(x), probs), probs (B, heads, H*W, H*W) the attention
        weights used (softmax over the last axis). take = (source, weight): see take_rows."""
        B, H, W, C = x.shape
        h = self.norm(x).reshape(B, H * W, C)  # (B, N, C): one token per pixel
        q, k, v = self.attn.query(h), self.attn.key(h), self.attn.value(h)  # (B, N, heads, C / heads)
        probs = dot_product_attention_weights(q, k)  # (B, heads, N, N): softmax(q k^T / sqrt(d))
        if take is not None:
            probs = take_rows(probs, *take)
        h = self.attn.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v))  # (B, N, C)
        return x + h.reshape(B, H, W, C), probs


class Upsample(nnx.Module):
    """x2 upsampling: a 3x3 convolution at the low resolution, then nearest-neighbour repeat.

    DDPM upsamples first and convolves at the high resolution; convolving first costs 4x
    fewer FLOPs, and the next ResBlock's convolutions smooth the 2x2 blocks.
    """

    def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.conv = Conv3x3(in_ch, out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)  # (B, H, W, C_out)
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C_out)
