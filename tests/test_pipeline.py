"""generate(): every guidance path reaches the samplers as the eps_fn it claims to be."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff import classifier, diffusion, guidance, models, pipeline, schedules
from tests.helpers import REPO, TINY_UNET

S = schedules.linear_schedule(1000)
LABELS = np.array([0, 3, 9], np.int32)
TINY_CLASSIFIER = classifier.ClassifierConfig(channels=(8, 16, 16), emb_dim=16, num_groups=4, feature_dim=32)


@pytest.fixture(scope="module")
def model():
    m = models.build_model(TINY_UNET, seed=0)
    kernel = m.conv_out.conv.kernel  # zero-initialised: randomise it so eps depends on x, t, y
    kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(1), kernel.shape)
    return m


def test_w1_runs_the_conditional_model_alone_and_equals_cfg_at_w1(model):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
    t, y = jnp.array([10, 500, 990]), jnp.asarray(LABELS)
    plain = pipeline.guided_eps_fn(model, S, 1.0)
    cfg = guidance.classifier_free(pipeline.unet_eps_fn(model), 1.0, model.null_class)
    np.testing.assert_allclose(plain(x, t, y), cfg(x, t, y), atol=1e-5)


def test_classifier_guidance_at_scale_0_is_the_unconditional_model(model):
    noisy = classifier.Classifier(dataclasses.replace(TINY_CLASSIFIER, noised=True), rngs=nnx.Rngs(0))
    key = jax.random.PRNGKey(3)
    for sampler, steps in (("ddim", 5), ("ddpm", 5)):
        guided = pipeline.generate(model, S, LABELS, key, sampler=sampler, steps=steps, guidance_scale=0.0,
                                   classifier=noisy)
        uncond = pipeline.generate(model, S, LABELS, key, sampler=sampler, steps=steps, guidance_scale=0.0)
        np.testing.assert_allclose(guided, uncond, atol=1e-4)
    scaled = pipeline.generate(model, S, LABELS, key, steps=5, guidance_scale=50.0, classifier=noisy)
    assert float(jnp.abs(scaled - uncond).max()) > 1e-3  # the classifier gradient does act


def test_bad_guidance_and_sampler_arguments(model):
    clean = classifier.Classifier(TINY_CLASSIFIER, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="noised"):
        pipeline.generate(model, S, LABELS, jax.random.PRNGKey(0), steps=2, classifier=clean)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipeline.generate(model, S, LABELS, jax.random.PRNGKey(0), sampler="euler")
    with pytest.raises(ValueError, match="labels"):
        pipeline.generate(model, S, np.array([11]), jax.random.PRNGKey(0))



def test_a_v_prediction_unet_reaches_the_samplers_as_eps():
    """A v-network's eps_fn is eps_from_v of its output (Salimans & Ho 2022); without the
    schedule, which that conversion needs, unet_eps_fn refuses."""
    m = models.build_model(dataclasses.replace(TINY_UNET, prediction="v"), seed=0)
    kernel = m.conv_out.conv.kernel
    kernel[...] = 0.05 * jax.random.normal(jax.random.PRNGKey(1), kernel.shape)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
    t, y = jnp.array([10, 500, 990]), jnp.asarray(LABELS)

    np.testing.assert_allclose(pipeline.unet_eps_fn(m, S)(x, t, y), diffusion.eps_from_v(S, x, t, m(x, t, y)),
                               atol=1e-5)
    with pytest.raises(ValueError, match="predicts v"):
        pipeline.unet_eps_fn(m)
    with pytest.raises(ValueError, match="prediction='x0' must be one of"):
        dataclasses.replace(TINY_UNET, prediction="x0")


def test_the_released_label_model_loads_and_samples_exactly_as_before_the_caption_model():
    """tests/data/label_model_samples.npz was drawn by the code of commit db2a65f, before the
    U-Net learnt text conditioning: the released MNIST model, DDIM-10 at w = 3, key 0."""
    model, meta = models.load_model()
    assert model.config.conditioning == "label" and model.text_encoder is None
    x = pipeline.generate(model, models.schedule_of(meta), [0, 3, 7, 10], jax.random.PRNGKey(0), steps=10,
                          guidance_scale=3.0)
    np.testing.assert_allclose(x, np.load(REPO / "tests" / "data" / "label_model_samples.npz")["samples"],
                               atol=1e-5)
