"""Samplers: DDPM ancestral sampling, DDIM, and DDIM inversion, as jitted lax.scan loops.

Samplers never see the network. They take `eps_fn(x_t, t, y) -> eps`, with t and y int
arrays of shape (B,), so the same code runs an analytic eps (tests, notebooks) or a trained
U-Net (see `minidiff.guidance` for functions that wrap one eps_fn into another).

Notation: docs/notation.md. Beware that the DDIM paper (Song, Meng & Ermon 2021, "Denoising
Diffusion Implicit Models") writes alpha_t for what DDPM and this code call alpha_bar_t.

Timesteps are descending arrays of indices in 0..T-1, made by `make_timesteps`. A sampler
walks the pairs (t_i, t_{i+1}) and finishes with (t_last, -1), where -1 stands for x_0.
Inversion walks exactly the same pairs in reverse order.

`eps_fn` may be any callable; it is wrapped in `jax.tree_util.Partial`, so eps functions
built with `Partial` (as `minidiff.guidance` builds them) pass their arrays (network
weights, guidance scale) to the jitted loop as arguments: changing them does not recompile.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from minidiff.contracts import EpsFn
from minidiff.diffusion import (
    alpha_bar_pair,
    broadcast_to_image,
    one_minus_alpha_ratio,
    predict_x0_from_eps,
    q_posterior_mean_variance,
)
from minidiff.schedules import Schedule, check_num_timesteps

SPACINGS = ("leading", "trailing", "linspace")
DDPM_VARIANCES = ("beta_tilde", "beta")


# --------------------------------------------------------------------------- timesteps


def make_timesteps(T: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """A descending sub-sequence of num_steps timesteps out of 0..T-1.

    The three spacings of Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample
    Steps are Flawed", Table 2), written with 0-based indices (the paper's t minus 1).
    For T = 1000 and 10 steps:

        linspace   round(linspace(0, T-1, S))         999, 888, 777, ..., 111, 0
        leading    arange(0, T, T // S)               900, 800, 700, ..., 100, 0
        trailing   round(arange(T, 0, -T / S)) - 1    999, 899, 799, ..., 199, 99

    "leading" (DDIM's and Stable Diffusion's default) never visits t = T-1; "trailing"
    always starts from the last, pure-noise timestep.
    """
    check_num_timesteps(T)
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in 1..T={T}, got {num_steps!r}")
    if spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, num_steps))
    elif spacing == "leading":
        ts = np.arange(num_steps) * (T // num_steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    return np.sort(ts.astype(np.int32))[::-1].copy()


def check_timesteps(timesteps, T: int) -> np.ndarray:
    """Validate an explicit timestep array: 1-D, integers in 0..T-1, strictly decreasing."""
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or ts.size < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D array, got shape {ts.shape}")
    if not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"timesteps must be integers, got dtype {ts.dtype}")
    if ts.min() < 0 or ts.max() > T - 1:
        raise ValueError(f"timesteps must lie in 0..{T - 1}, got {ts.min()}..{ts.max()}")
    if np.any(np.diff(ts) >= 0):
        raise ValueError("timesteps must be strictly decreasing (from noise to data)")
    return ts.astype(np.int32)


def step_pairs(timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (t, t_prev) pairs a sampler walks: t_prev is the next timestep, -1 after the last."""
    return timesteps, np.append(timesteps[1:], -1).astype(np.int32)


def check_variance(variance: str) -> None:
    """Raise ValueError unless variance names one of DDPM_VARIANCES."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {DDPM_VARIANCES}")


def limit_x0(x0_pred: jax.Array, clip_x0: bool = False, dynamic_threshold: float = 0.0) -> jax.Array:
    """What a step does to x0_pred before using it: nothing (the default), clip it to [-1, 1]
    (clip_x0; diffusers' clip_sample), or Imagen's dynamic thresholding (Saharia et al. 2022,
    Sec. 2.3) at percentile p = dynamic_threshold in (0, 1), per image:

        s = max(p-th quantile of |x0_pred|, 1),   x0_pred <- clip(x0_pred, -s, s) / s

    so an image whose values stay in [-1, 1] is left alone and one that overshoots is scaled
    back into range rather than flattened at +-1. Both are sampler options to show and
    measure; minidiff's models are trained to sample cleanly with neither.
    """
    if dynamic_threshold:
        flat = jnp.abs(x0_pred).reshape(x0_pred.shape[0], -1)  # (B, H*W*C)
        scale = jnp.maximum(jnp.quantile(flat, dynamic_threshold, axis=1), 1.0)  # (B,)
        scale = broadcast_to_image(scale, x0_pred)
        return jnp.clip(x0_pred, -scale, scale) / scale
    return jnp.clip(x0_pred, -1.0, 1.0) if clip_x0 else x0_pred


def check_limit(clip_x0: bool, dynamic_threshold: float) -> None:
    """One of clip_x0 and dynamic_threshold at most, the threshold a fraction in [0, 1)."""
    if not 0.0 <= dynamic_threshold < 1.0:
        raise ValueError(f"dynamic_threshold must be a percentile in (0, 1) (Imagen: 0.995), or 0 for "
                         f"off; got {dynamic_threshold}")
    if clip_x0 and dynamic_threshold:
        raise ValueError("choose clip_x0 or dynamic_threshold, not both (the threshold clips already)")


# --------------------------------------------------------------------------- one step


def ddim_step(
    s: Schedule,
    x_t: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    eta: float = 0.0,
    noise: jax.Array | None = None,
    clip_x0: bool = False,
    dynamic_threshold: float = 0.0,
) -> jax.Array:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12 with sigma from Eq. 16).

        1. x0_pred  = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)           (Eq. 9)
        2. sigma    = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                          sqrt(1 - alpha_bar / alpha_bar_prev)                   (Eq. 16)
        3. dir_x_t  = sqrt(1 - alpha_bar_prev - sigma^2) eps   "direction pointing to x_t"
        4. x_prev   = sqrt(alpha_bar_prev) x0_pred + dir_x_t + sigma noise        (Eq. 12)

    eta = 0 is deterministic DDIM; eta = 1 makes the step the DDPM ancestral step (its sigma^2
    is the posterior variance beta_tilde). t_prev = -1 steps to x_0 (alpha_bar_prev = 1).
    With clip_x0 or dynamic_threshold, x0_pred is limited after step 1 (`limit_x0`); eps
    is left as predicted, as diffusers does by default.
    """
    _, one_minus_alpha_bar_t = alpha_bar_pair(s, t, x_t)
    alpha_bar_prev, one_minus_alpha_bar_prev = alpha_bar_pair(s, t_prev, x_t)
    x0_pred = limit_x0(predict_x0_from_eps(s, x_t, t, eps), clip_x0, dynamic_threshold)  # 1.
    sigma = eta * jnp.sqrt(
        one_minus_alpha_bar_prev / one_minus_alpha_bar_t * one_minus_alpha_ratio(s, t, t_prev, x_t)
    )  # 2.
    dir_x_t = jnp.sqrt(jnp.maximum(one_minus_alpha_bar_prev - sigma**2, 0.0)) * eps  # 3.
    x_prev = jnp.sqrt(alpha_bar_prev) * x0_pred + dir_x_t  # 4.
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddpm_step(
    s: Schedule,
    x_t: jax.Array,
    eps: jax.Array,
    t: jax.Array,
    noise: jax.Array | None,
    t_prev: jax.Array | None = None,
    variance: str = "beta_tilde",
    clip_x0: bool = False,
    dynamic_threshold: float = 0.0,
) -> jax.Array:
    """One ancestral step x_t -> x_{t_prev} ~ p(x_{t_prev} | x_t) (Ho et al. 2020, Algorithm 2).

        1. x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)           (Eq. 15)
        2. mean    = posterior mean of q(x_{t_prev} | x_t, x0_pred)                  (Eq. 7)
                   = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps)   (Eq. 11)
        3. x_prev  = mean + sigma_t noise, with sigma_t^2 = beta_tilde_t ("beta_tilde",
                     Eq. 7, the default) or sigma_t^2 = beta_t ("beta", Ho et al. Sec. 3.2;
                     the "sigma-hat" variant of the DDIM paper's Table 1).

    t_prev defaults to t - 1; a strided step uses the effective beta = 1 - alpha_bar_t /
    alpha_bar_{t_prev}. The last step (t_prev = -1) adds no noise. clip_x0 and
    dynamic_threshold limit x0_pred after step 1, as in `ddim_step`.
    """
    check_variance(variance)
    if t_prev is None:
        t_prev = jnp.asarray(t) - 1
    x0_pred = limit_x0(predict_x0_from_eps(s, x_t, t, eps), clip_x0, dynamic_threshold)  # 1.
    mean, var = q_posterior_mean_variance(s, x0_pred, x_t, t, t_prev)  # 2.
    if noise is None:
        return mean
    if variance == "beta":  # 3.
        var = one_minus_alpha_ratio(s, t, t_prev, x_t)
        var = jnp.where(broadcast_to_image(jnp.asarray(t_prev) >= 0, x_t), var, 0.0)  # none into x_0
    return mean + jnp.sqrt(var) * noise


def ddim_inverse_step(
    s: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array, t_next: jax.Array
) -> jax.Array:
    """One DDIM inversion step x_t -> x_{t_next}, t_next > t (t = -1 means x_t is x_0).

    The deterministic DDIM update (eta = 0) run the other way (Song et al. 2021, Sec. 4.3;
    Dhariwal & Nichol 2021, Appendix F; Mokady et al. 2023, Eq. 3):

        x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        x_next  = sqrt(alpha_bar_next) x0_pred + sqrt(1 - alpha_bar_next) eps

    It is `ddim_step` with eta = 0 from t to t_next. `ddim_invert` evaluates eps at (x_t, t_next): the
    sampling step t_next -> t uses eps(x_{t_next}, t_next), which is unknown before we get
    there, so inversion assumes eps(x_t, t_next) ~ eps(x_{t_next}, t_next). That one
    approximation is the whole error of DDIM inversion; it shrinks as steps get smaller.
    """
    alpha_bar_next, one_minus_alpha_bar_next = alpha_bar_pair(s, t_next, x_t)
    x0_pred = predict_x0_from_eps(s, x_t, t, eps)
    return jnp.sqrt(alpha_bar_next) * x0_pred + jnp.sqrt(one_minus_alpha_bar_next) * eps


# --------------------------------------------------------------------------- whole loops


def as_partial(fn) -> Partial:
    """fn as a jax.tree_util.Partial, a pytree that jitted functions take as an argument."""
    return fn if isinstance(fn, Partial) else Partial(fn)


def _scan(step, x, ts, ts_to, keys, return_trajectory: bool):
    """Run x <- step(x, t, t_to, key) over the pairs (ts[i], ts_to[i]) in one lax.scan.

    t and t_to are broadcast to shape (B,). Returns x, or (x, trajectory) where the
    trajectory (num_steps + 1, B, H, W, C) starts with the input x.
    """
    batch = x.shape[0]

    def body(x, inputs):
        t, t_to, key = inputs
        x = step(x, jnp.full((batch,), t), jnp.full((batch,), t_to), key)
        return x, (x if return_trajectory else None)

    keys = jnp.zeros((ts.shape[0], 2), jnp.uint32) if keys is None else keys
    x_last, xs = jax.lax.scan(body, x, (ts, ts_to, keys))
    if return_trajectory:
        return x_last, jnp.concatenate([x[None], xs], axis=0)
    return x_last


@partial(jax.jit, static_argnames=("clip_x0", "dynamic_threshold", "return_trajectory"))
def _ddim_loop(eps_fn, s, x_T, ts, ts_prev, eta, keys, y, clip_x0, dynamic_threshold, return_trajectory):
    stochastic = keys is not None

    def step(x, t, t_prev, key):
        eps = eps_fn(x, t, y)
        noise = jax.random.normal(key, x.shape, x.dtype) if stochastic else None
        return ddim_step(s, x, eps, t, t_prev, eta, noise, clip_x0, dynamic_threshold)

    return _scan(step, x_T, ts, ts_prev, keys, return_trajectory)


@partial(jax.jit, static_argnames=("variance", "clip_x0", "dynamic_threshold", "return_trajectory"))
def _ddpm_loop(eps_fn, s, x_T, ts, ts_prev, keys, y, variance, clip_x0, dynamic_threshold, return_trajectory):
    def step(x, t, t_prev, key):
        eps = eps_fn(x, t, y)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return ddpm_step(s, x, eps, t, noise, t_prev, variance, clip_x0, dynamic_threshold)

    return _scan(step, x_T, ts, ts_prev, keys, return_trajectory)


@partial(jax.jit, static_argnames=("iterations", "return_trajectory"))
def _invert_loop(eps_fn, s, x0, ts_from, ts_to, y, iterations, return_trajectory):
    def step(x, t, t_next, key):
        x_next = ddim_inverse_step(s, x, eps_fn(x, t_next, y), t, t_next)
        for _ in range(iterations):  # fixed-point refinement: eps where the step lands
            x_next = ddim_inverse_step(s, x, eps_fn(x_next, t_next, y), t, t_next)
        return x_next

    return _scan(step, x0, ts_from, ts_to, None, return_trajectory)


def _prepare(eps_fn, s: Schedule, x, timesteps, y):
    """Shared argument checks; returns (eps_fn as a Partial, validated timesteps, y)."""
    if not callable(eps_fn):
        raise ValueError("eps_fn must be a callable eps_fn(x_t, t, y) -> eps")
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must be batched, shape (B, ...), got shape {x.shape}")
    ts = check_timesteps(timesteps, s.num_timesteps)
    if y is not None:
        y = jnp.asarray(y)
        if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape (B,) = ({x.shape[0]},) (labels) or (B, L) (prompt tokens), "
                             f"got {y.shape}")
    return as_partial(eps_fn), ts, y


def ddim_sample(
    eps_fn: EpsFn, s: Schedule, x_T, timesteps, eta: float = 0.0, key=None, y=None,
    clip_x0: bool = False, dynamic_threshold: float = 0.0, return_trajectory: bool = False,
):
    """Generate x_0 from x_T with DDIM (Song et al. 2021, Eq. 12) over the given timesteps.

    timesteps: descending, e.g. make_timesteps(T, 50). eta in [0, inf): 0 deterministic, 1 the
    DDPM posterior variance. A key is required when eta > 0 (one normal draw per step from
    jax.random.split(key, num_steps), the same draws as `ddpm_sample`). clip_x0 and
    dynamic_threshold: see `limit_x0` (both off by default). Returns x_0 of the shape of x_T,
    or (x_0, trajectory) with trajectory (num_steps + 1, *x_T.shape).
    """
    fn, ts, y = _prepare(eps_fn, s, x_T, timesteps, y)
    check_limit(clip_x0, dynamic_threshold)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and key is None:
        raise ValueError("a key is required when eta > 0 (the sampler is stochastic)")
    keys = None if key is None or eta == 0 else jax.random.split(key, len(ts))
    ts, ts_prev = step_pairs(ts)
    return _ddim_loop(fn, s, jnp.asarray(x_T), ts, ts_prev, jnp.float32(eta), keys, y,
                      clip_x0, float(dynamic_threshold), return_trajectory)


def ddpm_sample(
    eps_fn: EpsFn, s: Schedule, x_T, key, y=None, timesteps=None, variance: str = "beta_tilde",
    clip_x0: bool = False, dynamic_threshold: float = 0.0, return_trajectory: bool = False,
):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), by default over all T steps.

    With strided timesteps and variance="beta_tilde" this equals ddim_sample with eta=1 and
    the same key; variance="beta" is the DDIM paper's sigma-hat sampler. Returns like
    `ddim_sample`.
    """
    if key is None:
        raise ValueError("ddpm_sample needs a key: every step draws fresh noise")
    check_variance(variance)
    check_limit(clip_x0, dynamic_threshold)
    timesteps = np.arange(s.num_timesteps)[::-1] if timesteps is None else timesteps
    fn, ts, y = _prepare(eps_fn, s, x_T, timesteps, y)
    keys = jax.random.split(key, len(ts))
    ts, ts_prev = step_pairs(ts)
    return _ddpm_loop(fn, s, jnp.asarray(x_T), ts, ts_prev, keys, y, variance, clip_x0,
                      float(dynamic_threshold), return_trajectory)


def ddim_invert(eps_fn: EpsFn, s: Schedule, x0, timesteps, y=None, return_trajectory: bool = False,
                fixed_point_iterations: int = 0):
    """DDIM inversion: run the deterministic DDIM ODE from data x_0 up to x_T.

    Walks exactly the (t, t_prev) pairs that `ddim_sample` walks for these timesteps, in
    reverse: (-1 -> t_last), ..., (t_1 -> t_0), each step evaluating eps at the noisier
    timestep of its pair, as the sampling step over that pair does (see `ddim_inverse_step`).

    fixed_point_iterations = k > 0 removes the approximation eps(x_t, t_next) ~
    eps(x_{t_next}, t_next): each step is repeated k times with eps evaluated where the previous
    try landed, x_next <- inverse_step(x_t, eps(x_next, t_next)). Its fixed point is the x_next
    that the sampling step maps exactly back to x_t (Pan et al. 2023, "Effective Real Image
    Editing with Accelerated Iterative Diffusion Inversion" (AIDI); Garibi et al. 2024,
    "ReNoise"); each iteration costs one more network call per step. The iteration converges
    where the step is a contraction in x_next; the steeper eps is (sharp data, large steps),
    the more iterations it needs (tests/test_samplers.py measures it on a mixture).
    Returns x_T (x at timesteps[0]), or (x_T, trajectory) with the trajectory running from
    x_0 to x_T.
    """
    fn, ts, y = _prepare(eps_fn, s, x0, timesteps, y)
    if not isinstance(fixed_point_iterations, (int, np.integer)) or fixed_point_iterations < 0:
        raise ValueError(f"fixed_point_iterations must be an integer >= 0, got {fixed_point_iterations!r}")
    ts, ts_prev = step_pairs(ts)
    return _invert_loop(fn, s, jnp.asarray(x0), ts_prev[::-1].copy(), ts[::-1].copy(), y,
                        int(fixed_point_iterations), return_trajectory)
