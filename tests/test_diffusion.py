import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff import analytic, diffusion, schedules

S = schedules.linear_schedule(1000)


@pytest.mark.slow
@pytest.mark.parametrize("t", [0, 9, 300, 999])
def test_q_sample_matches_running_the_markov_chain(t):
    """x_t from one reparameterised step has the law of t+1 single Gaussian steps."""
    n = 200_000
    x0 = jnp.full((n, 1), 0.7)
    x = x0
    keys = jax.random.split(jax.random.PRNGKey(t), t + 1)
    for i in range(t + 1):  # the chain x_i = sqrt(alpha_i) x_{i-1} + sqrt(beta_i) z
        z = jax.random.normal(keys[i], x.shape)
        x = jnp.sqrt(S.alphas[i]) * x + jnp.sqrt(S.betas[i]) * z
    one_step = diffusion.q_sample(S, x0, jnp.full((n,), t), jax.random.normal(jax.random.PRNGKey(99), x0.shape))
    alpha_bar_t = float(S.alphas_cumprod[t])
    mean, var = np.sqrt(alpha_bar_t) * 0.7, 1 - alpha_bar_t
    for samples in (x, one_step):
        se_mean, se_var = np.sqrt(var / n), var * np.sqrt(2 / (n - 1))
        assert abs(float(samples.mean()) - mean) < 5 * se_mean
        assert abs(float(samples.var()) - var) < 5 * se_var


def test_predict_x0_from_eps_inverts_q_sample():
    x0 = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    t = jnp.array([0, 10, 500, 999])
    x_t = diffusion.q_sample(S, x0, t, eps)
    x0_back = jax.jit(diffusion.predict_x0_from_eps, static_argnums=())(S, x_t, t, eps)
    np.testing.assert_allclose(x0_back, x0, atol=2e-3)  # 1 / sqrt(alpha_bar_999) ~ 157 amplifies round-off
    # At t = 0, 1 / sqrt(1 - alpha_bar_0) = 100 amplifies float32 round-off likewise.
    np.testing.assert_allclose(diffusion.predict_eps_from_x0(S, x_t, t, x0), eps, atol=1e-3)


@pytest.mark.parametrize("t", [1, 50, 999])
def test_posterior_matches_bayes_rule_on_a_grid(t):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), normalised numerically."""
    x0, x_t = 0.3, -0.4
    betas = np.linspace(1e-4, 0.02, 1000)  # float64, independent of the Schedule
    beta, alpha_bar_prev = betas[t], np.prod(1 - betas[:t])
    prior_mean, prior_var = np.sqrt(alpha_bar_prev) * x0, 1 - alpha_bar_prev
    # A grid fine enough for the posterior standard deviation sqrt(beta_tilde_t).
    sd = np.sqrt(beta * prior_var / (beta + (1 - beta) * prior_var))
    centre = (prior_mean / prior_var + np.sqrt(1 - beta) * x_t / beta) * sd**2
    grid = np.linspace(centre - 12 * sd, centre + 12 * sd, 200_001)
    log_p = -((x_t - np.sqrt(1 - beta) * grid) ** 2) / (2 * beta) - (grid - prior_mean) ** 2 / (2 * prior_var)
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    grid_mean = np.sum(p * grid)
    grid_var = np.sum(p * (grid - grid_mean) ** 2)
    mean, var = diffusion.q_posterior_mean_variance(S, jnp.array([x0]), jnp.array([x_t]), jnp.array([t]))
    np.testing.assert_allclose(float(mean[0]), grid_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(var[0]), grid_var, rtol=1e-3)
    np.testing.assert_allclose(float(var[0]), float(S.posterior_variance[t]), rtol=1e-4)


def test_posterior_at_t0_collapses_onto_x0():
    x0, x_t = jnp.array([[0.25]]), jnp.array([[0.9]])
    mean, var = diffusion.q_posterior_mean_variance(S, x0, x_t, jnp.array([0]))
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    assert float(var.squeeze()) == 0.0


def test_strided_posterior_matches_composed_steps():
    """q(x_s | x_t, x_0) for s < t-1 from the effective beta equals Bayes with the true chain."""
    t, t_prev = 600, 400
    alpha_bar_t = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    alpha_bar_t, alpha_bar_p = alpha_bar_t[t], alpha_bar_t[t_prev]
    x0, x_t = 0.5, 0.1
    # Joint Gaussian of (x_s, x_t) given x_0: condition x_s on x_t.
    cov_st = np.sqrt(alpha_bar_t / alpha_bar_p) * (1 - alpha_bar_p)
    mean = np.sqrt(alpha_bar_p) * x0 + cov_st / (1 - alpha_bar_t) * (x_t - np.sqrt(alpha_bar_t) * x0)
    var = (1 - alpha_bar_p) - cov_st**2 / (1 - alpha_bar_t)
    m, v = diffusion.q_posterior_mean_variance(S, jnp.array([x0]), jnp.array([x_t]), jnp.array([t]), jnp.array([t_prev]))
    np.testing.assert_allclose([float(m[0]), float(v[0])], [mean, var], rtol=1e-4)


def test_ddpm_loss_of_the_exact_eps_is_the_bayes_error():
    """For Gaussian data N(mu, s^2), the best eps has loss E_t[alpha_bar_t s^2 / (alpha_bar_t s^2 + 1 - alpha_bar_t)]."""
    std = 0.5
    mixture = analytic.gaussian(jnp.full((4, 4, 1), 0.3), std)
    x0, _ = analytic.sample_data(mixture, jax.random.PRNGKey(0), 20_000)
    eps_fn = analytic.mixture_eps_fn(S, mixture)
    loss = float(jax.jit(diffusion.ddpm_loss, static_argnums=0)(eps_fn, S, x0, None, jax.random.PRNGKey(1)))
    alpha_bar_t = np.asarray(S.alphas_cumprod, np.float64)
    expected = np.mean(alpha_bar_t * std**2 / (alpha_bar_t * std**2 + 1 - alpha_bar_t))
    # Monte Carlo over t (20k draws): per-example loss lies in [0, ~1], so SE < 0.5 / sqrt(20k).
    assert abs(loss - expected) < 5 * 0.5 / np.sqrt(20_000), (loss, expected)
    zero_loss = float(diffusion.ddpm_loss(lambda x, t, y: jnp.zeros_like(x), S, x0, None, jax.random.PRNGKey(1)))
    assert abs(zero_loss - 1.0) < 0.01  # predicting 0 costs E[eps^2] = 1


def test_v_and_eps_convert_exactly():
    """eps_from_v inverts v_from_eps at any t (Salimans & Ho 2022, Appendix D), by hand at one t."""
    t = jnp.array([0, 300, 999])
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 4, 1), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    x_t = diffusion.q_sample(S, x0, t, eps)
    v = diffusion.v_from_eps(S, x0, t, eps)
    np.testing.assert_allclose(diffusion.eps_from_v(S, x_t, t, v), eps, atol=2e-5)
    a = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[300])
    np.testing.assert_allclose(v[1], np.sqrt(a) * eps[1] - np.sqrt(1 - a) * x0[1], rtol=1e-5, atol=1e-6)


def test_v_loss_is_the_mean_squared_velocity_error():
    """ddpm_loss(weighting="v") of a v-network seen as eps equals || v - v_theta ||^2 directly."""
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (64, 4, 4, 1), minval=-1, maxval=1)
    v_theta = lambda x_t, t: 0.5 * x_t  # any network; this one is easy to write twice
    eps_fn = lambda x_t, t, y: diffusion.eps_from_v(S, x_t, t, v_theta(x_t, t))
    key = jax.random.PRNGKey(3)
    got = float(diffusion.ddpm_loss(eps_fn, S, x0, None, key, weighting="v"))
    key_t, key_eps = jax.random.split(key)  # the draws ddpm_loss makes
    t = jax.random.randint(key_t, (64,), 0, 1000)
    eps = jax.random.normal(key_eps, x0.shape)
    x_t = diffusion.q_sample(S, x0, t, eps)
    expected = float(jnp.mean((v_theta(x_t, t) - diffusion.v_from_eps(S, x0, t, eps)) ** 2))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        diffusion.ddpm_loss(eps_fn, S, x0, None, key, weighting="snr")


@pytest.mark.parametrize("gamma", [0.5, 5.0])
def test_min_snr_gamma_loss_is_the_clamped_x0_error_for_eps_and_v(gamma):
    """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) || x_0 - x0_theta ||^2, by hand from the
    linear schedule in float64 at the drawn t; for a v-network, diffusers' form
    min(SNR, gamma) / (SNR + 1) || v - v_theta ||^2 is the same number."""
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (64, 4, 4, 1), minval=-1, maxval=1)
    key = jax.random.PRNGKey(5)
    key_t, key_eps = jax.random.split(key)  # the draws ddpm_loss makes
    t = np.asarray(jax.random.randint(key_t, (64,), 0, 1000))
    eps = jax.random.normal(key_eps, x0.shape)
    x_t = diffusion.q_sample(S, x0, jnp.asarray(t), eps)
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[t][:, None, None, None]
    snr = alpha_bar / (1 - alpha_bar)
    assert snr.min() < min(gamma, 1) and snr.max() > gamma  # the draws reach both sides of the clamp

    eps_theta = lambda x, t_, y: 0.5 * x  # any network
    x0_theta = (np.asarray(x_t) - np.sqrt(1 - alpha_bar) * np.asarray(eps_theta(x_t, t, None))) / np.sqrt(alpha_bar)
    expected = np.mean(np.minimum(snr, gamma) * (np.asarray(x0) - x0_theta) ** 2)
    got = float(diffusion.ddpm_loss(eps_theta, S, x0, None, key, snr_gamma=gamma))
    np.testing.assert_allclose(got, expected, rtol=1e-4)

    v_theta = lambda x, t_: 0.5 * x
    eps_of_v = lambda x, t_, y: diffusion.eps_from_v(S, x, t_, v_theta(x, t_))
    v = np.asarray(diffusion.v_from_eps(S, x0, jnp.asarray(t), eps))
    expected_v = np.mean(np.minimum(snr, gamma) / (snr + 1) * (np.asarray(v_theta(x_t, t)) - v) ** 2)
    got_v = float(diffusion.ddpm_loss(eps_of_v, S, x0, None, key, weighting="v", snr_gamma=gamma))
    np.testing.assert_allclose(got_v, expected_v, rtol=1e-4)


def test_min_snr_with_a_gamma_above_every_snr_is_l_simple():
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (16, 4, 4, 1), minval=-1, maxval=1)
    eps_theta, key = (lambda x, t, y: 0.3 * x), jax.random.PRNGKey(2)
    top = float(S.alphas_cumprod[0] / (1 - S.alphas_cumprod[0]))  # the largest SNR, at t = 0
    np.testing.assert_allclose(float(diffusion.ddpm_loss(eps_theta, S, x0, None, key, snr_gamma=2 * top)),
                               float(diffusion.ddpm_loss(eps_theta, S, x0, None, key)), rtol=1e-5)


def test_min_snr_is_finite_at_zero_terminal_snr():
    """Where alpha_bar_t is 0 in float32 (a schedule near zero terminal SNR, Lin et al. 2024) the
    weight is min(SNR, gamma) / SNR -> 1, so the loss stays finite instead of 0 / 0."""
    betas = np.full(10, 1 - 1e-6)  # alpha_bar_t = 1e-6^(t+1): 0 in float32 from t = 7 on
    s = schedules.schedule_from_betas(betas)
    assert float(s.alphas_cumprod[-1]) == 0.0
    x0 = jnp.zeros((256, 2, 2, 1))
    loss = float(diffusion.ddpm_loss(lambda x, t, y: jnp.zeros_like(x), s, x0, None, jax.random.PRNGKey(0),
                                     snr_gamma=5.0))
    assert np.isfinite(loss) and 0 < loss <= 1.5
