"""Sample-quality and reconstruction metrics.

- accuracy: how often the clean evaluation classifier labels class-conditional samples as
  the class they were asked for.
- classifier FID: the Frechet distance (Heusel et al. 2017, Eq. 6 of "GANs Trained by a Two
  Time-Scale Update Rule") between Gaussians fitted to the evaluation classifier's penultimate
  features of two image sets. It has the form of FID but NOT its numbers: FID uses Inception-v3
  features of 299x299 ImageNet-style images; ours come from a small MNIST/Fashion-MNIST CNN, so
  values are comparable only with each other, never with published FIDs.
- diversity: mean pairwise feature distance within a class (guidance trades this away).
- PSNR / MSE for reconstructions, for images in [-1, 1] (data range 2).
- out-of-range fraction and background noise: how clean samples are (pixels beyond [-1, 1]
  before any clip; the grey speckle a picture shows away from the strokes). ~0 for real MNIST.
- handwriting attributes and the style ratio: is an edit still *this* digit? Centroid, slant,
  stroke thickness and height of each image; the ratio compares how far edits move from their
  sources with how far a random image of the target class is from them; the same-hand digit
  (a real digit of the target class at the source's rank within its class) sets its scale.
"""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit equals the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, F), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (by eigh)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2).

    tr((S1 S2)^(1/2)) is computed stably as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the matrix inside
    is symmetric PSD, so both roots come from eigh, with no complex round-off as in
    scipy.linalg.sqrtm(S1 @ S2).
    """
    root1 = _sqrtm_psd(np.asarray(sigma1, np.float64))
    inner = root1 @ np.asarray(sigma2, np.float64) @ root1
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)))
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def feature_fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def diversity(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise Euclidean feature distance between samples of the same label, averaged
    over labels (0 when every sample of a class is identical; NaN when no label has two)."""
    f, labels = np.asarray(features, np.float64), np.asarray(labels)
    per_class = []
    for c in np.unique(labels):
        g = f[labels == c]
        if len(g) < 2:
            continue
        d = np.sqrt(np.maximum(((g[:, None] - g[None]) ** 2).sum(-1), 0.0))  # (n, n)
        per_class.append(d.sum() / (len(g) * (len(g) - 1)))
    return float(np.mean(per_class)) if per_class else float("nan")


def mse(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image mean squared error, (N, ...) -> (N,)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    return np.mean(d.reshape(d.shape[0], -1) ** 2, axis=1)


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB: 10 log10(range^2 / MSE), (N,).

    data_range = 2 for images in [-1, 1]. Identical images give +inf.
    """
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse(x, y))


def out_of_range_fraction(images: np.ndarray, bound: float = 1.05) -> float:
    """Fraction of pixel values with |x| > bound, before any clipping: how far samples leave the
    data range [-1, 1] (real images: 0). bound = 1.05 ignores round-off at the edges."""
    x = np.asarray(images, np.float64)
    return float(np.mean(np.abs(x) > bound))


def background_mask(images: np.ndarray, radius: int = 3, ink: float = 0.0) -> np.ndarray:
    """(N, H, W) True where a pixel is farther than `radius` pixels (Chebyshev distance) from every
    pixel above `ink`: the background of a light-on-dark digit, away from its strokes. Colour
    images use the channel mean."""
    strokes = np.asarray(images, np.float64).mean(axis=-1) > ink  # (N, H, W)
    near = np.zeros_like(strokes)
    padded = np.pad(strokes, ((0, 0), (radius, radius), (radius, radius)))
    H, W = strokes.shape[1:]
    for dy in range(2 * radius + 1):  # dilation by a (2r+1) x (2r+1) square
        for dx in range(2 * radius + 1):
            near |= padded[:, dy:dy + H, dx:dx + W]
    return ~near


def background_noise(images: np.ndarray, radius: int = 3, ink: float = 0.0) -> float:
    """Mean |x + 1| over the background pixels of all images (background_mask), after clipping to
    [-1, 1]: the grey speckle a picture shows away from the strokes (values below -1 display as
    black; out_of_range_fraction counts them). Real MNIST digits: ~0. NaN if no background."""
    x = np.clip(np.asarray(images, np.float64), -1.0, 1.0).mean(axis=-1)  # (N, H, W)
    mask = background_mask(images, radius, ink)
    return float(np.abs(x[mask] + 1.0).mean()) if mask.any() else float("nan")


ATTRIBUTES = ("centroid_row", "centroid_col", "slant", "thickness", "height")


def handwriting_attributes(images: np.ndarray, ink: float = 0.0) -> np.ndarray:
    """Per-image handwriting attributes (N, 5), in the order of ATTRIBUTES, for images in [-1, 1].

    With ink mass m = (x + 1) / 2 per pixel (rows r, columns c):
    - centroid (r_bar, c_bar) = sum m (r, c) / sum m, in pixels;
    - slant = mu11 / mu02, the second-moment shear: mu11 = sum m (r - r_bar)(c - c_bar),
      mu02 = sum m (r - r_bar)^2, the columns gained per row down the image (0: upright;
      the shear that deskews a digit, as in the classic MNIST deskewing);
    - thickness = ink area / (ink perimeter / 2), on the pixels brighter than `ink`: the width
      of a stroke of that area and outline (a w x h bar gives w h / (w + h), ~w when long);
    - height = rows from the topmost to the bottommost ink pixel.
    An image without ink gets zeros.
    """
    x = np.asarray(images, np.float64)
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1).mean(-1)  # (N, H, W)
    N, H, W = x.shape
    m = (x + 1.0) / 2.0
    # Less than one pixel's worth of ink (a blank image, or one a little below -1 everywhere,
    # whose mass is ~0 or negative) has no centroid: dividing by it gave centroids of ~1e12.
    total = m.sum((1, 2))  # (N,)
    inked = total >= 1.0
    mass = np.where(inked, total, 1.0)
    r, c = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    r_bar = np.where(inked, (m * r).sum((1, 2)) / mass, 0.0)  # (N,)
    c_bar = np.where(inked, (m * c).sum((1, 2)) / mass, 0.0)
    dr, dc = r - r_bar[:, None, None], c - c_bar[:, None, None]
    mu11, mu02 = (m * dr * dc).sum((1, 2)), (m * dr**2).sum((1, 2))
    slant = np.where(inked & (mu02 > 1e-12), mu11 / np.maximum(mu02, 1e-12), 0.0)
    binary = np.pad(x > ink, ((0, 0), (1, 1), (1, 1)))  # (N, H + 2, W + 2)
    area = binary.sum((1, 2))
    perimeter = (np.abs(np.diff(binary.astype(np.int8), axis=1)).sum((1, 2))
                 + np.abs(np.diff(binary.astype(np.int8), axis=2)).sum((1, 2)))  # unit edges ink | no ink
    thickness = np.where(perimeter > 0, area / np.maximum(perimeter / 2.0, 1.0), 0.0)
    rows = binary[:, 1:-1, 1:-1].any(axis=2)  # (N, H)
    top, bottom = rows.argmax(1), H - 1 - rows[:, ::-1].argmax(1)
    height = np.where(rows.any(1), bottom - top + 1, 0)
    return np.stack([r_bar, c_bar, slant, thickness, height], axis=1)


HAND = ("slant", "thickness")  # the writer's hand: what MNIST's centring and scaling leave free


def style_distance(a: np.ndarray, b: np.ndarray, spread: np.ndarray, attributes=HAND) -> np.ndarray:
    """Mean over `attributes` of |a - b| / spread, per image (N,): attribute rows (N, 5) of two
    image sets (handwriting_attributes), spread (5,) the attributes' standard deviations over
    real held-out digits."""
    cols = [ATTRIBUTES.index(name) for name in attributes]
    return np.mean(np.abs(np.asarray(a) - np.asarray(b))[:, cols] / np.asarray(spread)[cols], axis=1)


def style_ratio(edits: np.ndarray, sources: np.ndarray, references: np.ndarray, spread: np.ndarray,
                attributes=HAND) -> float:
    """How much of the source's handwriting an edit keeps: mean style_distance(edit, source)
    over mean style_distance(reference, source), where the references are random samples of
    each edit's target class (drawn at the edit's guidance scale). 1.0: no more than an
    unrelated digit of that class; 0: all. By default over slant and thickness (HAND; see
    style_ratio_by_attribute for why). Arguments are images (N, H, W, C) in [-1, 1], spread
    as in style_distance."""
    src = handwriting_attributes(sources)
    near = style_distance(handwriting_attributes(edits), src, spread, attributes).mean()
    return float(near / style_distance(handwriting_attributes(references), src, spread, attributes).mean())


def same_hand(sources: np.ndarray, source_labels, pool: np.ndarray, pool_labels, target_labels,
              attributes=HAND) -> np.ndarray:
    """For each source, the index of the pool image of its target class that stands where the
    source stands in its own class: the nearest, summed over `attributes`, in within-class
    percentile rank (the rank the captions' terciles cut). Arguments are attribute rows (N, 5)
    (handwriting_attributes) and labels; the ranks are taken among the pool's images of each class.

    The pool image is a real digit of the new class written as far from that class's typical slant
    and thickness as the source is from its own class's: its style_ratio is what the writer's own
    new digit scores, the scale an edit's ratio is read on."""
    cols = [ATTRIBUTES.index(name) for name in attributes]
    pool, pool_labels = np.asarray(pool)[:, cols], np.asarray(pool_labels)
    sources, source_labels = np.asarray(sources)[:, cols], np.asarray(source_labels)

    def rank(values, c):  # the fraction of class c's pool below each value, ties counted half
        mine = pool[pool_labels == c]
        if len(mine) == 0:
            raise ValueError(f"the pool has no image of class {c}")
        return (mine[None] < values[:, None]).mean(1) + 0.5 * (mine[None] == values[:, None]).mean(1)

    pool_rank, source_rank = np.empty(pool.shape), np.empty(sources.shape)
    for c in np.unique(pool_labels):
        pool_rank[pool_labels == c] = rank(pool[pool_labels == c], c)
    for c in np.unique(source_labels):
        source_rank[source_labels == c] = rank(sources[source_labels == c], c)
    picked = np.empty(len(sources), np.int64)
    for i, t in enumerate(np.asarray(target_labels)):
        candidates = np.flatnonzero(pool_labels == t)
        if len(candidates) == 0:
            raise ValueError(f"the pool has no image of class {t}")
        picked[i] = candidates[np.argmin(np.abs(pool_rank[candidates] - source_rank[i]).sum(1))]
    return picked


def style_ratio_by_attribute(edits: np.ndarray, sources: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """style_ratio for each of ATTRIBUTES alone (the spread cancels): which parts of the
    handwriting the edits keep. On MNIST, whose digits are centred by their centre of mass and
    scaled to a 20-pixel box, centroid and height vary little and mostly with the class, so
    slant and thickness are where an edit can keep a writer's hand. NaN for an attribute on
    which the references do not differ from the sources."""
    src = handwriting_attributes(sources)
    near, far = (np.abs(handwriting_attributes(x) - src).mean(0) for x in (edits, references))  # (5,) each
    return {name: float(n / f) if f > 0 else float("nan") for name, n, f in zip(ATTRIBUTES, near, far)}
