import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff import analytic, guidance, samplers, schedules

S = schedules.linear_schedule(1000)
MIXTURE = analytic.gaussian_mixture(
    [[0.8, -0.2, 0.1], [-0.6, 0.5, 0.0], [0.1, 0.1, -0.9]], [0.25, 0.3, 0.2], [0.5, 0.3, 0.2]
)
NULL = MIXTURE.num_classes
EPS_FN = analytic.mixture_eps_fn(S, MIXTURE)
LOG_PROB = analytic.mixture_log_prob_fn(S, MIXTURE)


def batch(key, n=32):
    k1, k2, k3 = jax.random.split(key, 3)
    return (jax.random.normal(k1, (n, 3)), jax.random.randint(k2, (n,), 0, 1000),
            jax.random.randint(k3, (n,), 0, NULL))


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, 7.5])
def test_exact_classifier_guidance_equals_classifier_free_guidance(scale):
    x, t, y = batch(jax.random.PRNGKey(0))
    cfg = guidance.classifier_free(EPS_FN, scale, NULL)
    cg = guidance.classifier_guidance(guidance.unconditional(EPS_FN, NULL), LOG_PROB, S, scale)
    a, b = jax.jit(lambda x: cfg(x, t, y))(x), jax.jit(lambda x: cg(x, t, y))(x)
    np.testing.assert_allclose(a, b, atol=2e-5 * (1 + scale))
    # ... and the whole guided DDIM trajectories agree too.
    ts = samplers.make_timesteps(1000, 25)
    xa = samplers.ddim_sample(cfg, S, x, ts, y=y)
    xb = samplers.ddim_sample(cg, S, x, ts, y=y)
    np.testing.assert_allclose(xa, xb, atol=1e-4 * (1 + scale))


def test_cfg_scale_endpoints():
    x, t, y = batch(jax.random.PRNGKey(1))
    null = jnp.full_like(y, NULL)
    np.testing.assert_allclose(guidance.classifier_free(EPS_FN, 0.0, NULL)(x, t, y), EPS_FN(x, t, null), atol=1e-6)
    np.testing.assert_allclose(guidance.classifier_free(EPS_FN, 1.0, NULL)(x, t, y), EPS_FN(x, t, y), atol=1e-6)
    # Ho & Salimans' w_HS = w - 1: (1 + w_HS) eps_y - w_HS eps_null
    w_hs = 2.0
    expected = (1 + w_hs) * EPS_FN(x, t, y) - w_hs * EPS_FN(x, t, null)
    np.testing.assert_allclose(guidance.classifier_free(EPS_FN, w_hs + 1, NULL)(x, t, y), expected, atol=1e-5)


def test_ddpm_classifier_guidance_shifts_the_mean_by_scale_sigma_grad():
    """Dhariwal & Nichol Algorithm 1: mean -> mean + s * Sigma * grad log p(y | x_t)."""
    x, t, y = batch(jax.random.PRNGKey(2))
    t = jnp.maximum(t, 1)
    scale = 2.5
    uncond = guidance.unconditional(EPS_FN, NULL)
    guided = guidance.classifier_guidance_ddpm(uncond, LOG_PROB, S, scale)
    mean = samplers.ddpm_step(S, x, uncond(x, t, y), t, None)
    guided_mean = samplers.ddpm_step(S, x, guided(x, t, y), t, None)
    grad = jax.grad(lambda v: LOG_PROB(v, t, y).sum())(x)
    expected = mean + scale * S.posterior_variance[t][:, None] * grad
    np.testing.assert_allclose(guided_mean, expected, atol=1e-5)


def test_classifier_gradient_matches_finite_differences():
    x, t, y = batch(jax.random.PRNGKey(3), n=4)
    grad = guidance._log_prob_grad(LOG_PROB, x, t, y)
    h = 1e-2
    for i in range(3):
        step = jnp.zeros_like(x).at[:, i].set(h)
        fd = (LOG_PROB(x + step, t, y) - LOG_PROB(x - step, t, y)) / (2 * h)
        np.testing.assert_allclose(grad[:, i], fd, rtol=2e-2, atol=2e-3)


def test_guidance_raises_class_accuracy_of_samples():
    """Stronger guidance puts samples closer to their class mean (the diversity/accuracy trade)."""
    x_T = jax.random.normal(jax.random.PRNGKey(4), (512, 3))
    y = jnp.zeros((512,), jnp.int32) + 1
    ts = samplers.make_timesteps(1000, 25)
    accuracy = []
    for w in (0.0, 1.0, 4.0):
        x0 = samplers.ddim_sample(guidance.classifier_free(EPS_FN, w, NULL), S, x_T, ts, y=y)
        probs = jnp.exp(LOG_PROB(x0, jnp.zeros_like(y), y))  # p(y | x_0) at t = 0
        accuracy.append(float(probs.mean()))
    assert accuracy[0] < accuracy[1] < accuracy[2], accuracy
