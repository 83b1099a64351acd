import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff import analytic, guidance, samplers, schedules

S = schedules.linear_schedule(1000)
ABAR64 = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # float64, independent of the code


# ----------------------------------------------------------------- timesteps (hand-written)

EXPECTED_10 = {
    "leading": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
    "trailing": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
    "linspace": [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
}
EXPECTED_50 = {
    "leading": list(range(980, -1, -20)),
    "trailing": list(range(999, 0, -20)),
    "linspace": [999, 979, 958, 938, 917, 897, 877, 856, 836, 816, 795, 775, 754, 734, 714,
                 693, 673, 652, 632, 612, 591, 571, 550, 530, 510, 489, 469, 449, 428, 408,
                 387, 367, 347, 326, 306, 285, 265, 245, 224, 204, 183, 163, 143, 122, 102,
                 82, 61, 41, 20, 0],
}


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
def test_timesteps_match_lin_et_al_table_2(spacing):
    assert samplers.make_timesteps(1000, 10, spacing).tolist() == EXPECTED_10[spacing]
    assert samplers.make_timesteps(1000, 50, spacing).tolist() == EXPECTED_50[spacing]
    assert samplers.make_timesteps(1000, 1000, spacing).tolist() == list(range(999, -1, -1))


def test_inversion_walks_the_sampler_pairs_reversed():
    ts = samplers.make_timesteps(1000, 10, "leading")
    t, t_prev = samplers.step_pairs(ts)
    assert list(zip(t.tolist(), t_prev.tolist())) == [
        (900, 800), (800, 700), (700, 600), (600, 500), (500, 400),
        (400, 300), (300, 200), (200, 100), (100, 0), (0, -1)]


def test_inversion_round_trip_is_exact_when_eps_ignores_x():
    """If eps depends on t only, a DDIM step is exactly invertible, so invert-then-sample is the
    identity iff inversion walks the same (t, t_prev) pairs and evaluates eps at the same t:
    an off-by-one in either would leave an O(1) error."""
    table = jax.random.normal(jax.random.PRNGKey(0), (1000, 3))
    eps_fn = lambda x, t, y: table[t]  # (B, 3): depends on t, not on x
    x0 = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    for spacing in samplers.SPACINGS:
        ts = samplers.make_timesteps(1000, 10, spacing)
        x_T = samplers.ddim_invert(eps_fn, S, x0, ts)
        np.testing.assert_allclose(samplers.ddim_sample(eps_fn, S, x_T, ts), x0, atol=1e-4)


# ----------------------------------------------------------------- one step, by hand


def test_ddim_step_hand_computed():
    t, t_prev, x_t, eps, eta, z = 500, 400, 0.8, -0.3, 0.5, 1.2
    a, ap = ABAR64[t], ABAR64[t_prev]
    x0 = (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a)
    sigma = eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    expected = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * eps + sigma * z
    step = jax.jit(samplers.ddim_step)
    got = step(S, jnp.array([[x_t]]), jnp.array([[eps]]), jnp.array([t]), jnp.array([t_prev]), eta, jnp.array([[z]]))
    np.testing.assert_allclose(float(got[0, 0]), expected, rtol=1e-5)
    # t_prev = -1: the step lands on x0_pred.
    got = samplers.ddim_step(S, jnp.array([[x_t]]), jnp.array([[eps]]), jnp.array([t]), jnp.array([-1]))
    np.testing.assert_allclose(float(got[0, 0]), x0, rtol=1e-5)


def test_dynamic_threshold_hand_computed():
    # Image 0: |x| = 0.1, 0.2, ..., 2.0 (20 values), p = 0.9 -> quantile 1.81 (numpy's linear rule:
    # position 0.9 * 19 = 17.1 between 1.8 and 1.9), so every value is clipped to +-1.81 and
    # divided by 1.81. Image 1 stays inside [-1, 1]: its scale is max(quantile, 1) = 1, untouched.
    signs = np.where(np.arange(20) % 2, -1.0, 1.0)
    big = signs * np.arange(1, 21) / 10
    small = np.linspace(-0.9, 0.9, 20)
    x0 = jnp.asarray(np.stack([big, small]).reshape(2, 4, 5, 1), jnp.float32)
    got = np.asarray(samplers.limit_x0(x0, dynamic_threshold=0.9)).reshape(2, 20)
    scale = 1.8 + 0.1 * 0.1
    np.testing.assert_allclose(got[0], np.clip(big, -scale, scale) / scale, rtol=1e-5)
    np.testing.assert_allclose(got[1], small, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(samplers.limit_x0(x0, clip_x0=True)).reshape(2, 20)[0],
                               np.clip(big, -1, 1))
    assert samplers.limit_x0(x0) is x0  # off by default: x0_pred as predicted


def test_ddim_step_applies_the_dynamic_threshold_to_x0_pred():
    t, t_prev, x_t, eps = 500, 400, 3.0, -0.3
    a, ap = ABAR64[t], ABAR64[t_prev]
    x0 = (x_t - np.sqrt(1 - a) * eps) / np.sqrt(a)  # > 1, alone in its image: scale = |x0|
    got = samplers.ddim_step(S, jnp.array([[x_t]]), jnp.array([[eps]]), jnp.array([t]), jnp.array([t_prev]),
                             dynamic_threshold=0.995)
    np.testing.assert_allclose(float(got[0, 0]), np.sqrt(ap) * 1.0 + np.sqrt(1 - ap) * eps, rtol=1e-5)


def test_ddpm_step_hand_computed_eq_11():
    t, x_t, eps, z = 700, 0.4, 0.9, -0.7
    beta, a, ap = 1 - ABAR64[t] / ABAR64[t - 1], ABAR64[t], ABAR64[t - 1]
    mean = (x_t - beta / np.sqrt(1 - a) * eps) / np.sqrt(1 - beta)  # Ho et al. Eq. 11
    for variance, var in [("beta_tilde", (1 - ap) / (1 - a) * beta), ("beta", beta)]:
        got = samplers.ddpm_step(S, jnp.array([[x_t]]), jnp.array([[eps]]), jnp.array([t]), jnp.array([[z]]), variance=variance)
        np.testing.assert_allclose(float(got[0, 0]), mean + np.sqrt(var) * z, rtol=1e-5)


@pytest.mark.parametrize("t,t_prev", [(999, 998), (500, 499), (1, 0), (0, -1), (900, 700), (60, -1)])
def test_ddim_eta1_step_is_the_ddpm_step(t, t_prev):
    keys = jax.random.split(jax.random.PRNGKey(t), 3)
    x_t, eps, z = (jax.random.normal(k, (4, 6, 6, 1)) for k in keys)
    tt, tp = jnp.full((4,), t), jnp.full((4,), t_prev)
    ddim = samplers.ddim_step(S, x_t, eps, tt, tp, eta=1.0, noise=z)
    ddpm = samplers.ddpm_step(S, x_t, eps, tt, z, t_prev=tp)
    np.testing.assert_allclose(ddim, ddpm, atol=2e-5)


def test_ddim_eta1_all_steps_is_the_ddpm_sampler():
    mixture = analytic.gaussian_mixture([[1.0, 0.0], [-1.0, 0.5]], [0.3, 0.2])
    eps_fn = analytic.mixture_eps_fn(S, mixture)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    key = jax.random.PRNGKey(1)
    all_steps = np.arange(999, -1, -1)
    ddim = samplers.ddim_sample(eps_fn, S, x_T, all_steps, eta=1.0, key=key)
    ddpm = samplers.ddpm_sample(eps_fn, S, x_T, key)
    np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
    assert float(jnp.abs(ddpm - x_T).mean()) > 0.1  # the samplers did move the samples


# ----------------------------------------------------------------- sampling the data law


def exact_discrete_law(mean, std, ts, eta=None, ddpm_variance=None):
    """Mean and variance of a sampler's output on N(mean, std^2) data, in closed form.

    With Gaussian data the exact eps is affine in x_t, so each step is x' = A x + B + sigma z
    and the output is Gaussian: m' = A m + B, v' = A^2 v + sigma^2, started from N(0, 1).
    Formulas written again here, in float64, independently of minidiff's code.
    """
    m, v = 0.0, 1.0
    pairs = list(zip(ts, list(ts[1:]) + [-1]))
    for t, tp in pairs:
        a, ap = ABAR64[t], (ABAR64[tp] if tp >= 0 else 1.0)
        c = np.sqrt(1 - a) / (a * std**2 + 1 - a)  # eps = c (x - sqrt(a) mean)
        a0, b0 = (1 - np.sqrt(1 - a) * c) / np.sqrt(a), np.sqrt(1 - a) * c * mean  # x0_pred = a0 x + b0
        beta = 1 - a / ap
        if ddpm_variance is None:  # DDIM, Eq. 12 and 16
            sigma2 = eta**2 * (1 - ap) / (1 - a) * beta
            d = np.sqrt(1 - ap - sigma2)
            A, B = np.sqrt(ap) * a0 + d * c, np.sqrt(ap) * b0 - d * c * np.sqrt(a) * mean
        else:  # posterior mean of q(x_prev | x_t, x0_pred)
            k0, kt = np.sqrt(ap) * beta / (1 - a), np.sqrt(1 - beta) * (1 - ap) / (1 - a)
            A, B = k0 * a0 + kt, k0 * b0
            sigma2 = (1 - ap) / (1 - a) * beta if ddpm_variance == "beta_tilde" else beta * (tp >= 0)
        m, v = A * m + B, A**2 * v + sigma2
    return m, v


DATA_MEAN, DATA_STD, N = 0.5, 0.5, 100_000


def assert_moments(x, m, v):
    """Sample mean and std within 5 standard errors of the exact law N(m, v) for N draws."""
    n = x.size
    assert abs(float(x.mean()) - m) < 5 * np.sqrt(v / n), (float(x.mean()), m)
    assert abs(float(x.std()) - np.sqrt(v)) < 5 * np.sqrt(v / (2 * (n - 1))), (float(x.std()), np.sqrt(v))


@pytest.fixture(scope="module")
def gaussian_eps_fn():
    return analytic.mixture_eps_fn(S, analytic.gaussian([DATA_MEAN], DATA_STD))


@pytest.mark.slow
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_50_steps_samples_its_exact_law(gaussian_eps_fn, eta):
    ts = samplers.make_timesteps(1000, 50)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (N, 1))
    x = samplers.ddim_sample(gaussian_eps_fn, S, x_T, ts, eta=eta, key=jax.random.PRNGKey(1))
    m, v = exact_discrete_law(DATA_MEAN, DATA_STD, ts, eta=eta)
    assert_moments(x, m, v)
    # 50 steps of a first-order solver shrink the spread: 6% at eta = 0, 11% at eta = 1.
    assert abs(m - DATA_MEAN) < 0.01 and abs(np.sqrt(v) - DATA_STD) < 0.12 * DATA_STD


@pytest.mark.slow
def test_ddpm_1000_steps_samples_the_data(gaussian_eps_fn):
    x_T = jax.random.normal(jax.random.PRNGKey(0), (N, 1))
    x = samplers.ddpm_sample(gaussian_eps_fn, S, x_T, jax.random.PRNGKey(2))
    m, v = exact_discrete_law(DATA_MEAN, DATA_STD, np.arange(999, -1, -1), ddpm_variance="beta_tilde")
    assert_moments(x, m, v)
    assert abs(m - DATA_MEAN) < 1e-3 and abs(np.sqrt(v) - DATA_STD) < 0.01 * DATA_STD


@pytest.mark.slow
def test_sigma_hat_ddpm_variant_samples_its_exact_law(gaussian_eps_fn):
    ts = samplers.make_timesteps(1000, 50)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (N, 1))
    x = samplers.ddpm_sample(gaussian_eps_fn, S, x_T, jax.random.PRNGKey(3), timesteps=ts, variance="beta")
    assert_moments(x, *exact_discrete_law(DATA_MEAN, DATA_STD, ts, ddpm_variance="beta"))


def test_discretisation_error_vanishes_with_more_steps():
    """The exact law of DDIM (eta = 0) approaches the data law as the number of steps grows."""
    gaps = [abs(np.sqrt(exact_discrete_law(DATA_MEAN, DATA_STD, samplers.make_timesteps(1000, n), eta=0.0)[1]) - DATA_STD)
            for n in (10, 20, 50, 100, 1000)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.005 * DATA_STD


# ----------------------------------------------------------------- DDIM determinism and inversion


def test_ddim_eta0_is_deterministic():
    eps_fn = analytic.mixture_eps_fn(S, analytic.gaussian_mixture([[1.0], [-1.0]], [0.2, 0.2]))
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, 1))
    ts = samplers.make_timesteps(1000, 20)
    a = samplers.ddim_sample(eps_fn, S, x_T, ts, key=jax.random.PRNGKey(1))
    b = samplers.ddim_sample(eps_fn, S, x_T, ts, key=jax.random.PRNGKey(2))
    c = samplers.ddim_sample(eps_fn, S, x_T, ts, eta=0.5, key=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-2


def reconstruction_mse(num_steps):
    mixture = analytic.gaussian_mixture([[0.6, -0.4, 0.2, 0.0], [-0.5, 0.3, 0.1, 0.4]], [0.3, 0.25])
    eps_fn = analytic.mixture_eps_fn(S, mixture)
    x0, y = analytic.sample_data(mixture, jax.random.PRNGKey(0), 256)
    ts = samplers.make_timesteps(1000, num_steps)
    x_T = samplers.ddim_invert(eps_fn, S, x0, ts, y=y)
    return float(jnp.mean((samplers.ddim_sample(eps_fn, S, x_T, ts, y=y) - x0) ** 2))


def test_ddim_encode_decode_error_falls_with_steps():
    mse = {n: reconstruction_mse(n) for n in (10, 20, 50, 100, 1000)}
    values = list(mse.values())
    assert all(a > b for a, b in zip(values, values[1:])), mse
    assert mse[1000] < 1e-5 and mse[10] > 10 * mse[1000], mse


def test_trajectories_have_every_step():
    eps_fn = analytic.mixture_eps_fn(S, analytic.gaussian([0.0, 0.0], 0.5))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
    ts = samplers.make_timesteps(1000, 7)
    x0, traj = samplers.ddim_sample(eps_fn, S, x, ts, return_trajectory=True)
    assert traj.shape == (8, 3, 2)
    np.testing.assert_array_equal(traj[0], x)
    np.testing.assert_array_equal(traj[-1], x0)
    x_T, inv = samplers.ddim_invert(eps_fn, S, x0, ts, return_trajectory=True)
    assert inv.shape == (8, 3, 2)
    np.testing.assert_array_equal(inv[-1], x_T)


def test_changing_the_guidance_scale_does_not_recompile():
    mixture = analytic.gaussian_mixture([[1.0], [-1.0]], [0.2, 0.2])
    base = analytic.mixture_eps_fn(S, mixture)
    x_T = jnp.ones((4, 1))
    y = jnp.zeros((4,), jnp.int32)
    ts = samplers.make_timesteps(1000, 5)
    samplers.ddim_sample(guidance.classifier_free(base, 1.0, 2), S, x_T, ts, y=y)
    size = samplers._ddim_loop._cache_size()
    out = [samplers.ddim_sample(guidance.classifier_free(base, w, 2), S, x_T, ts, y=y) for w in (0.0, 3.0)]
    assert samplers._ddim_loop._cache_size() == size
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3


# ----------------------------------------------------------------- bad input


def _eps(x, t, y):
    return jnp.zeros_like(x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: samplers.make_timesteps(1000, 0), "num_steps"),
        (lambda: samplers.make_timesteps(1000, 1001), "num_steps"),
        (lambda: samplers.make_timesteps(1000, 10, "uniform"), "unknown spacing 'uniform'"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros((2, 3)), [10, 20]), "strictly decreasing"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros((2, 3)), [1000, 20]), r"0\.\.999"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros((2, 3)), [20, 10], eta=-0.1), "eta must be >= 0"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros((2, 3)), [20, 10], eta=0.5), "key is required"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros((2, 3)), [20, 10], y=jnp.zeros(3, jnp.int32)), r"y must have shape \(B,\)"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros(3), [20, 10]), "must be batched"),
        (lambda: samplers.ddpm_sample(_eps, S, jnp.zeros((2, 3)), None), "needs a key"),
        (lambda: samplers.ddpm_sample(_eps, S, jnp.zeros((2, 3)), jax.random.PRNGKey(0), variance="big"), "unknown variance"),
        (lambda: samplers.ddim_invert(_eps, S, jnp.zeros((2, 3)), [5.0, 1.0]), "integers"),
        (lambda: samplers.ddim_sample(_eps, S, jnp.zeros((2, 3)), [20, 10], dynamic_threshold=1.0), "percentile"),
        (lambda: samplers.ddpm_sample(_eps, S, jnp.zeros((2, 3)), jax.random.PRNGKey(0), clip_x0=True,
                                      dynamic_threshold=0.99), "not both"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fixed_point_inversion_reconstructs_where_plain_inversion_does_not():
    """Pan et al. 2023 / Garibi et al. 2024: solving each inverse step for the x_next that the
    sampling step maps back to x_t removes DDIM inversion's one approximation, so at 10 steps
    the exact mixture model reconstructs to round-off where plain inversion is off by ~3e-2.
    (Narrow components make eps steep and the iteration slow: at std 0.1, 10 iterations leave
    7e-4 and 30 leave 8e-6.)"""
    mixture = analytic.gaussian_mixture([[1.0, 0.5], [-1.0, -0.5]], [0.5, 0.5])
    eps_fn = analytic.mixture_eps_fn(S, mixture)
    x0, y = analytic.sample_data(mixture, jax.random.PRNGKey(0), 256)
    ts = samplers.make_timesteps(1000, 10)

    def mse(k):
        x_T = samplers.ddim_invert(eps_fn, S, x0, ts, y=y, fixed_point_iterations=k)
        return float(jnp.mean((samplers.ddim_sample(eps_fn, S, x_T, ts, y=y) - x0) ** 2))

    plain, fixed = mse(0), mse(10)
    assert plain > 1e-2 and fixed < 1e-7, (plain, fixed)
    assert mse(2) < plain  # each iteration helps
    with pytest.raises(ValueError, match="fixed_point_iterations"):
        samplers.ddim_invert(eps_fn, S, x0, ts, fixed_point_iterations=-1)
