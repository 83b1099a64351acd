"""A diffusion model you can solve by hand: exact eps for Gaussian and Gaussian-mixture data.

If the data are a mixture of isotropic Gaussians, one component per class,

    p(x_0 | y = k) = N(mu_k, sigma_k^2 I),   p(y = k) = pi_k,

then every noisy marginal is again such a mixture. From x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps:

    p(x_t | y = k) = N(sqrt(alpha_bar_t) mu_k, v_k I),   v_k = alpha_bar_t sigma_k^2 + 1 - alpha_bar_t,

so the score, the optimal noise prediction and the classifier are all closed forms:

    eps_k(x_t)       = sqrt(1 - alpha_bar_t) (x_t - sqrt(alpha_bar_t) mu_k) / v_k       (class-conditional)
    p(y = k | x_t)   = pi_k N(x_t; sqrt(alpha_bar_t) mu_k, v_k I) / sum_j (...)    (the exact noisy classifier)
    eps(x_t)         = sum_k p(y = k | x_t) eps_k(x_t)                      (unconditional)

using eps = E[eps | x_t] = -sqrt(1 - alpha_bar_t) grad log p(x_t) (Tweedie's formula; Song et al. 2021,
"Score-Based Generative Modeling through SDEs", and Ho et al. 2020, Sec. 3.2). A network
trained to optimality on such data would output exactly these functions, so the samplers
can be tested against known answers. A single Gaussian is the mixture with one component.

The eps functions follow the sampler contract eps_fn(x_t, t, y); label K (the number of
components) means "no label", like the U-Net's null class.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from minidiff.contracts import EmbEpsFn, EpsFn, LogProbFn
from minidiff.diffusion import alpha_bar, broadcast_to_image
from minidiff.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A mixture of isotropic Gaussians, one component per class."""

    means: jax.Array  # (K, *event_shape): the component means mu_k
    stds: jax.Array  # (K,): the component standard deviations sigma_k
    weights: jax.Array  # (K,): the mixture weights pi_k, summing to 1

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]


jax.tree_util.register_dataclass(
    GaussianMixture, data_fields=["means", "stds", "weights"], meta_fields=[]
)


def gaussian_mixture(means, stds, weights=None) -> GaussianMixture:
    """Build a GaussianMixture, checking shapes; weights default to uniform."""
    means = jnp.asarray(means, jnp.float32)
    stds = jnp.broadcast_to(jnp.asarray(stds, jnp.float32), means.shape[:1])
    k = means.shape[0]
    weights = jnp.full((k,), 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    if weights.shape != (k,):
        raise ValueError(f"weights must have shape ({k},), got {weights.shape}")
    if bool(jnp.any(stds <= 0)):
        raise ValueError("stds must be positive")
    return GaussianMixture(means, stds, weights / jnp.sum(weights))


def gaussian(mean, std) -> GaussianMixture:
    """A single Gaussian N(mean, std^2 I) as a one-component mixture."""
    mean = jnp.asarray(mean, jnp.float32)
    return gaussian_mixture(mean[None], jnp.asarray([std]))


def sample_data(mixture: GaussianMixture, key, num: int, y=None):
    """Draw num samples x_0 and their labels (drawn from the weights unless y is given)."""
    key_y, key_x = jax.random.split(key)
    if y is None:
        y = jax.random.choice(key_y, mixture.num_classes, (num,), p=mixture.weights)
    y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (num,))
    noise = jax.random.normal(key_x, (num,) + mixture.means.shape[1:])
    x0 = mixture.means[y] + broadcast_to_image(mixture.stds[y], noise) * noise
    return x0, y


def _component_terms(s: Schedule, mixture: GaussianMixture, x_t, t):
    """Per-component eps_k(x_t) (B, K, ...) and log pi_k N(x_t; ...) (B, K)."""
    alpha_bar_t = alpha_bar(s, t)[:, None]  # (B, 1)
    var = alpha_bar_t * mixture.stds**2 + 1.0 - alpha_bar_t  # (B, K): v_k
    dims = x_t[0].size
    centred = x_t[:, None] - jnp.sqrt(broadcast_to_image(alpha_bar_t, x_t[:, None])) * mixture.means
    sq_dist = jnp.sum(centred.reshape(centred.shape[:2] + (-1,)) ** 2, axis=-1)  # (B, K)
    log_joint = (
        jnp.log(mixture.weights) - 0.5 * sq_dist / var - 0.5 * dims * jnp.log(2 * jnp.pi * var)
    )
    eps_k = broadcast_to_image(jnp.sqrt(1.0 - alpha_bar_t) / var, centred) * centred  # (B, K, ...)
    return eps_k, log_joint


def _mixture_log_prob(s, mixture, x_t, t, y):
    _, log_joint = _component_terms(s, mixture, x_t, t)
    log_posterior = jax.nn.log_softmax(log_joint, axis=-1)  # (B, K)
    return jnp.take_along_axis(log_posterior, y[:, None], axis=1)[:, 0]


def _mixture_eps(s, mixture, x_t, t, y):
    eps_k, log_joint = _component_terms(s, mixture, x_t, t)
    weights = jax.nn.softmax(log_joint, axis=-1)  # (B, K): p(y = k | x_t)
    eps_uncond = jnp.sum(broadcast_to_image(weights, eps_k) * eps_k, axis=1)
    k = mixture.num_classes
    if y is None:
        return eps_uncond
    eps_cond = jnp.take_along_axis(
        eps_k, broadcast_to_image(jnp.minimum(y, k - 1), eps_k[:, :1]), axis=1
    )[:, 0]
    return jnp.where(broadcast_to_image(y < k, x_t), eps_cond, eps_uncond)


def mixture_eps_fn(s: Schedule, mixture: GaussianMixture) -> EpsFn:
    """The exact eps_fn(x_t, t, y): class-conditional for y < K, unconditional for y = K
    (or y = None)."""
    return Partial(_mixture_eps, s, mixture)


def _mixture_embedding_eps(s, mixture, x_t, t, emb):
    k = mixture.num_classes
    eps = jnp.stack([_mixture_eps(s, mixture, x_t, t, jnp.full((x_t.shape[0],), j)) for j in range(k + 1)], 1)
    return jnp.sum(broadcast_to_image(emb, eps) * eps, axis=1)  # (B, ...): sum_j emb_j eps_j


def mixture_embedding_eps_fn(s: Schedule, mixture: GaussianMixture) -> EmbEpsFn:
    """The exact model conditioned on an embedding emb (B, K + 1) instead of a label: eps =
    sum_j emb_j eps_j(x_t), with eps_K the unconditional eps. Row j of the identity (K + 1)
    is label j's embedding (row K the null class), so the embedding enters linearly, as the
    null-class embedding enters the U-Net's first layers."""
    return Partial(_mixture_embedding_eps, s, mixture)


def mixture_log_prob_fn(s: Schedule, mixture: GaussianMixture) -> LogProbFn:
    """The exact noisy classifier log p(y | x_t) as log_prob_fn(x_t, t, y) -> (B,)."""
    return Partial(_mixture_log_prob, s, mixture)


def marginal_moments(s: Schedule, mixture: GaussianMixture, t: int):
    """Mean and variance per dimension of the marginal q(x_t) (t = -1: the data)."""
    alpha_bar_t = alpha_bar(s, jnp.asarray(t))
    w = broadcast_to_image(mixture.weights, mixture.means)
    means = jnp.sqrt(alpha_bar_t) * mixture.means  # (K, ...)
    second = means**2 + broadcast_to_image(alpha_bar_t * mixture.stds**2 + 1 - alpha_bar_t, means)
    mean = jnp.sum(w * means, axis=0)
    return mean, jnp.sum(w * second, axis=0) - mean**2
