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


def _bar(top=4, bottom=23, left=12, width=3, shear=0.0):
    """A 28x28 image in [-1, 1] with one bar of ink, shifted by `shear` columns per row."""
    img = -np.ones((28, 28, 1))
    for r in range(top, bottom + 1):
        start = int(round(left + shear * (r - (top + bottom) / 2)))
        img[r, start:start + width] = 1.0
    return img


def test_handwriting_attributes_of_bars():
    below = np.full((28, 28, 1), -1.02)  # a blank edit a little below -1: negative ink mass
    below[5, 5] = -0.9
    a = metrics.handwriting_attributes(np.stack([_bar(), _bar(shear=0.5), _bar(width=6), -np.ones((28, 28, 1)), below]))
    assert a.shape == (5, len(metrics.ATTRIBUTES))
    np.testing.assert_allclose(a[0, :2], [13.5, 13.0])  # centroid of rows 4..23, columns 12..14
    np.testing.assert_allclose(a[0, 2], 0.0, atol=1e-12)  # upright
    np.testing.assert_allclose(a[1, 2], 0.5, atol=0.05)  # half a column per row
    np.testing.assert_allclose(a[0, 3], 3 * 20 / (3 + 20))  # w h / (w + h)
    np.testing.assert_allclose(a[2, 3], 6 * 20 / (6 + 20))
    np.testing.assert_array_equal(a[:, 4], [20, 20, 20, 0, 0])
    np.testing.assert_array_equal(a[3], 0.0)  # no ink
    np.testing.assert_array_equal(a[4, :3], 0.0)  # no centroid or slant (it was ~1e12)


def test_same_hand_matches_the_standing_within_each_class_not_the_raw_values():
    def rows(slant_thickness):  # attribute rows with only slant and thickness set
        a = np.zeros((len(slant_thickness), len(metrics.ATTRIBUTES)))
        a[:, [metrics.ATTRIBUTES.index("slant"), metrics.ATTRIBUTES.index("thickness")]] = slant_thickness
        return a
    # class 0 runs slant 0..3 with thickness 3..0; class 1 slant 10..40 with thickness 40..10
    pool = rows([(0, 3), (1, 2), (2, 1), (3, 0), (10, 40), (20, 30), (30, 20), (40, 10)])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # a 0 at the third of four slants and thicknesses (ranks 0.625, 0.375) -> the 1 at (30, 20);
    # a 1 steeper and thinner than every 1 (ranks 1, 0) -> the steepest, thinnest 0
    sources = rows([(2, 1), (45, 5)])
    np.testing.assert_array_equal(metrics.same_hand(sources, [0, 1], pool, labels, [1, 0]), [6, 3])
    # the same digit's class: itself
    np.testing.assert_array_equal(metrics.same_hand(pool, labels, pool, labels, labels), np.arange(8))
    with pytest.raises(ValueError, match="no image of class 2"):
        metrics.same_hand(sources, [0, 1], pool, labels, [2, 0])


def test_style_ratio():
    spread = np.ones(5)
    src = np.stack([_bar(), _bar(shear=0.3)])
    far = np.stack([_bar(left=4, width=6), _bar(left=20, shear=-0.3)])
    assert metrics.style_ratio(src, src, far, spread) == 0.0  # the edit is the source
    assert metrics.style_ratio(far, src, far, spread) == 1.0  # no closer than the references
    half = np.stack([_bar(left=8, width=4), _bar(left=16, shear=0.0)])
    assert 0.0 < metrics.style_ratio(half, src, far, spread) < 1.0
    by_attribute = metrics.style_ratio_by_attribute(half, src, far)
    assert list(by_attribute) == list(metrics.ATTRIBUTES)
    # centroid columns 13, 13 (sources), 6.5, 21 (references), 9.5, 17 (half): 7.5 / 14.5;
    # the second half bar is upright, halfway between slants +0.31 and -0.31
    assert by_attribute["centroid_col"] == pytest.approx(7.5 / 14.5) and by_attribute["slant"] == pytest.approx(0.5)
    t = metrics.handwriting_attributes(np.concatenate([src, far, half]))[:, 3]  # thickness
    assert by_attribute["thickness"] == pytest.approx(
        (abs(t[4] - t[0]) + abs(t[5] - t[1])) / (abs(t[2] - t[0]) + abs(t[3] - t[1])))
    # every bar has rows 4..23: the references differ from the sources in neither, so no ratio
    assert np.isnan(by_attribute["centroid_row"]) and np.isnan(by_attribute["height"])
    # The style ratio is over slant and thickness by default: with a unit spread, the mean of the
    # two attributes' distances, edits over references.
    a = metrics.handwriting_attributes(np.concatenate([src, far, half]))[:, [2, 3]]  # slant, thickness
    near, far_d = np.abs(a[4:] - a[:2]).mean(), np.abs(a[2:4] - a[:2]).mean()
    assert metrics.style_ratio(half, src, far, spread) == pytest.approx(near / far_d)
    assert metrics.style_ratio(half, src, far, spread, attributes=metrics.ATTRIBUTES) != pytest.approx(near / far_d)
