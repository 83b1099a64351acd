"""Tests for minidiff/layers.py: the timestep embedding, GroupNorm and Conv3x3 against closed
forms and NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.layers import Conv3x3, GroupNorm, timestep_embedding


def test_output_conv_starts_at_zero():
    # eps_pred = 0 at initialisation: the final conv's kernel and bias start at zero.
    conv = Conv3x3(4, 1, zero_init=True, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 4)), jnp.float32)
    np.testing.assert_array_equal(conv(x), 0.0)
    assert float(jnp.abs(Conv3x3(4, 1, rngs=nnx.Rngs(0))(x)).max()) > 0.0


# --- timestep embedding ---------------------------------------------------------------------

def test_timestep_embedding_known_values():
    emb = timestep_embedding(jnp.array([0, 1]), 4)
    assert emb.shape == (2, 4)
    np.testing.assert_allclose(emb[0], [0.0, 0.0, 1.0, 1.0])  # t = 0: sin 0, cos 0
    # dim 4: half = 2, frequencies 10000^(-0/2) = 1 and 10000^(-1/2) = 0.01.
    np.testing.assert_allclose(emb[1], [np.sin(1.0), np.sin(0.01), np.cos(1.0), np.cos(0.01)],
                               rtol=1e-6)


def test_timestep_embedding_distinct_and_bounded():
    emb = np.asarray(timestep_embedding(jnp.arange(1000), 64))
    assert emb.shape == (1000, 64)
    assert np.all(np.abs(emb) <= 1.0)
    d2 = np.sum(emb**2, 1)[:, None] + np.sum(emb**2, 1)[None, :] - 2 * emb @ emb.T
    off_diagonal = d2[~np.eye(1000, dtype=bool)]
    assert off_diagonal.min() > 1e-4  # no two timesteps share an embedding
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(jnp.arange(3), 5)


# --- group normalisation ---------------------------------------------------------------------

def test_group_norm_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (2, 5, 5, 8)).astype(np.float32)  # (B, H, W, C), mean far from 0
    norm = GroupNorm(8, 4)
    scale, bias = rng.normal(size=8), rng.normal(size=8)
    nnx.update(norm, nnx.State({"scale": jnp.asarray(scale, jnp.float32),
                                "bias": jnp.asarray(bias, jnp.float32)}))
    groups = x.astype(np.float64).reshape(2, 5, 5, 4, 2)  # 4 groups of 2 channels
    mu = groups.mean(axis=(1, 2, 4), keepdims=True)
    var = groups.var(axis=(1, 2, 4), keepdims=True)
    expected = ((groups - mu) / np.sqrt(var + 1e-6)).reshape(x.shape) * scale + bias
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)
