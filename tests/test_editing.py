"""Tests for minidiff/editing.py (two branches in lockstep, attention control) and the
inversion methods it edits from, on the exact Gaussian-mixture model and on a tiny U-Net."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff import analytic, editing, guidance, inversion, models, pipeline, samplers, schedules
from tests.helpers import TINY_UNET, randomised_unet

TINY_ATTENTION = dataclasses.replace(TINY_UNET, attention=True, attention_heads=2)  # attention at 14x14

S = schedules.linear_schedule(1000)
TS = samplers.make_timesteps(1000, 10)


@pytest.fixture(scope="module")
def mixture():
    """Two well-separated classes in 2-D, the exact eps on embeddings (identity table, row 2 null)."""
    gmm = analytic.gaussian_mixture([[1.0, 0.5], [-1.0, -0.5]], [0.5, 0.5])
    fn = analytic.mixture_embedding_eps_fn(S, gmm)
    x0, y = analytic.sample_data(gmm, jax.random.PRNGKey(0), 256)
    return fn, jnp.eye(3), x0, y


def _uncontrolled(fn):
    return lambda x, t, emb, source, attention, features, cross=None: fn(x, t, emb)


def _reconstruct(method, mixture, w, **kw):
    fn, table, x0, y = mixture
    inv = inversion.invert(method, fn, S, x0, TS, table[y], table[2], w, **kw)
    rec, _ = editing.edit(_uncontrolled(fn), S, inv, TS, w, table[y], table[y])
    return rec


def test_direct_and_fixed_point_inversion_reconstruct_where_plain_ddim_does_not(mixture):
    x0 = mixture[2]
    mse = lambda rec: float(jnp.mean((rec - x0) ** 2))
    plain = mse(_reconstruct("ddim", mixture, 1.0))
    fixed = mse(_reconstruct("fixed_point", mixture, 1.0, fixed_point_iterations=10))
    assert plain > 1e-2 and fixed < 1e-5, (plain, fixed)
    for w in (1.0, 7.5):  # direct inversion is exact by construction, whatever the guidance
        assert mse(_reconstruct("direct", mixture, w)) < 1e-10
    # Under strong guidance the fixed-point iteration is no longer a contraction: 10
    # iterations at w = 7.5 leave a large error (measured: 8e-2, plain 4e-1).
    assert mse(_reconstruct("fixed_point", mixture, 7.5, fixed_point_iterations=10)) > 1e-2


def test_negative_prompt_inversion_reconstructs_as_w1_ddim_inversion(mixture):
    fn, table, x0, y = mixture
    eps_fn = analytic.mixture_eps_fn(S, analytic.gaussian_mixture([[1.0, 0.5], [-1.0, -0.5]], [0.5, 0.5]))
    w1 = samplers.ddim_sample(eps_fn, S, samplers.ddim_invert(eps_fn, S, x0, TS, y=y), TS, y=y)
    for w in (3.0, 7.5):
        np.testing.assert_allclose(_reconstruct("negative", mixture, w), w1, atol=1e-5)


def test_null_class_inversion_on_the_exact_model(mixture):
    x0 = mixture[2]
    for w in (3.0, 7.5):
        rec = _reconstruct("null", mixture, w)
        assert float(jnp.mean((rec - x0) ** 2)) < 1e-3 < float(jnp.mean((_reconstruct("ddim", mixture, w) - x0) ** 2))


def test_unknown_method_and_bad_controller(mixture):
    fn, table, x0, y = mixture
    with pytest.raises(ValueError, match="unknown inversion method"):
        inversion.invert("nope", fn, S, x0, TS, table[y], table[2], 3.0)
    with pytest.raises(ValueError, match="fraction"):
        editing.Controller(attention=1.5)
    with pytest.raises(ValueError, match="feature_levels"):
        editing.Controller(features=0.5)
    inv = inversion.invert("ddim", fn, S, x0, TS, table[y], table[2], 3.0)
    with pytest.raises(ValueError, match="steps"):
        editing.edit(_uncontrolled(fn), S, inv, TS[:5], 3.0, table[y], table[y])


# --------------------------------------------------------------------------- the U-Net, controlled


@pytest.fixture(scope="module")
def unet():
    """A tiny U-Net whose output layer is randomised, inverted on 3 image-like arrays."""
    model = randomised_unet(TINY_ATTENTION)
    emb_fn, table = pipeline.unet_embedding_fns(model)
    x0 = jnp.tanh(2 * jax.random.normal(jax.random.PRNGKey(2), (3, 28, 28, 1)))
    y = jnp.array([1, 3, 5])
    inv = inversion.invert("null", emb_fn, S, x0, TS, table[y], table[model.null_class], 3.0, inner_steps=2)
    return model, emb_fn, table, y, inv


def _levels(model, *on):
    return tuple(1.0 if l in on else 0.0 for l in range(len(model.config.channels)))


def test_full_control_with_the_source_label_is_the_reconstruction(unet):
    model, emb_fn, table, y, inv = unet
    fn = pipeline.unet_controlled_fn(model)
    full = editing.Controller(attention=1.0, features=1.0, feature_levels=_levels(model, 0, 1, 2))
    rec, same = editing.edit(fn, S, inv, TS, 3.0, table[y], table[y], full)
    np.testing.assert_allclose(same, rec, atol=1e-5)
    # ... and so is an edit to another label when the last decoder level is taken: the output
    # is a function of those features alone
    _, other = editing.edit(fn, S, inv, TS, 3.0, table[y], table[(y + 1) % 10], full)
    np.testing.assert_allclose(other, rec, atol=1e-4)
    # the reconstruction is the single-branch guided DDIM from x_T with the inversion's nulls
    single = samplers.ddim_sample(inversion.null_embedding_eps_fn(emb_fn, 3.0, TS, inv, table[y]), S, inv.x_T, TS)
    np.testing.assert_allclose(rec, single, atol=1e-5)


def test_no_control_is_the_uncontrolled_edit_and_control_changes_it(unet):
    model, emb_fn, table, y, inv = unet
    fn, target = pipeline.unet_controlled_fn(model), table[(y + 1) % 10]
    none = editing.Controller(feature_levels=_levels(model))
    _, edit = editing.edit(fn, S, inv, TS, 3.0, table[y], target, none)
    plain = samplers.ddim_sample(inversion.null_embedding_eps_fn(emb_fn, 3.0, TS, inv, target), S, inv.x_T, TS)
    np.testing.assert_allclose(edit, plain, atol=1e-5)
    # the label switch after k steps: the source label for the first k steps, then the target
    _, switched = editing.edit(fn, S, inv, TS, 3.0, table[y], target,
                               editing.Controller(source_label=0.3, feature_levels=_levels(model)))
    ts = samplers.check_timesteps(TS, S.num_timesteps)

    def by_hand(x_t, t, _):
        i = jnp.argmax(ts == t[0])
        return guidance.cfg_eps(emb_fn, 3.0, x_t, t, jnp.where(i < 3, table[y], target), inv.null_embeddings[i])

    np.testing.assert_allclose(switched, samplers.ddim_sample(by_hand, S, inv.x_T, TS), rtol=1e-5, atol=1e-3)
    _, attended = editing.edit(fn, S, inv, TS, 3.0, table[y], target,
                               editing.Controller(attention=0.5, feature_levels=_levels(model)))
    assert float(jnp.abs(attended - edit).max()) > 1e-4


def test_features_at_the_last_level_are_the_label_switch(unet):
    """The last decoder level's features determine the output (only norm_out and conv_out
    follow), so injecting them for a fraction f of the steps makes the edit follow the
    reconstruction for those steps: the label switch after f, whatever the level is called."""
    model, emb_fn, table, y, inv = unet
    fn, target = pipeline.unet_controlled_fn(model), table[(y + 1) % 10]
    for attention in (0.0, 1.0):
        _, injected = editing.edit(fn, S, inv, TS, 3.0, table[y], target, editing.Controller(
            attention=attention, features=0.4, feature_levels=_levels(model, len(model.config.channels) - 1)))
        _, switched = editing.edit(fn, S, inv, TS, 3.0, table[y], target, editing.Controller(
            attention=attention, source_label=0.4, feature_levels=_levels(model)))
        np.testing.assert_allclose(injected, switched, atol=1e-4)
    _, deeper = editing.edit(fn, S, inv, TS, 3.0, table[y], target, editing.Controller(
        features=0.4, feature_levels=_levels(model, 0)))
    assert float(jnp.abs(deeper - switched).max()) > 1e-3  # a deeper level is not


def test_direct_inversion_pins_the_source_branch(unet):
    model, emb_fn, table, y, inv = unet
    x0 = inv.pivot[0]
    direct = inversion.invert("direct", emb_fn, S, x0, TS, table[y], table[model.null_class], 7.5)
    rec, _ = editing.edit(pipeline.unet_controlled_fn(model), S, direct, TS, 7.5, table[y],
                          table[(y + 1) % 10], editing.Controller(feature_levels=_levels(model)))
    np.testing.assert_allclose(rec, x0, atol=1e-6)
