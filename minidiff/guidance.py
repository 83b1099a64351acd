"""Guidance as eps_fn combinators: each takes an eps_fn and returns a guided eps_fn.

A guided sampler is the plain sampler with a different eps_fn (score_sde composes score
functions the same way). The returned functions are `jax.tree_util.Partial`s, so the
guidance scale and the wrapped function's arrays are traced arguments of the jitted
sampling loop: sweeping the scale does not recompile.

Conventions. The guidance scale w follows diffusers / Stable Diffusion:

    eps_hat = eps_null + w (eps_y - eps_null),   w = 0: unconditional, w = 1: conditional.

Ho & Salimans 2021 ("Classifier-Free Diffusion Guidance", Eq. 6) write
eps_hat = (1 + w_HS) eps_y - w_HS eps_null, i.e. w_HS = w - 1: their w_HS = 0 is our w = 1.

Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 4) shifts
the sampler by the gradient of a noisy classifier's log p(y | x_t, t). Since
grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t) and eps = -sqrt(1 - alpha_bar_t) score,
classifier guidance at scale s on the unconditional eps is classifier-free guidance at
w = s when the classifier is exact: a test checks this on a Gaussian mixture.

Notation: docs/notation.md. The function types (EpsFn, LogProbFn): minidiff/contracts.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from minidiff.contracts import EpsFn, LogProbFn
from minidiff.diffusion import alpha_bar, broadcast_to_image
from minidiff.samplers import as_partial
from minidiff.schedules import Schedule


def cfg_combine(eps_cond: jax.Array, eps_null: jax.Array, w) -> jax.Array:
    """The classifier-free guidance combination eps_null + w (eps_cond - eps_null)
    (Ho & Salimans 2021, Eq. 6, with w = 1 + w_HS); every guided eps in minidiff is made here."""
    return eps_null + w * (eps_cond - eps_null)


def cfg_eps(fn, w, x_t: jax.Array, t: jax.Array, cond: jax.Array, null: jax.Array) -> jax.Array:
    """Guided eps from one network call on the doubled batch: rows 0..B-1 conditioned on cond,
    rows B..2B-1 on null. cond and null are labels (B,) for an EpsFn, or class embeddings (B, D)
    for an EmbEpsFn; returns (B, H, W, C)."""
    batch = x_t.shape[0]
    eps = fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jnp.concatenate([cond, null]))
    return cfg_combine(eps[:batch], eps[batch:], w)  # (B, H, W, C)


def _classifier_free_eps(eps_fn, w, null, x_t, t, y):
    return cfg_eps(eps_fn, w, x_t, t, y, jnp.broadcast_to(null, y.shape).astype(y.dtype))


def classifier_free(eps_fn: EpsFn, w: float, null_class) -> EpsFn:
    """Classifier-free guidance (Ho & Salimans 2021): eps_null + w (eps_y - eps_null).

    eps_fn must understand null_class as "no condition": the U-Net's extra class row (trained by
    label dropout), or for a caption model the empty prompt's tokens (L,), broadcast to every
    row of y (B, L). The guidance direction eps_y - eps_null is, up to the
    factor -sqrt(1 - alpha_bar_t), the gradient of the implicit classifier log p(y | x_t).
    """
    return Partial(_classifier_free_eps, as_partial(eps_fn), jnp.float32(w), jnp.asarray(null_class, jnp.int32))


def _unconditional_eps(eps_fn, null, x_t, t, y):
    return eps_fn(x_t, t, jnp.broadcast_to(null, (x_t.shape[0],) + null.shape))


def unconditional(eps_fn: EpsFn, null_class) -> EpsFn:
    """eps_fn that ignores its y and always asks eps_fn for the null class (or null prompt)."""
    return Partial(_unconditional_eps, as_partial(eps_fn), jnp.asarray(null_class, jnp.int32))


def _log_prob_grad(log_prob_fn, x_t, t, y):
    """grad_x sum_b log p(y_b | x_t[b], t_b): per-example gradients, (B, H, W, C)."""
    return jax.grad(lambda x: jnp.sum(log_prob_fn(x, t, y)))(x_t)


def _classifier_ddim_eps(eps_fn, log_prob_fn, s, scale, x_t, t, y):
    alpha_bar_t = broadcast_to_image(alpha_bar(s, t), x_t)  # (B, 1, 1, 1)
    return eps_fn(x_t, t, y) - scale * jnp.sqrt(1.0 - alpha_bar_t) * _log_prob_grad(log_prob_fn, x_t, t, y)


def classifier_guidance(eps_fn: EpsFn, log_prob_fn: LogProbFn, s: Schedule, scale: float) -> EpsFn:
    """Classifier guidance for DDIM (Dhariwal & Nichol 2021, Algorithm 2, Eq. 14):

        eps_hat = eps(x_t, t, y) - scale sqrt(1 - alpha_bar_t) grad_x log p(y | x_t, t).

    log_prob_fn(x_t, t, y) -> (B,) is the noisy classifier's log p(y | x_t, t), e.g. the
    log_softmax entry of the true label. Usually eps_fn is unconditional (see `unconditional`).
    """
    return Partial(_classifier_ddim_eps, as_partial(eps_fn), as_partial(log_prob_fn), s,
                   jnp.float32(scale))


def _classifier_ddpm_eps(eps_fn, log_prob_fn, s, scale, x_t, t, y):
    beta = broadcast_to_image(s.betas[t], x_t)
    alpha = broadcast_to_image(s.alphas[t], x_t)
    alpha_bar_t = broadcast_to_image(s.alphas_cumprod[t], x_t)
    variance = broadcast_to_image(s.posterior_variance[t], x_t)
    grad = _log_prob_grad(log_prob_fn, x_t, t, y)  # (B, H, W, C)
    # mean(eps') = mean(eps) + scale * Sigma * grad, with mean(eps) of Ho et al. Eq. 11.
    return eps_fn(x_t, t, y) - scale * variance * jnp.sqrt(alpha * (1.0 - alpha_bar_t)) / beta * grad


def classifier_guidance_ddpm(eps_fn: EpsFn, log_prob_fn: LogProbFn, s: Schedule, scale: float) -> EpsFn:
    """Classifier guidance for ancestral DDPM (Dhariwal & Nichol 2021, Algorithm 1):

        x_{t-1} ~ N(mu + scale Sigma grad_x log p(y | x_t, t), Sigma),  Sigma = beta_tilde_t.

    Expressed as an eps_fn so the unchanged `ddpm_sample` runs it: since
    mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (Ho et al. Eq. 11), shifting
    the mean by scale Sigma grad is the same as using
    eps' = eps - scale Sigma sqrt(alpha_t (1 - alpha_bar_t)) / beta_t grad.
    Valid for the default all-T-steps DDPM sampler with variance "beta_tilde".
    """
    return Partial(_classifier_ddpm_eps, as_partial(eps_fn), as_partial(log_prob_fn), s,
                   jnp.float32(scale))
