"""Inverting real images for editing: five methods, each returning an Inversion.

    ddim          plain DDIM inversion at the editing guidance scale       (Song et al. 2021, Sec. 4.3)
    fixed_point   the same, each inverse step solved by fixed-point iteration
                                                  (Pan et al. 2023 "AIDI"; Garibi et al. 2024 "ReNoise")
    negative      negative-prompt inversion: the w = 1 inversion, the null embedding replaced by
                  the label's own                                          (Miyake et al. 2023)
    null          null-class inversion: one optimised null embedding per step (Mokady et al. 2023)
    direct        direct inversion: the source branch put back on the pivot after every step
                                                  (Ju et al. 2024, "PnP Inversion")

An Inversion holds what an editing loop needs (minidiff/editing.py): the start x_T, the null
embedding each step guides with, and for direct inversion the pivot to pin the source to.

DDIM inversion (`samplers.ddim_invert`) runs the deterministic DDIM ODE from an image x_0 up
to x_T. Sampling back from that x_T with the same eps_fn reconstructs x_0 only
as well as eps(x_t, t_next) approximates eps(x_{t_next}, t_next), and under strong classifier-free
guidance each step's small error is multiplied by w, so reconstructions drift.

Null-class inversion is the class-label analogue of null-text inversion (Mokady et al. 2023,
"Null-text Inversion for Editing Real Images using Guided Diffusion Models", Algorithm 1):

    1. Invert with w = 1 (plain conditional DDIM): the pivot trajectory z*_0 = x_0, ..., z*_T.
    2. Start from z_T = z*_T. For each sampling step t -> t_prev, keep the network and the
       label fixed and optimise only the null-class embedding e_t (initialised from the previous
       step's), so that one guided DDIM step lands on the pivot:
           min_e || z*_{t_prev} - ddim_step(z_t, eps_e + w (eps_y - eps_e)) ||^2,
       where eps_y = eps(z_t, t, emb(y)) and eps_e = eps(z_t, t, e).
       Then z_{t_prev} = that step with the optimised e_t.
    3. Guided DDIM from z*_T with the per-step embeddings e_t reconstructs x_0 almost exactly,
       and since the label still enters through eps_y, changing it edits the image.

On a caption model the same code is null-text inversion itself: the embedding optimised is the
empty prompt's encoded token sequence (L, D) per step, as Mokady et al. optimise the CLIP
embedding of "", and the condition is the source caption's encoding (B, L, D).

The networks here are called through `emb_eps_fn(x_t, t, emb)` (contracts.EmbEpsFn), which
takes a class-embedding vector (B, D), or an encoded prompt (B, L, D), instead of a label;
`minidiff.pipeline.unet_embedding_fns` makes one from the U-Net. Notation: docs/notation.md.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from minidiff.contracts import EmbEpsFn, EpsFn
from minidiff.guidance import cfg_combine, cfg_eps
from minidiff.samplers import as_partial, check_timesteps, ddim_invert, ddim_sample, ddim_step, step_pairs
from minidiff.schedules import Schedule

INNER_STEPS = 50  # defaults of null_class_inversion, see its docstring
LR = 0.1


METHODS = ("ddim", "fixed_point", "negative", "null", "direct")


@dataclasses.dataclass(frozen=True)
class Inversion:
    """The inversion of a batch of B images over n sampling steps, by one of METHODS."""

    method: str
    x_T: jax.Array  # (B, H, W, C): where reconstruction and edits start
    null_embeddings: jax.Array  # (n, B, D) or (n, B, L, D): the embedding each sampling step uses as "null"
    pivot: jax.Array | None = None  # (n + 1, B, H, W, C): the w = 1 inversion trajectory, x_0 first
    losses: jax.Array | None = None  # (n, B): null-class inversion's per-step MSE to the pivot
    inner_steps: jax.Array | None = None  # (n, B): its optimiser steps at each step

    def take(self, rows) -> "Inversion":
        """The inversion of the images at `rows` (indices) alone: every per-image field sliced."""
        rows = jnp.asarray(rows)
        per_step = lambda a: None if a is None else a[:, rows]  # (n or n + 1, B, ...) fields
        return dataclasses.replace(self, x_T=self.x_T[rows], null_embeddings=self.null_embeddings[:, rows],
                                   pivot=per_step(self.pivot), losses=per_step(self.losses),
                                   inner_steps=per_step(self.inner_steps))

    @property
    def pin_source(self) -> bool:
        """Direct inversion: the editing loop puts the source branch back on the pivot."""
        return self.method == "direct"


def _embedding_cfg_eps(emb_eps_fn, w, cond_emb, null_emb, x_t, t, y):
    return cfg_eps(emb_eps_fn, w, x_t, t, cond_emb, jnp.broadcast_to(null_emb, cond_emb.shape))


def embedding_cfg_eps_fn(emb_eps_fn: EmbEpsFn, w: float, cond_emb, null_emb) -> EpsFn:
    """Classifier-free guidance with fixed embeddings (B, D) instead of labels: an eps_fn for
    the samplers (its y argument is ignored). Plain DDIM inversion of real images uses this with
    the label's embedding and the learned null row, exactly as guidance.classifier_free does."""
    return Partial(_embedding_cfg_eps, as_partial(emb_eps_fn), jnp.float32(w), cond_emb, null_emb)


@jax.jit
def _optimise(emb_eps_fn, s, pivot, ts, ts_prev, cond_emb, null_init, scale, w, lr, inner_steps):
    n, batch = ts.shape[0], cond_emb.shape[0]

    def outer(carry, inputs):
        z, emb = carry  # z: (B, H, W, C) the current latent; emb: (B, D)
        i, t, t_prev, target = inputs
        tb, tpb = jnp.full((batch,), t), jnp.full((batch,), t_prev)
        eps_cond = emb_eps_fn(z, tb, cond_emb)  # fixed during the inner loop

        def step_with(e):
            return ddim_step(s, z, cfg_combine(eps_cond, emb_eps_fn(z, tb, e), w), tb, tpb)

        def total_loss(u):  # Adam works on u = e / scale, so lr is relative to the scale
            z_prev = step_with(scale * u)
            losses = jnp.mean((z_prev - target).reshape(batch, -1) ** 2, axis=1)  # per-example MSE, (B,)
            return jnp.sum(losses), (losses, z_prev)

        optimizer = optax.adam(lr * (1.0 - i / 100.0))  # Mokady et al.'s decaying learning rate
        threshold = 1e-5 + i * 2e-5  # ... and their early-stopping threshold

        def body(c):  # check the loss at u; only if some example is above the threshold, backprop and update
            k, u, opt_state, done, used, _ = c
            _, pullback, (losses, z_prev) = jax.vjp(total_loss, u, has_aux=True)
            done = done | (losses < threshold)

            def update(u, opt_state):
                updates, opt_state = optimizer.update(pullback(jnp.ones(()))[0], opt_state)
                frozen = done.reshape((-1,) + (1,) * (u.ndim - 1))  # (B, 1, ...)
                return jnp.where(frozen, u, u + updates), opt_state  # converged examples stay put

            u, opt_state = jax.lax.cond(jnp.all(done), lambda u, o: (u, o), update, u, opt_state)
            return k + 1, u, opt_state, done, used + (~done).astype(jnp.int32), z_prev

        u = emb / scale
        init = (0, u, optimizer.init(u), jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32), z)
        _, u, _, done, used, z_prev = jax.lax.while_loop(
            lambda c: (c[0] < inner_steps) & ~jnp.all(c[3]), body, init)
        emb = scale * u
        # all converged: z_prev is the step at the final u; else (out of steps) take that step now
        z_prev = jax.lax.cond(jnp.all(done), lambda: z_prev, lambda: step_with(emb))
        loss = jnp.mean((z_prev - target).reshape(batch, -1) ** 2, axis=1)
        return (z_prev, emb), (emb, loss, used)

    targets = pivot[::-1][1:]  # z*_{t_prev} for each sampling step, (n, B, H, W, C)
    _, (embs, losses, used) = jax.lax.scan(
        outer, (pivot[-1], null_init), (jnp.arange(n), ts, ts_prev, targets))
    return embs, losses, used


@partial(jax.jit, static_argnames=("group",))
def _optimise_in_groups(emb_eps_fn, s, pivot, ts, ts_prev, cond_emb, null_init, scale, w, lr, inner_steps, group):
    """_optimise on groups of `group` images, one group after another (lax.map), so that each
    group's inner loop stops when its own images have converged, not the slowest of the batch."""
    n, B = ts.shape[0], cond_emb.shape[0]
    G = B // group
    by_group = lambda a: a.reshape(a.shape[0], G, group, *a.shape[2:]).swapaxes(0, 1)  # (G, m, group, ...)
    rows_by_group = lambda a: a.reshape(G, group, *a.shape[1:])  # (G, group, ...)
    embs, losses, used = jax.lax.map(
        lambda args: _optimise(emb_eps_fn, s, args[0], ts, ts_prev, args[1], args[2], scale, w, lr, inner_steps),
        (by_group(pivot), rows_by_group(cond_emb), rows_by_group(null_init)))
    merge = lambda a: a.swapaxes(0, 1).reshape(n, B, *a.shape[3:])  # (n, B, ...)
    return merge(embs), merge(losses), merge(used)


def null_class_inversion(emb_eps_fn: EmbEpsFn, s: Schedule, x0, timesteps, cond_emb, null_emb, w: float,
                         inner_steps: int = INNER_STEPS, lr: float = LR, group: int | None = 1) -> Inversion:
    """Null-class inversion of images x0 (B, H, W, C) with label embeddings cond_emb (B, D).

    null_emb (D,) initialises every image's null embedding (the learned null row). Follows
    Mokady et al. 2023, Algorithm 1: Adam with a learning rate decaying as (1 - i / 100) at
    outer step i, early stop once the loss is below 1e-5 + 2e-5 i. Deviations, and why
    (the measurements behind them: docs/results.md, "Inversion"):
    - lr is relative to the scale of the embedding: Adam moves each entry by about its step
      size whatever the gradient's scale, so an absolute step (the paper's 1e-2, for Stable
      Diffusion's text embeddings) means something different for every model. Here Adam
      works on e / RMS(null_emb), so its steps are lr * RMS(null_emb) in embedding units.
    - Up to inner_steps = 50 updates instead of 10: with 10, the released MNIST model's
      reconstructions at w = 7.5 stop short of those with 50.
    - Each image stops on its own: the images are optimised in groups of `group` (default 1)
      one group after another, and a group's inner loop ends when all its images are below
      the threshold (an image that is, is frozen meanwhile); the loss is checked before an
      update, not after. group = None optimises the whole batch at once, which on a CPU
      makes every image wait for the slowest (measured on 8 digits at w = 7.5: per-step
      batch maxima sum to ~2x the per-image steps, and group 1 took 0.65x the time).
    At w = 1 the guided eps is eps_cond alone and does not depend on the null embedding (its
    gradient is exactly zero), so no optimiser steps are taken: the result is plain DDIM
    inversion, with the per-step losses still measured. Returns an Inversion (shapes in its
    fields).
    """
    emb_eps_fn = as_partial(emb_eps_fn)
    ts = check_timesteps(timesteps, s.num_timesteps)
    x0, cond_emb, null_emb = jnp.asarray(x0), jnp.asarray(cond_emb), jnp.asarray(null_emb)
    scale = float(jnp.sqrt(jnp.mean(null_emb ** 2)))  # lr is relative to this
    if not scale > 0:
        raise ValueError(f"null_emb must be a nonzero, finite vector (its RMS sets the step size), got RMS {scale}")
    if cond_emb.shape[0] != x0.shape[0]:
        raise ValueError(f"cond_emb must have one row per image ({x0.shape[0]}), got {cond_emb.shape}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0 (a step size), got {lr}")
    pivot_fn = embedding_cfg_eps_fn(emb_eps_fn, 1.0, cond_emb, null_emb)
    _, pivot = ddim_invert(pivot_fn, s, x0, ts, return_trajectory=True)  # (n + 1, B, ...)
    t, t_prev = step_pairs(ts)
    null_init = jnp.broadcast_to(null_emb, cond_emb.shape)
    no_effect = isinstance(w, (int, float)) and w == 1.0
    args = (emb_eps_fn, s, pivot, t, t_prev, cond_emb, null_init, jnp.float32(scale), jnp.float32(w),
            jnp.float32(lr), jnp.int32(0 if no_effect else inner_steps))  # traced: no recompile per value
    if group is None or group >= x0.shape[0]:
        embs, losses, used = _optimise(*args)
    else:
        if group < 1 or x0.shape[0] % group:
            raise ValueError(f"group must be a positive divisor of the batch size {x0.shape[0]}, got {group}")
        embs, losses, used = _optimise_in_groups(*args, group)
    return Inversion("null", pivot[-1], embs, pivot, losses, used)


def _null_embedding_eps(emb_eps_fn, w, ts, null_embs, cond_emb, x_t, t, y):
    i = jnp.argmax(ts == t[0])  # which sampling step this is
    return cfg_eps(emb_eps_fn, w, x_t, t, cond_emb, null_embs[i])


def null_embedding_eps_fn(emb_eps_fn: EmbEpsFn, w: float, timesteps, inversion: Inversion, cond_emb) -> EpsFn:
    """Guided eps_fn that uses the inversion's null embedding of each step and the label
    embedding cond_emb (B, D). With the source label's embedding, ddim_sample from
    inversion.x_T reconstructs the image; with another label's it is the uncontrolled edit
    (minidiff/editing.py adds the control)."""
    return Partial(_null_embedding_eps, as_partial(emb_eps_fn), jnp.float32(w), jnp.asarray(timesteps),
                   inversion.null_embeddings, jnp.asarray(cond_emb))


def reconstruct(emb_eps_fn: EmbEpsFn, s: Schedule, inversion: Inversion, timesteps, w: float, cond_emb):
    """The inverted images sampled back (B, H, W, C): guided DDIM from x_T with the inversion's
    null embeddings; for direct inversion, whose source branch is pinned to the pivot, the pivot's
    end x_0 itself. The source branch of editing.edit, without the edit branch's cost."""
    if inversion.pin_source:
        return inversion.pivot[0]
    ts = check_timesteps(timesteps, s.num_timesteps)
    return ddim_sample(null_embedding_eps_fn(emb_eps_fn, w, ts, inversion, cond_emb), s, inversion.x_T, ts)


def _pivot(emb_eps_fn, s, x0, ts, cond_emb, null_emb):
    """The w = 1 DDIM inversion trajectory (n + 1, B, ...), x_0 first."""
    fn = embedding_cfg_eps_fn(emb_eps_fn, 1.0, cond_emb, jnp.broadcast_to(null_emb, cond_emb.shape))
    return ddim_invert(fn, s, x0, ts, return_trajectory=True)[1]


def _check(x0, cond_emb, timesteps, s):
    x0, cond_emb = jnp.asarray(x0), jnp.asarray(cond_emb)
    if cond_emb.ndim < 2 or cond_emb.shape[0] != x0.shape[0]:
        raise ValueError(f"cond_emb must have one row per image ({x0.shape[0]}), got {cond_emb.shape}")
    return x0, cond_emb, check_timesteps(timesteps, s.num_timesteps)


def ddim_inversion(emb_eps_fn: EmbEpsFn, s: Schedule, x0, timesteps, cond_emb, null_emb, w: float,
                   fixed_point_iterations: int = 0) -> Inversion:
    """Plain DDIM inversion at guidance w (Song et al. 2021, Sec. 4.3): x_T from the guided
    inverse ODE, the learned null row at every step. With fixed_point_iterations > 0, each inverse
    step is solved by that many fixed-point iterations (method "fixed_point"; Pan et al. 2023,
    Garibi et al. 2024; see samplers.ddim_invert)."""
    x0, cond_emb, ts = _check(x0, cond_emb, timesteps, s)
    null = jnp.broadcast_to(null_emb, cond_emb.shape)
    x_T = ddim_invert(embedding_cfg_eps_fn(emb_eps_fn, w, cond_emb, null), s, x0, ts,
                      fixed_point_iterations=fixed_point_iterations)
    return Inversion("fixed_point" if fixed_point_iterations else "ddim", x_T,
                     jnp.broadcast_to(null, (len(ts),) + null.shape))


def negative_prompt_inversion(emb_eps_fn: EmbEpsFn, s: Schedule, x0, timesteps, cond_emb, null_emb) -> Inversion:
    """Negative-prompt inversion (Miyake et al. 2023, "Negative-prompt Inversion: Fast Image
    Inversion for Editing with Text-guided Diffusion Models"): invert with w = 1, then guide with
    the label's own embedding in the null's place. Null-text inversion's optimum is close to
    it, and it needs no optimisation: at any w, eps_e + w (eps_y - eps_e) with e = emb(y) is
    eps_y, so the reconstruction is w = 1 DDIM's; an edit to label y' guides away from y."""
    x0, cond_emb, ts = _check(x0, cond_emb, timesteps, s)
    pivot = _pivot(emb_eps_fn, s, x0, ts, cond_emb, null_emb)
    return Inversion("negative", pivot[-1], jnp.broadcast_to(cond_emb, (len(ts),) + cond_emb.shape), pivot)


def direct_inversion(emb_eps_fn: EmbEpsFn, s: Schedule, x0, timesteps, cond_emb, null_emb) -> Inversion:
    """Direct inversion (Ju et al. 2024, "PnP Inversion: Boosting Diffusion-based Editing with 3
    Lines of Code"): invert with w = 1 and keep the pivot; while editing, after every guided step
    the source branch is moved by the gap to the pivot, z_src <- z_src + (z*_{t_prev} - z_src),
    so it is exact by construction and the edit branch reads its maps from the true source
    trajectory. No optimisation; the null row stays the learned one."""
    x0, cond_emb, ts = _check(x0, cond_emb, timesteps, s)
    pivot = _pivot(emb_eps_fn, s, x0, ts, cond_emb, null_emb)
    null = jnp.broadcast_to(null_emb, cond_emb.shape)
    return Inversion("direct", pivot[-1], jnp.broadcast_to(null, (len(ts),) + null.shape), pivot)


def invert(method: str, emb_eps_fn: EmbEpsFn, s: Schedule, x0, timesteps, cond_emb, null_emb, w: float,
           fixed_point_iterations: int = 5, **null_options) -> Inversion:
    """Invert images x0 (B, H, W, C) with label embeddings cond_emb (B, D) by one of METHODS,
    for editing at guidance w. null_emb (D,) is the learned null row; for a caption model
    cond_emb (B, L, D) and null_emb (L, D) are the encoded source captions and the encoded empty
    prompt, and "null" is null-text inversion. null_options go to
    null_class_inversion (inner_steps, lr)."""
    if method == "ddim":
        return ddim_inversion(emb_eps_fn, s, x0, timesteps, cond_emb, null_emb, w)
    if method == "fixed_point":
        if fixed_point_iterations < 1:
            raise ValueError(f"fixed_point_iterations must be >= 1, got {fixed_point_iterations}")
        return ddim_inversion(emb_eps_fn, s, x0, timesteps, cond_emb, null_emb, w, fixed_point_iterations)
    if method == "negative":
        return negative_prompt_inversion(emb_eps_fn, s, x0, timesteps, cond_emb, null_emb)
    if method == "null":
        return null_class_inversion(emb_eps_fn, s, x0, timesteps, cond_emb, null_emb, w, **null_options)
    if method == "direct":
        return direct_inversion(emb_eps_fn, s, x0, timesteps, cond_emb, null_emb)
    raise ValueError(f"unknown inversion method {method!r}; choose one of {METHODS}")
