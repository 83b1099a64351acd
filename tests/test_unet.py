"""Tests for minidiff/unet.py: shapes, conditioning, the null class, jit, config checks.

Speed: XLA compiles every op of every new shape, so eager U-Net code costs seconds here.
The tests therefore build models from NumPy-drawn weights and run them through one jitted
apply function, and check full-size presets with abstract evaluation (shapes, no FLOPs).
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax.nnx.nn.attention import dot_product_attention_weights

from minidiff.layers import Conv3x3
from minidiff.unet import Control, UNet, UNetConfig, count_params

# A tiny U-Net (8x8 images, two levels, attention at 4x4) keeps every test fast.
TINY = UNetConfig(image_size=8, in_channels=1, channels=(8, 16), num_res_blocks=1,
                  attention=True, attention_heads=2, num_classes=3, emb_dim=16, num_groups=4)


def _random_unet(config: UNetConfig, seed: int = 0, scale: float = 0.2) -> UNet:
    """A UNet whose every parameter is N(0, scale^2), drawn by NumPy.

    Random rather than trained or default weights, so that the zero-initialised output conv
    does not hide how the output depends on its inputs.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda a: jnp.asarray(rng.normal(0.0, scale, a.shape), a.dtype), state)
    return nnx.merge(graphdef, state)


@partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, t, y=None, class_emb=None):
    """The U-Net under jit, weights passed as arguments (as the samplers and trainer do)."""
    return nnx.merge(graphdef, state)(x, t, y, class_emb)


def _eps(model: UNet, x, t, y=None, class_emb=None):
    return _apply(*nnx.split(model), x, t, y, class_emb)


def _inputs(config: UNetConfig, batch: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    S, C = config.image_size, config.in_channels
    x = jnp.asarray(rng.uniform(-1.0, 1.0, (batch, S, S, C)), jnp.float32)  # (B, H, W, C)
    t = jnp.asarray(rng.integers(0, 1000, (batch,)), jnp.int32)  # (B,)
    y = jnp.asarray(np.arange(batch) % config.num_classes, jnp.int32)  # (B,)
    return x, t, y


@pytest.fixture(scope="module")
def tiny():
    return _random_unet(TINY)


# --- shapes and presets ---------------------------------------------------------------------

@pytest.mark.parametrize("preset, shape", [("mnist", (28, 28, 1)), ("cifar", (32, 32, 3))])
def test_preset_output_shape(preset, shape):
    config = getattr(UNetConfig, preset)()
    assert (config.image_size, config.image_size, config.in_channels) == shape
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(config, rngs=nnx.Rngs(0))))
    x, t, y = _inputs(config, batch=2)
    eps = jax.eval_shape(partial(_apply, graphdef), state, x, t, y)  # shapes only, no FLOPs
    assert eps.shape == x.shape and eps.dtype == jnp.float32


def test_cifar_like_forward_is_finite():
    # The CIFAR preset's resolutions (32 -> 16 -> 8) and channels in/out, narrower for speed.
    config = dataclasses.replace(UNetConfig.cifar(), channels=(8, 16, 16), emb_dim=16,
                                 num_res_blocks=1, num_groups=4)
    x, t, y = _inputs(config, batch=2)
    eps = _eps(_random_unet(config, scale=0.1), x, t, y)
    assert eps.shape == (2, 32, 32, 3)
    assert bool(jnp.all(jnp.isfinite(eps))) and float(jnp.std(eps)) > 1e-3


def test_mnist_preset_size():
    model = nnx.eval_shape(lambda: UNet(UNetConfig.mnist(), rngs=nnx.Rngs(0)))
    assert 1_000_000 <= count_params(model) <= 2_000_000


def test_count_params_counts_every_scalar(tiny):
    assert count_params(nnx.Linear(3, 4, rngs=nnx.Rngs(0))) == 3 * 4 + 4
    # The class table has num_classes + 1 rows: the last is the null class.
    assert tiny.class_table.embedding[...].shape == (TINY.num_classes + 1, TINY.emb_dim)
    assert count_params(tiny) == sum(np.size(p) for p in jax.tree.leaves(nnx.state(tiny)))


def test_class_rows_start_at_unit_scale():
    # Labels must weigh as much as the timestep from the first step (see UNet.__init__): the
    # default Flax init (std 1/sqrt(emb_dim)) delayed class conditioning by ~400 steps on MNIST.
    model = nnx.eval_shape(lambda: UNet(UNetConfig.mnist(), rngs=nnx.Rngs(0)))
    table = UNet(dataclasses.replace(UNetConfig.mnist(), channels=(8,), attention=False),
                 rngs=nnx.Rngs(0)).class_table.embedding[...]
    assert table.shape == model.class_table.embedding.shape
    assert 0.9 < float(jnp.std(table)) < 1.1 and abs(float(jnp.mean(table))) < 0.05


def test_every_conv_goes_through_conv3x3():
    model = nnx.eval_shape(lambda: UNet(UNetConfig.mnist(), rngs=nnx.Rngs(0)))
    nodes = [node for _, node in nnx.iter_graph(model)]
    convs = [n for n in nodes if isinstance(n, nnx.Conv)]
    wrapped = {id(n.conv) for n in nodes if isinstance(n, Conv3x3)}
    assert convs and all(id(c) in wrapped for c in convs)
    assert all(c.kernel_size == (3, 3) for c in convs)


# --- conditioning ---------------------------------------------------------------------------

def test_label_changes_output(tiny):
    x, t, _ = _inputs(TINY)
    eps0 = _eps(tiny, x, t, jnp.zeros(3, jnp.int32))
    eps1 = _eps(tiny, x, t, jnp.ones(3, jnp.int32))
    assert float(jnp.max(jnp.abs(eps0 - eps1))) > 1e-3


def test_timestep_changes_output(tiny):
    x, _, y = _inputs(TINY)
    eps0 = _eps(tiny, x, jnp.full(3, 10), y)
    eps1 = _eps(tiny, x, jnp.full(3, 900), y)
    assert float(jnp.max(jnp.abs(eps0 - eps1))) > 1e-3


def test_class_emb_equals_label(tiny):
    x, t, y = _inputs(TINY)
    emb = tiny.class_embedding(y)
    assert emb.shape == (3, TINY.emb_dim)
    np.testing.assert_array_equal(_eps(tiny, x, t, class_emb=emb), _eps(tiny, x, t, y))
    # One (emb_dim,) vector is broadcast over the batch.
    same = jnp.full((3,), 2)
    np.testing.assert_array_equal(_eps(tiny, x, t, class_emb=tiny.class_embedding(same)[0]),
                                  _eps(tiny, x, t, same))


@pytest.fixture(scope="module")
def tiny_grads(tiny):
    """Loss and gradients w.r.t. (weights, class_emb) of a jitted loss: one compile, two tests."""
    x, t, y = _inputs(TINY)
    graphdef, state = nnx.split(tiny)

    @jax.jit
    def loss_and_grads(state, class_emb):
        def loss(state, class_emb):
            eps = nnx.merge(graphdef, state)(x, t, class_emb=class_emb)
            return jnp.mean((eps - x) ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1))(state, class_emb)

    loss, (grad_state, grad_emb) = loss_and_grads(state, tiny.class_embedding(y))
    return state, loss, grad_state, grad_emb


def test_gradient_wrt_class_emb(tiny_grads):
    # Null-class inversion optimises the class embedding vector by gradient descent.
    _, loss, _, grad_emb = tiny_grads
    assert np.isfinite(float(loss))
    assert grad_emb.shape == (3, TINY.emb_dim)
    assert bool(jnp.all(jnp.isfinite(grad_emb)))
    assert float(jnp.min(jnp.max(jnp.abs(grad_emb), axis=1))) > 0.0  # every sample's row


def test_no_label_means_null_class(tiny):
    assert tiny.null_class == TINY.num_classes
    x, t, _ = _inputs(TINY)
    null = jnp.full((3,), tiny.null_class)
    unconditional = _eps(tiny, x, t)
    np.testing.assert_array_equal(unconditional, _eps(tiny, x, t, null))
    real_class = _eps(tiny, x, t, jnp.zeros(3, jnp.int32))
    assert float(jnp.max(jnp.abs(unconditional - real_class))) > 1e-3


# --- jit with nnx.split / nnx.merge ---------------------------------------------------------

def test_jit_split_merge_matches_eager(tiny):
    x, t, y = _inputs(TINY)
    graphdef, state = nnx.split(tiny)

    @jax.jit
    def eps_fn(state, x, t, y):
        return nnx.merge(graphdef, state)(x, t, y)

    eager = tiny(x, t, y)  # op by op, no jit
    np.testing.assert_allclose(eps_fn(state, x, t, y), eager, rtol=1e-5, atol=1e-5)
    # Weights are arguments, not constants: new weights give a new answer without retracing.
    doubled = jax.tree.map(lambda p: 2 * p, state)
    assert float(jnp.max(jnp.abs(eps_fn(doubled, x, t, y) - eps_fn(state, x, t, y)))) > 1e-3
    assert eps_fn._cache_size() == 1


def test_jit_gradient_wrt_weights(tiny_grads):
    state, loss, grad_state, _ = tiny_grads
    assert np.isfinite(float(loss))
    grads = {jax.tree_util.keystr(path): np.asarray(g)
             for path, g in jax.tree_util.tree_leaves_with_path(grad_state)}
    assert len(grads) == len(jax.tree.leaves(state))
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    # class_emb replaced the table lookup, so only the class table gets no gradient.
    unused = [name for name, g in grads.items() if not np.any(g)]
    assert len(unused) == 1 and "class_table" in unused[0], unused


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    (dict(image_size=30), "image_size"),  # 30 is not divisible by 2**(3-1) = 4
    (dict(channels=(16, 20, 32)), "num_groups"),  # 20 is not a multiple of 8 groups
    (dict(channels=()), "channels"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(attention_heads=3), "attention_heads"),
    (dict(emb_dim=33), "emb_dim"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_config_raises(change, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(UNetConfig.mnist(), **change)


def test_wrong_input_shape_raises(tiny):
    _, t, y = _inputs(TINY)
    with pytest.raises(ValueError, match="image_size=8"):
        _eps(tiny, jnp.zeros((3, 16, 16, 1)), t, y)
    with pytest.raises(ValueError, match="in_channels=1"):
        _eps(tiny, jnp.zeros((3, 8, 8, 3)), t, y)
    with pytest.raises(ValueError, match="expects"):
        _eps(tiny, jnp.zeros((8, 8, 1)), t, y)


# --------------------------------------------------------------------------- attention control


@partial(jax.jit, static_argnums=0)
def _apply_controlled(graphdef, state, x, t, y, control):
    return nnx.merge(graphdef, state)(x, t, y, control=control, return_maps=True)


def _control(source, attention, features):
    return Control(jnp.asarray(source, jnp.int32), jnp.asarray(attention, jnp.float32),
                   jnp.asarray(features, jnp.float32))


def test_attention_block_matches_nnx_multi_head_attention(tiny):
    """The block computes its weights itself (to record and replace them); its output must be
    nnx.MultiHeadAttention's, so released weights mean what they meant."""
    block = tiny.mid_attn
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 16))
    out, probs = block(x)
    h = block.norm(x).reshape(2, 16, 16)
    expected = x + block.attn(h, deterministic=True).reshape(2, 4, 4, 16)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    weights = dot_product_attention_weights(block.attn.query(h), block.attn.key(h))
    np.testing.assert_allclose(probs, weights, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_recorded_maps_are_those_of_a_plain_forward_pass(tiny):
    x, t, y = _inputs(TINY)
    graphdef, state = nnx.split(tiny)
    plain = _eps(tiny, x, t, y)
    identity = _control(np.arange(3), np.zeros(3), np.zeros((2, 3)))
    out, maps = _apply_controlled(graphdef, state, x, t, y, identity)
    np.testing.assert_allclose(out, plain, atol=1e-6)
    assert maps.attention.shape == (3, 2, 16, 16)  # (B, heads, 4*4, 4*4)
    assert [f.shape for f in maps.features] == [(3, 4, 4, 16), (3, 8, 8, 8)]
    # each row's maps are its own: the same as the maps of that row run alone
    _, alone = _apply_controlled(graphdef, state, x[1:2], t[1:2], y[1:2],
                                 _control([0], [0.0], np.zeros((2, 1))))
    np.testing.assert_allclose(maps.attention[1:2], alone.attention, atol=1e-6)
    np.testing.assert_allclose(maps.features[1][1:2], alone.features[1], atol=1e-5)


def test_control_takes_the_source_rows_maps(tiny):
    """Row 1 takes row 0's attention weights (and then its features): what it records is row
    0's, its output changes, and rows that take nothing are unchanged."""
    x, t, y = _inputs(TINY)
    graphdef, state = nnx.split(tiny)
    plain, own = _apply_controlled(graphdef, state, x, t, y, _control(np.arange(3), np.zeros(3), np.zeros((2, 3))))
    attn, got = _apply_controlled(graphdef, state, x, t, y, _control([0, 0, 2], [0, 1, 0], np.zeros((2, 3))))
    np.testing.assert_allclose(got.attention[1], own.attention[0], atol=1e-6)
    np.testing.assert_allclose(attn[np.array([0, 2])], plain[np.array([0, 2])], atol=1e-6)
    assert float(jnp.max(jnp.abs(attn[1] - plain[1]))) > 1e-4
    feats, got = _apply_controlled(graphdef, state, x, t, y, _control([0, 0, 2], [0, 1, 0], [[0, 1, 0], [0, 1, 0]]))
    np.testing.assert_allclose(got.features[1][1], own.features[1][0], atol=1e-6)
    # with every feature of row 0 taken at the last level, row 1's output is row 0's
    np.testing.assert_allclose(feats[1], plain[0], atol=1e-5)
