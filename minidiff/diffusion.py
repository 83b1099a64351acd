"""The DDPM forward process, its posterior, and the training loss (Ho et al. 2020).

All functions are pure: they take the Schedule and arrays, and return arrays.
Images are NHWC float32 in [-1, 1]; timesteps are int arrays of shape (B,) (or scalars)
indexing 0..T-1. Per-timestep coefficients are gathered with `per_example` and broadcast
over the image dimensions: coefficient (B,) -> (B, 1, 1, 1).

Notation (x0, x_t, eps, alpha_bar_t = alphas_cumprod[t], ...): docs/notation.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from minidiff.contracts import EpsFn
from minidiff.schedules import Schedule


def per_example(values: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
    """values[t], reshaped to broadcast against x: t of shape (B,) gives (B, 1, 1, 1)."""
    return broadcast_to_image(jnp.take(values, t), x)


def log_alpha_bar(s: Schedule, t: jax.Array) -> jax.Array:
    """log alpha_bar_t for t in -1..T-1, where t = -1 stands for x_0 itself (alpha_bar = 1).

    DDIM steps use t_prev = -1 for their last step "to x_0" (the diffusers convention
    `final_alpha_cumprod = 1`).
    """
    t = jnp.asarray(t)
    return jnp.where(t >= 0, jnp.take(s.log_alphas_cumprod, jnp.maximum(t, 0)), 0.0)


def alpha_bar(s: Schedule, t: jax.Array) -> jax.Array:
    """alpha_bar_t for t in -1..T-1 (alpha_bar_{-1} = 1)."""
    return jnp.exp(log_alpha_bar(s, t))


def alpha_bar_pair(s: Schedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha_bar_t, 1 - alpha_bar_t) broadcast against x, both accurate in float32."""
    log_alpha_bar_t = broadcast_to_image(log_alpha_bar(s, t), x)
    return jnp.exp(log_alpha_bar_t), -jnp.expm1(log_alpha_bar_t)


def one_minus_alpha_ratio(s: Schedule, t: jax.Array, t_prev: jax.Array, x: jax.Array) -> jax.Array:
    """1 - alpha_bar_t / alpha_bar_{t_prev}: the effective beta of a (strided) step t_prev -> t."""
    delta = log_alpha_bar(s, t) - log_alpha_bar(s, t_prev)
    return broadcast_to_image(-jnp.expm1(delta), x)


def broadcast_to_image(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape a per-example value (B,) (or a scalar) to broadcast against x (B, H, W, C)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Sample q(x_t | x_0) in one step by reparameterisation (Ho et al. 2020, Eq. 4):

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I).

    Composing t Gaussian steps x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z gives a Gaussian
    whose mean and variance are these, so no loop over steps is needed.
    """
    return (
        per_example(s.sqrt_alphas_cumprod, t, x0) * x0
        + per_example(s.sqrt_one_minus_alphas_cumprod, t, x0) * eps
    )


def predict_x0_from_eps(s: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Invert q_sample for x_0 given the noise (Ho et al. 2020, Eq. 15; DDIM Eq. 12's
    "predicted x_0"):  x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    t may be -1 (x_t is already x_0), in which case x0_pred = x_t.
    """
    alpha_bar_t, one_minus_alpha_bar_t = alpha_bar_pair(s, t, x_t)
    return (x_t - jnp.sqrt(one_minus_alpha_bar_t) * eps) / jnp.sqrt(alpha_bar_t)


def predict_eps_from_x0(s: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """The noise that maps x_0 to x_t: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    alpha_bar_t, one_minus_alpha_bar_t = alpha_bar_pair(s, t, x_t)
    return (x_t - jnp.sqrt(alpha_bar_t) * x0) / jnp.sqrt(one_minus_alpha_bar_t)


def v_from_eps(s: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The velocity target of v-prediction (Salimans & Ho 2022, Sec. 4 and Appendix D):
    v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
    alpha_bar_t, one_minus_alpha_bar_t = alpha_bar_pair(s, t, x0)
    return jnp.sqrt(alpha_bar_t) * eps - jnp.sqrt(one_minus_alpha_bar_t) * x0


def eps_from_v(s: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """A v-prediction network's output as the noise it implies:
    eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t (substitute x_t = q_sample and v =
    v_from_eps: the x_0 terms cancel). Near t = T, where alpha_bar_t -> 0, eps ~ x_t and
    x0_pred = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v ~ -v: the network names x_0
    directly instead of through a division by sqrt(alpha_bar_t)."""
    alpha_bar_t, one_minus_alpha_bar_t = alpha_bar_pair(s, t, x_t)
    return jnp.sqrt(alpha_bar_t) * v + jnp.sqrt(one_minus_alpha_bar_t) * x_t


def q_posterior_mean_variance(
    s: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, t_prev: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of the forward-process posterior q(x_{t_prev} | x_t, x_0).

    With t_prev = t - 1 this is Ho et al. 2020, Eqs. 6-7:

        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
               + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        var  = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

    For a strided step t -> t_prev < t (as in DDIM's sub-sequences), the same formulas hold
    with the effective beta = 1 - alpha_bar_t / alpha_bar_{t_prev} and alpha = alpha_bar_t / alpha_bar_{t_prev}.
    t_prev = -1 means x_0 (alpha_bar = 1), where the posterior collapses onto x_0 (var = 0).
    Returns mean (like x_t) and var broadcastable against it, (B, 1, 1, 1).
    """
    if t_prev is None:
        t_prev = jnp.asarray(t) - 1
    alpha_bar_t, one_minus_alpha_bar_t = alpha_bar_pair(s, t, x_t)
    alpha_bar_prev, one_minus_alpha_bar_prev = alpha_bar_pair(s, t_prev, x_t)
    beta = one_minus_alpha_ratio(s, t, t_prev, x_t)  # beta_t, or 1 - prod of alphas over a stride
    mean = (
        jnp.sqrt(alpha_bar_prev) * beta / one_minus_alpha_bar_t * x0
        + jnp.sqrt(1.0 - beta) * one_minus_alpha_bar_prev / one_minus_alpha_bar_t * x_t
    )
    var = one_minus_alpha_bar_prev / one_minus_alpha_bar_t * beta
    return mean, var


LOSS_WEIGHTINGS = ("eps", "v")


def ddpm_loss(eps_fn: EpsFn, s: Schedule, x0: jax.Array, y: jax.Array | None, key: jax.Array,
              weighting: str = "eps", snr_gamma: float = 0.0) -> jax.Array:
    """The DDPM objective, averaged over pixels and the batch, t ~ U{0..T-1}, eps ~ N(0, I):

        "eps": L_simple (Ho et al. 2020, Eq. 14 and Algorithm 1)
               E || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
        "v":   the v-prediction loss (Salimans & Ho 2022) E || v - v_theta ||^2, computed from
               the eps it implies: eps_theta - eps = sqrt(alpha_bar_t) (v_theta - v)
               (eps_from_v), so it is L_simple weighted by 1 / alpha_bar_t = 1 + 1 / SNR(t),
               which weighs the x_0 error of the noisiest steps as much as the others.

    snr_gamma > 0 replaces either weighting by Min-SNR-gamma (Hang et al. 2023, "Efficient
    Diffusion Training via Min-SNR Weighting Strategy", w_t = min{SNR(t), gamma}): the x_0
    error || x_0 - x0_theta ||^2 = || eps - eps_theta ||^2 / SNR(t) weighted by min(SNR(t), gamma),
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t). On the eps error that is min(SNR, gamma) / SNR: 1
    (L_simple) at the noisy steps where SNR <= gamma, less at the clean ones, whose gradients the
    paper finds in conflict with the noisy steps'. For a v-network it is the same loss,
    diffusers' min(SNR, gamma) / (SNR + 1) on || v - v_theta ||^2.

    eps_fn(x_t, t, y) is the noise predictor (a v-network seen through eps_from_v).
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}")
    key_t, key_eps = jax.random.split(key)
    t = jax.random.randint(key_t, (x0.shape[0],), 0, s.num_timesteps)  # (B,)
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)  # (B, H, W, C)
    x_t = q_sample(s, x0, t, eps)
    squared = (eps_fn(x_t, t, y) - eps) ** 2  # (B, H, W, C)
    alpha_bar = per_example(s.alphas_cumprod, t, x0)
    if snr_gamma > 0:  # min(SNR, gamma) / SNR, written so that SNR = 0 (alpha_bar_T = 0) gives 1, not 0 / 0
        squared = squared * jnp.minimum(1.0, snr_gamma * (1.0 - alpha_bar) / alpha_bar)
    elif weighting == "v":
        squared = squared / alpha_bar
    return jnp.mean(squared)
