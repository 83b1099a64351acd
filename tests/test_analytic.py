import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff import analytic, diffusion, schedules

S = schedules.linear_schedule(1000)
MIXTURE = analytic.gaussian_mixture([[[0.5], [-0.5]], [[-0.3], [0.8]]], [0.3, 0.2], [0.7, 0.3])


def log_density(x_t, t, y=None):
    """log p(x_t) (or log p(x_t | y)) written directly from the Gaussian densities."""
    alpha_bar_t = float(S.alphas_cumprod[t])
    var = alpha_bar_t * MIXTURE.stds**2 + 1 - alpha_bar_t
    d = x_t.size
    terms = (jnp.log(MIXTURE.weights)
             - jnp.sum((x_t - jnp.sqrt(alpha_bar_t) * MIXTURE.means) ** 2, axis=(1, 2)) / (2 * var)
             - d / 2 * jnp.log(2 * jnp.pi * var))
    return jax.nn.logsumexp(terms) if y is None else terms[y] - jnp.log(MIXTURE.weights[y])


@pytest.mark.parametrize("t", [0, 100, 999])
def test_eps_is_minus_sigma_times_the_score(t):
    """Tweedie: eps(x_t) = -sqrt(1 - alpha_bar_t) grad log p(x_t), checked with autodiff."""
    eps_fn = analytic.mixture_eps_fn(S, MIXTURE)
    x = jax.random.normal(jax.random.PRNGKey(t), (3, 2, 1))
    tt = jnp.full((3,), t)
    sigma = float(S.sqrt_one_minus_alphas_cumprod[t])
    for y in (None, 0, 1):
        labels = jnp.full((3,), 2 if y is None else y)
        expected = jnp.stack([-sigma * jax.grad(log_density)(xi, t, y) for xi in x])
        np.testing.assert_allclose(eps_fn(x, tt, labels), expected, rtol=1e-4, atol=1e-5)


def test_classifier_is_a_normalised_posterior():
    log_prob = analytic.mixture_log_prob_fn(S, MIXTURE)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 1))
    t = jnp.full((5,), 300)
    lp = jnp.stack([log_prob(x, t, jnp.full((5,), k)) for k in range(2)], axis=1)
    np.testing.assert_allclose(jax.nn.logsumexp(lp, axis=1), 0.0, atol=1e-5)
    # Bayes: log p(y | x) = log p(x | y) + log pi_y - log p(x)
    expected = [log_density(xi, 300, 1) + jnp.log(MIXTURE.weights[1]) - log_density(xi, 300) for xi in x]
    np.testing.assert_allclose(lp[:, 1], jnp.array(expected), atol=1e-4)


def test_marginal_moments_match_q_sample():
    x0, _ = analytic.sample_data(MIXTURE, jax.random.PRNGKey(0), 200_000)
    t = 250
    x_t = diffusion.q_sample(S, x0, jnp.full((x0.shape[0],), t), jax.random.normal(jax.random.PRNGKey(1), x0.shape))
    mean, var = analytic.marginal_moments(S, MIXTURE, t)
    se = np.sqrt(np.asarray(var) / x0.shape[0])
    assert np.all(np.abs(np.asarray(x_t.mean(0)) - np.asarray(mean)) < 5 * se)
    np.testing.assert_allclose(x_t.var(0), var, rtol=0.02)


def test_bad_mixture_raises():
    with pytest.raises(ValueError, match="weights must have shape"):
        analytic.gaussian_mixture([[0.0], [1.0]], [0.1, 0.1], [1.0])
    with pytest.raises(ValueError, match="stds must be positive"):
        analytic.gaussian_mixture([[0.0]], [0.0])
