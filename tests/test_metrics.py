import numpy as np
import pytest

from minidiff import metrics

RNG = np.random.default_rng(0)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_a_shift_adds_its_square():
    a = RNG.standard_normal((2000, 16)) @ RNG.standard_normal((16, 16))
    assert abs(metrics.feature_fid(a, a)) < 1e-6
    shift = np.full(16, 0.5)
    # Same covariance, means differing by shift: FD = ||shift||^2 exactly.
    np.testing.assert_allclose(metrics.feature_fid(a, a + shift), shift @ shift, rtol=1e-6)
    assert metrics.feature_fid(a, a + 2 * shift) > metrics.feature_fid(a, a + shift)


def test_frechet_distance_matches_the_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # A rotated pair gives the same distance (the formula is basis-free).
    q, _ = np.linalg.qr(RNG.standard_normal((3, 3)))
    got = metrics.frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_psnr_of_known_noise():
    x = RNG.uniform(-1, 1, (4, 8, 8, 1))
    np.testing.assert_allclose(metrics.mse(x, x + 0.1), 0.01, rtol=1e-9)
    np.testing.assert_allclose(metrics.psnr(x, x + 0.1), 10 * np.log10(4 / 0.01), rtol=1e-9)  # 26.02 dB
    assert np.all(np.isinf(metrics.psnr(x, x)))


def test_accuracy_and_diversity():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    assert metrics.accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    f = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    assert metrics.diversity(f, [0, 0, 1, 1]) == pytest.approx(2.5)  # (5 + 0) / 2
    with pytest.raises(ValueError, match="features must be"):
        metrics.gaussian_stats(np.zeros(5))


def test_out_of_range_fraction_counts_values_beyond_the_bound():
    x = np.zeros((2, 2, 2, 1))
    x[0, 0, 0, 0], x[1, 1, 1, 0], x[1, 0, 1, 0] = -1.2, 1.06, 1.04  # two beyond 1.05, one within
    assert metrics.out_of_range_fraction(x) == 2 / 8


def test_background_noise_by_hand():
    x = np.full((1, 11, 11, 1), -1.0)
    x[0, 5, 5, 0] = 1.0           # one ink pixel: everything within 3 pixels of it is "near"
    x[0, 0, 0, 0] = -0.5          # background, |x + 1| = 0.5
    x[0, 2, 2, 0] = -0.9          # within 3 of the ink (Chebyshev 3): not background
    mask = metrics.background_mask(x)
    assert mask.sum() == 121 - 49 and not mask[0, 2, 2] and mask[0, 1, 1]
    assert metrics.background_noise(x) == pytest.approx(0.5 / 72)
    assert metrics.background_noise(np.full((1, 5, 5, 1), -1.0)) == 0.0  # a blank image
    x[0, 0, 1, 0] = -3.0          # below the range: shows as black, so adds nothing
    assert metrics.background_noise(x) == pytest.approx(0.5 / 72)
