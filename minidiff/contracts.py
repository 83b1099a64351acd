"""The function types the maths passes around, with their shapes.

Samplers, guidance and inversion never see a network: they take one of these functions. The
U-Net becomes one in minidiff/pipeline.py, the exact Gaussian-mixture model in
minidiff/analytic.py, and a test can write its own in one line. Any callable with the right
signature is accepted; the library wraps it in `jax.tree_util.Partial` so that the arrays
it closes over (network weights, guidance scales) reach jitted loops as arguments.

Shapes: x_t (B, H, W, C) float32 (or (B, D) for vector data), t (B,) int32 timestep indices
0..T-1, y (B,) int32 labels (the null class included) or, for a caption model, (B, L) int32
prompt tokens; emb (B, D) float32 class embeddings or a caption model's (B, L, D) encoded prompts.
Notation: docs/notation.md.
"""

from __future__ import annotations

from typing import Protocol

import jax


class EpsFn(Protocol):
    """eps_theta(x_t, t, y) -> eps (B, H, W, C): the predicted noise in x_t (Ho et al. 2020, Eq. 14).

    y may be None for an unconditional model."""

    def __call__(self, x_t: jax.Array, t: jax.Array, y: jax.Array | None) -> jax.Array: ...


class LogProbFn(Protocol):
    """log p(y | x_t, t) -> (B,): a noisy classifier's log-probability of label y
    (Dhariwal & Nichol 2021, Sec. 4), differentiated with respect to x_t by classifier guidance."""

    def __call__(self, x_t: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array: ...


class EmbEpsFn(Protocol):
    """eps_theta(x_t, t, emb) -> eps (B, H, W, C): the noise predictor conditioned on a class
    embedding vector emb (B, D) instead of a label, so that null-class inversion can optimise
    the embedding (Mokady et al. 2023, Algorithm 1)."""

    def __call__(self, x_t: jax.Array, t: jax.Array, emb: jax.Array) -> jax.Array: ...


class ControlledEmbEpsFn(Protocol):
    """eps_theta(x_t, t, emb, source, attention, features, cross) -> eps (B, H, W, C): an EmbEpsFn
    whose forward pass is under attention control (Prompt-to-Prompt, Hertz et al. 2022;
    Plug-and-Play, Tumanyan et al. 2023). Row b takes row source[b]'s self-attention weights
    as far as attention[b] (B,) says, and its decoder features at level l as far as
    features[l, b] (levels, B) says; a row whose source is itself is left alone. cross is None,
    or for a caption model the arrays (on (B,), token_map (B, L), token_weight (B, L),
    token_scale (B, L)) of text_layers.CrossControl, which control its cross-attention maps.
    Made from the U-Net by minidiff.pipeline.unet_controlled_fn; used by minidiff/editing.py."""

    def __call__(self, x_t: jax.Array, t: jax.Array, emb: jax.Array, source: jax.Array,
                 attention: jax.Array, features: jax.Array, cross: tuple | None = None) -> jax.Array: ...
