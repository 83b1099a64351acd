"""The blocks a caption-conditioned U-Net adds: a small text encoder and cross-attention.

    TextEncoder            tokens (B, L) -> context (B, L, D): token + position embeddings and
                           one pre-norm transformer layer          (Vaswani et al. 2017; CLIP's shape)
    CrossAttentionBlock    residual attention from pixels (queries) to the context's tokens
                           (keys, values), as in Stable Diffusion's transformer blocks
                                                                   (Rombach et al. 2022, Sec. 3.3)
    CrossControl           Prompt-to-Prompt's control of those maps, as plain arrays
    control_cross_attention   the one function that applies it      (Hertz et al. 2022, Sec. 3.2)

The encoder's self-attention is bidirectional (CLIP's is causal): with four tokens there is no
reason to hide the later words, and every token's embedding still depends on its context, so
that "seven" after "bold" is not "seven" alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

from minidiff.layers import GroupNorm


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class CrossControl:
    """Prompt-to-Prompt's cross-attention control for one batched forward pass (Hertz et al. 2022,
    Sec. 3.2). Row b's maps M_b (heads, N, L) become, with S = the maps of row source[b]
    (Control.source),

        M_b <- M_b + on[b] * (C_b - M_b),   C_b = (a * S[..., map] + (1 - a) * M_b) * scale,
        a = token_weight[b], map = token_map[b], scale = token_scale[b], all (L,) over tokens,

    and with token_normalise[b] = 1, C_b divided by its sum over the tokens:

    - word swap (P2P's AttentionReplace): map = identity, a = 1: the source's maps for every token;
    - refine (AttentionRefine, added words): map[j] = the source token that token j aligns with,
      a[j] = 1 for tokens the prompts share and 0 for new ones, which keep their own maps;
    - reweight (AttentionReweight): scale[j] = c for the reweighted word, 1 elsewhere. P2P does
      not renormalise, so a factor c > 1 adds weight (a word with share p gets c p, the others
      keep theirs); renormalised, it is a shift of that word's softmax logit by log c (its share
      becomes c p / (1 + (c - 1) p), the others' shrink in proportion).
    Row b is left alone when on[b] = 0 (the source rows and the unconditional rows).
    """

    on: jax.Array  # (B,) float32 in [0, 1]: whether row b's maps are controlled at this step
    token_map: jax.Array  # (B, L) int32: the source token whose map token j takes
    token_weight: jax.Array  # (B, L) float32 in [0, 1]: how much of it (refine's alphas)
    token_scale: jax.Array  # (B, L) float32: reweight factors (1: unchanged)
    # (B,) float32 in {0, 1}, or one value for every row: whether row b's weights are renormalised.
    # Off by default, as in the paper.
    token_normalise: jax.Array | float = 0.0


def control_cross_attention(probs: jax.Array, source: jax.Array, control: CrossControl) -> jax.Array:
    """probs (B, heads, N, L) under `control` (CrossControl's formula), rows read from rows source (B,)."""
    base = jnp.take_along_axis(probs[source], control.token_map[:, None, None, :], axis=-1)  # (B, h, N, L)
    a = control.token_weight[:, None, None, :].astype(probs.dtype)  # (B, 1, 1, L)
    controlled = (a * base + (1.0 - a) * probs) * control.token_scale[:, None, None, :]
    normalise = jnp.reshape(jnp.asarray(control.token_normalise, probs.dtype), (-1, 1, 1, 1))  # (B or 1, 1, 1, 1)
    controlled = controlled + normalise * (controlled / jnp.sum(controlled, -1, keepdims=True) - controlled)
    return probs + control.on[:, None, None, None].astype(probs.dtype) * (controlled - probs)


class TextEncoder(nnx.Module):
    """tokens (B, L) int -> context (B, L, dim): embeddings, one transformer layer, LayerNorm."""

    def __init__(self, vocab_size: int, length: int, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        # Unit-scale rows, as the label model's class table (see unet.UNet), so the tokens matter
        # from the first steps.
        self.token_embedding = nnx.Embed(vocab_size, dim, rngs=rngs,
                                         embedding_init=nnx.initializers.normal(1.0))
        self.position_embedding = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (length, dim)))
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=num_heads, in_features=dim, decode=False,
                                           keep_rngs=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * dim, dim, rngs=rngs)
        self.norm_out = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = self.token_embedding(jnp.asarray(tokens, jnp.int32)) + self.position_embedding[...]  # (B, L, D)
        h = h + self.attn(self.norm1(h))  # bidirectional self-attention over the tokens
        h = h + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(h))))  # (B, L, D)
        return self.norm_out(h)  # (B, L, D)


class CrossAttentionBlock(nnx.Module):
    """x + attention(queries from x's pixels, keys and values from the context's tokens).

    The weights are computed here, as in layers.AttentionBlock, so that a forward pass can return
    them (B, heads, H*W, L) and take controlled ones in their place (control_cross_attention)."""

    def __init__(self, ch: int, context_dim: int, num_heads: int, num_groups: int, *, rngs: nnx.Rngs):
        self.norm = GroupNorm(ch, num_groups)
        self.attn = nnx.MultiHeadAttention(num_heads=num_heads, in_features=ch, in_kv_features=context_dim,
                                           qkv_features=ch, out_features=ch, decode=False,
                                           keep_rngs=False, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array, source: jax.Array | None = None,
                 control: CrossControl | None = None):
        """x (B, H, W, C), context (B, L, D) -> (x + attention, probs (B, heads, H*W, L))."""
        B, H, W, C = x.shape
        h = self.norm(x).reshape(B, H * W, C)  # (B, N, C): one query per pixel
        q = self.attn.query(h)  # (B, N, heads, C / heads)
        k, v = self.attn.key(context), self.attn.value(context)  # (B, L, heads, C / heads)
        probs = dot_product_attention_weights(q, k)  # (B, heads, N, L): softmax over the tokens
        if control is not None:
            probs = control_cross_attention(probs, source, control)
        h = self.attn.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v))  # (B, N, C)
        return x + h.reshape(B, H, W, C), probs
