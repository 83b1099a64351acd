import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from minidiff import editing, inversion, metrics, models, pipeline, samplers, schedules
from tests.helpers import TINY_UNET, randomised_unet

S = schedules.linear_schedule(1000)
TS = samplers.make_timesteps(1000, 10)
W = 7.5


@pytest.fixture(scope="module")
def tiny():
    """A tiny U-Net whose output layer is randomised, so eps depends on x, t and the class."""
    model = randomised_unet(TINY_UNET)
    emb_fn, table = pipeline.unet_embedding_fns(model)
    x0 = jnp.tanh(2 * jax.random.normal(jax.random.PRNGKey(2), (4, 28, 28, 1)))  # image-like range
    y = jnp.array([1, 3, 5, 7])
    return model, emb_fn, table, x0, y


def test_null_class_inversion_beats_plain_ddim_inversion_under_strong_guidance(tiny):
    model, emb_fn, table, x0, y = tiny
    null = table[model.null_class]
    # Plain DDIM inversion with the same guidance, then sampling back.
    plain = inversion.embedding_cfg_eps_fn(emb_fn, W, table[y], null)
    plain_rec = samplers.ddim_sample(plain, S, samplers.ddim_invert(plain, S, x0, TS), TS)
    # Null-class inversion, and the same optimisation with a zero learning rate (no change).
    # (At most the paper's 10 inner steps, to keep the test quick.)
    inv = inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], null, W, inner_steps=10)
    frozen = inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], null, W, inner_steps=10, lr=0.0)
    assert inv.null_embeddings.shape == (10, 4, TINY_UNET.emb_dim) and inv.losses.shape == (10, 4)
    assert float(inv.losses.mean()) < 0.5 * float(frozen.losses.mean())
    rec = samplers.ddim_sample(inversion.null_embedding_eps_fn(emb_fn, W, TS, inv, table[y]), S, inv.x_T, TS)
    psnr_null, psnr_plain = metrics.psnr(x0, rec).mean(), metrics.psnr(x0, plain_rec).mean()
    assert psnr_null > psnr_plain + 3, (psnr_null, psnr_plain)
    # The reconstruction lands where the optimisation's last step did: its loss is that MSE.
    np.testing.assert_allclose(metrics.mse(rec, x0), inv.losses[-1], rtol=1e-3, atol=1e-7)
    assert np.all((inv.inner_steps >= 0) & (inv.inner_steps <= 10))


def test_the_pivot_is_the_w1_ddim_inversion(tiny):
    model, emb_fn, table, x0, y = tiny
    inv = inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], table[model.null_class], W, inner_steps=1)
    cond = pipeline.unet_eps_fn(model)
    x_T = samplers.ddim_invert(cond, S, x0, TS, y=y)
    np.testing.assert_allclose(inv.x_T, x_T, atol=1e-5)
    np.testing.assert_array_equal(inv.pivot[0], x0)


def test_keeping_the_source_label_for_every_step_ignores_the_target(tiny):
    model, emb_fn, table, x0, y = tiny
    inv = inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], table[model.null_class], W, inner_steps=2)
    rec = inversion.reconstruct(emb_fn, S, inv, TS, W, table[y])
    np.testing.assert_allclose(
        rec, samplers.ddim_sample(inversion.null_embedding_eps_fn(emb_fn, W, TS, inv, table[y]), S, inv.x_T, TS))
    fn, other, levels = pipeline.unet_controlled_fn(model), table[(y + 1) % 10], (0.0,) * len(model.config.channels)
    for keep, same in ((1.0, True), (0.3, False)):
        controller = editing.Controller(source_label=keep, feature_levels=levels)
        source, edit = editing.edit(fn, S, inv, TS, W, table[y], other, controller)
        np.testing.assert_allclose(source, rec, rtol=1e-5, atol=1e-3)  # round-off of 4B rows; |x| up to ~20
        assert (float(jnp.abs(edit - rec).max()) < 1e-2) == same


def test_reconstructing_a_direct_inversion_gives_the_image(tiny):
    model, emb_fn, table, x0, y = tiny
    direct = inversion.invert("direct", emb_fn, S, x0, TS, table[y], table[model.null_class], W)
    np.testing.assert_array_equal(inversion.reconstruct(emb_fn, S, direct, TS, W, table[y]), x0)


def test_bad_input(tiny):
    model, emb_fn, table, x0, y = tiny
    with pytest.raises(ValueError, match="one row per image"):
        inversion.null_class_inversion(emb_fn, S, x0, TS, table[y[:2]], table[10], W)
    with pytest.raises(ValueError, match="inner_steps"):
        inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], table[10], W, inner_steps=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        inversion.null_class_inversion(emb_fn, S, x0, TS[::-1], table[y], table[10], W)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], table[10], W, lr=-0.1)
    with pytest.raises(ValueError, match="null_emb must be a nonzero"):
        inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], 0 * table[10], W)


@pytest.mark.slow
def test_lr_is_relative_so_rescaling_the_embeddings_changes_nothing(tiny):
    """A model that reads its embedding as e / c, given embeddings scaled by c, is the same
    model; with lr relative to the null row's RMS, the optimisation is the same too."""
    model, emb_fn, table, x0, y = tiny
    c = 8.0  # a power of two, so that the scaling itself is exact in float32
    scaled_fn = Partial(lambda fn, x, t, e: fn(x, t, e / c), emb_fn)
    kw = dict(inner_steps=3)
    inv = inversion.null_class_inversion(emb_fn, S, x0[:2], TS, table[y[:2]], table[10], W, **kw)
    inv_c = inversion.null_class_inversion(scaled_fn, S, x0[:2], TS, c * table[y[:2]], c * table[10], W, **kw)
    np.testing.assert_allclose(inv_c.null_embeddings / c, inv.null_embeddings, atol=1e-4)
    np.testing.assert_array_equal(inv_c.inner_steps, inv.inner_steps)


def test_at_w1_nothing_is_optimised_and_the_result_is_plain_ddim_inversion(tiny):
    model, emb_fn, table, x0, y = tiny
    null = table[model.null_class]
    inv = inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], null, 1.0)
    assert int(inv.inner_steps.sum()) == 0
    # unchanged up to the round-off of (e / scale) * scale
    np.testing.assert_allclose(inv.null_embeddings, np.broadcast_to(null, inv.null_embeddings.shape), rtol=1e-6)
    plain = inversion.embedding_cfg_eps_fn(emb_fn, 1.0, table[y], null)
    rec = samplers.ddim_sample(plain, S, inv.x_T, TS)
    np.testing.assert_allclose(metrics.mse(rec, x0), inv.losses[-1], rtol=1e-3, atol=1e-7)


def test_images_optimised_one_by_one_equal_the_batch(tiny):
    """group=1 (each image stops on its own) changes the cost, not the result (up to float
    round-off, which Adam's normalised steps make ~1e-4 in the embeddings)."""
    model, emb_fn, table, x0, y = tiny
    args = (emb_fn, S, x0, TS, table[y], table[model.null_class], W)
    alone = inversion.null_class_inversion(*args, inner_steps=5, group=1)
    pairs = inversion.null_class_inversion(*args, inner_steps=5, group=2)
    batch = inversion.null_class_inversion(*args, inner_steps=5, group=None)
    for other in (pairs, batch):
        np.testing.assert_allclose(other.null_embeddings, alone.null_embeddings, atol=2e-3)
        np.testing.assert_allclose(other.losses, alone.losses, rtol=0.02, atol=1e-7)
    with pytest.raises(ValueError, match="group must be a positive divisor"):
        inversion.null_class_inversion(*args, inner_steps=1, group=3)


def test_taking_rows_of_an_inversion_slices_every_per_image_field(tiny):
    model, emb_fn, table, x0, y = tiny
    inv = inversion.null_class_inversion(emb_fn, S, x0, TS, table[y], table[model.null_class], W, inner_steps=2)
    part = inv.take([2, 0])
    np.testing.assert_array_equal(part.x_T, inv.x_T[jnp.array([2, 0])])
    for name in ("null_embeddings", "pivot", "losses", "inner_steps"):
        np.testing.assert_array_equal(getattr(part, name), getattr(inv, name)[:, jnp.array([2, 0])])
    assert inversion.ddim_inversion(emb_fn, S, x0, TS, table[y], table[model.null_class], W).take([1]).pivot is None
