import math

import numpy as np
import pytest

from minidiff import schedules


def test_linear_schedule_matches_ddpm_paper():
    s = schedules.linear_schedule(1000)
    betas = np.asarray(s.betas)
    assert betas.shape == (1000,) and betas.dtype == np.float32
    np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-4)


def test_derived_arrays_are_consistent():
    s = schedules.linear_schedule(1000)
    betas = np.asarray(s.betas, np.float64)
    alpha_bar_t = np.cumprod(1 - betas)
    np.testing.assert_allclose(s.alphas, 1 - betas, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod, alpha_bar_t, rtol=1e-5)
    np.testing.assert_allclose(s.alphas_cumprod_prev[0], 1.0)
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    np.testing.assert_allclose(np.asarray(s.sqrt_alphas_cumprod) ** 2, alpha_bar_t, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.sqrt_one_minus_alphas_cumprod) ** 2, 1 - alpha_bar_t, rtol=1e-5)
    # Hand value: alpha_bar at the last step of the DDPM schedule is ~4.04e-5.
    np.testing.assert_allclose(float(s.alphas_cumprod[-1]), 4.0358e-5, rtol=1e-3)
    assert float(s.posterior_variance[0]) == 0.0


def test_cosine_schedule_follows_its_closed_form():
    T, offset = 1000, 0.008
    s = schedules.cosine_schedule(T)
    f = lambda t: math.cos((t / T + offset) / (1 + offset) * math.pi / 2) ** 2
    expected = np.array([f(t + 1) / f(0) for t in range(T)])
    # Below the beta clip, alpha_bar_t is exactly f(t + 1) / f(0).
    np.testing.assert_allclose(s.alphas_cumprod[:900], expected[:900], rtol=1e-5, atol=1e-7)
    assert float(np.max(s.betas)) <= 0.999 + 1e-6


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_bad_T_raises(bad):
    with pytest.raises(ValueError, match="T must be"):
        schedules.linear_schedule(bad)


def test_unknown_schedule_name_raises():
    with pytest.raises(ValueError, match="unknown schedule name 'quadratic'"):
        schedules.make_schedule("quadratic")
    assert schedules.make_schedule("cosine", 10).num_timesteps == 10


def test_bad_betas_raise():
    with pytest.raises(ValueError, match="beta_start"):
        schedules.linear_schedule(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        schedules.schedule_from_betas([0.1, 1.0])
