"""Noise schedules: the betas of the forward process and everything derived from them.

A schedule is computed once, in float64 NumPy, then cast to float32 and frozen in a
`Schedule`, an immutable container of arrays that every pure function takes explicitly
(guided-diffusion's GaussianDiffusion without the class).

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Sec. 2; the whole
code-to-paper table is docs/notation.md), with timesteps indexed 0..T-1 so that index t is
the paper's t+1:

    betas[t]                 beta_t                    variance added at step t
    alphas[t]                alpha_t = 1 - beta_t
    alphas_cumprod[t]        alpha_bar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev[t]   alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (no noise at all)
    posterior_variance[t]    beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  (Eq. 7)

float32 cannot tell alpha_bar_0 = 0.9999 from its neighbours well enough to form
1 - alpha_bar_t or 1 - alpha_bar_t / alpha_bar_s by subtraction, so the schedule also keeps
log alpha_bar_t, from which both follow accurately with expm1.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The arrays of one noise schedule, each of shape (T,), float32."""

    betas: jax.Array  # beta_t, the forward-process variances
    alphas: jax.Array  # alpha_t = 1 - beta_t
    alphas_cumprod: jax.Array  # alpha_bar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev: jax.Array  # alpha_bar_{t-1}; 1 at t = 0
    log_alphas_cumprod: jax.Array  # log alpha_bar_t: keeps 1 - alpha_bar and ratios accurate in float32
    sqrt_alphas_cumprod: jax.Array  # sqrt(alpha_bar_t): the signal scale of x_t
    sqrt_one_minus_alphas_cumprod: jax.Array  # sqrt(1 - alpha_bar_t): the noise scale of x_t
    posterior_variance: jax.Array  # beta_tilde_t of Ho et al. Eq. 7; 0 at t = 0

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return self.betas.shape[0]


jax.tree_util.register_dataclass(
    Schedule, data_fields=[f.name for f in dataclasses.fields(Schedule)], meta_fields=[]
)


def schedule_from_betas(betas) -> Schedule:
    """Build a Schedule from betas (any array-like of shape (T,), each in (0, 1)).

    All derived quantities are computed in float64 and cast to float32 at the end, so
    alpha_bar_t is accurate even after a thousand products.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if np.any(betas <= 0) or np.any(betas >= 1):
        raise ValueError("betas must lie strictly between 0 and 1")
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    as32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
    return Schedule(
        betas=as32(betas),
        alphas=as32(alphas),
        alphas_cumprod=as32(alphas_cumprod),
        alphas_cumprod_prev=as32(alphas_cumprod_prev),
        log_alphas_cumprod=as32(np.cumsum(np.log(alphas))),
        sqrt_alphas_cumprod=as32(np.sqrt(alphas_cumprod)),
        sqrt_one_minus_alphas_cumprod=as32(np.sqrt(1.0 - alphas_cumprod)),
        posterior_variance=as32(posterior_variance),
    )


def check_num_timesteps(T: int) -> None:
    """Raise ValueError unless T (a number of diffusion steps) is a positive integer."""
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """The DDPM schedule: betas rise linearly from beta_start to beta_end (Ho et al. 2020, Sec. 4)."""
    check_num_timesteps(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    return schedule_from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """The cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM"), Eq. 17.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), and
    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped to max_beta to avoid the
    singularity at t = T.
    """
    check_num_timesteps(T)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return schedule_from_betas(betas)


def make_schedule(name: str, T: int = 1000) -> Schedule:
    """A schedule by name: "linear" or "cosine"."""
    if name == "linear":
        return linear_schedule(T)
    if name == "cosine":
        return cosine_schedule(T)
    raise ValueError(f"unknown schedule name {name!r}; choose one of {SCHEDULES}")
