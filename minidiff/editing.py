"""Editing real images with attention control: Prompt-to-Prompt for a label-conditioned U-Net.

Prompt-to-Prompt (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross Attention
Control") edits an image by sampling it twice in lockstep, once with the source prompt and once
with the edited one, and letting the edit branch reuse the source branch's attention maps for
the first part of the trajectory: the layout is fixed early, so it survives while the prompt
changes. A label-conditioned U-Net has no cross-attention (the label enters every ResBlock
through the embedding), so the controls here are the two that carry layout:

- self-attention: the edit rows take the source rows' self-attention weights (P2P's
  self_replace_steps), and
- features: they take the source rows' decoder features at chosen levels (Plug-and-Play,
  Tumanyan et al. 2023, "Plug-and-Play Diffusion Features for Text-Driven Image-to-Image
  Translation", which injects a decoder ResBlock's output).

A caption model has cross-attention, and there the paper's own control applies as well:

- cross-attention: the edit rows take the source rows' cross-attention maps (P2P's
  cross_replace_steps), token by token as a TokenControl says: every token for a word swap,
  the shared tokens for refine (added words), scaled for reweight. As in the paper's code, only
  the conditional edit rows are controlled; the unconditional rows use the null prompt in both
  branches.

Both branches run in one batched network call per step, on 4B rows

    [source | label y, edit | label y', source | null e_t, edit | null e_t]

with classifier-free guidance eps = eps_null + w (eps_label - eps_null) for each branch. Source
rows start from the inversion's x_T with the source label and reconstruct the image; edit rows
start from the same x_T. The null embedding e_t of each step is the inversion's (the optimised
one for null-class inversion, the label's own for negative-prompt inversion); for direct
inversion the source rows are put back on the pivot after every step. The network is seen only
as a ControlledEmbEpsFn (minidiff/contracts.py), which takes the control as plain arrays.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from minidiff.contracts import ControlledEmbEpsFn
from minidiff.guidance import cfg_combine
from minidiff.inversion import Inversion
from minidiff.samplers import as_partial, check_timesteps, ddim_step, step_pairs
from minidiff.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class Controller:
    """When the edit branch takes what from the source branch, as fractions of the n sampling
    steps counted from the noisy end (P2P's self_replace_steps and cross_replace_steps are such
    fractions).

    attention: steps with the source's self-attention weights.
    features: steps with the source's decoder features at feature_levels.
    feature_levels: one weight per up-path level of the network, deepest first (1: inject).
    source_label: steps on which the edit branch still has the source label (the plain label
        switch: no control, the label changes after that many steps).
    cross: steps with the source's cross-attention maps under the TokenControl given to `edit`
        (a caption model's; P2P's cross_replace_steps).
    """

    attention: float = 0.0
    features: float = 0.0
    feature_levels: tuple[float, ...] = ()
    source_label: float = 0.0
    cross: float = 0.0

    def __post_init__(self):
        for name in ("attention", "features", "source_label", "cross"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Controller.{name} must be a fraction of the steps in [0, 1], got {value}")
        if self.features > 0 and not any(self.feature_levels):
            raise ValueError("Controller.features > 0 needs feature_levels naming at least one level")

    def step_counts(self, n: int) -> jax.Array:
        """(4,) int32: the steps with attention control, feature control, the source label, cross control."""
        return jnp.array([round(f * n) for f in (self.attention, self.features, self.source_label, self.cross)],
                         jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenControl:
    """Per edit, which source token's cross-attention map each of the edit prompt's L tokens
    takes, how much of it, and with what scale (text_layers.CrossControl's formula; P2P's
    mapper, alphas and equalizer). pipeline.token_control makes one from two prompts."""

    token_map: jax.Array  # (B, L) int32: token j of the edit prompt takes source token token_map[j]'s map
    token_weight: jax.Array  # (B, L) float32: 1 for tokens the prompts share, 0 for added words
    token_scale: jax.Array  # (B, L) float32: reweight factors, 1 elsewhere
    normalise: jax.Array  # (B,) float32 in {0, 1}: 1 renormalises the reweighted maps over the tokens

    @classmethod
    def replace(cls, batch: int, length: int) -> "TokenControl":
        """A word swap's control: every token takes its own position's source map, unscaled."""
        return cls(jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
                   jnp.ones((batch, length)), jnp.ones((batch, length)), jnp.zeros((batch,)))


@partial(jax.jit, static_argnames=("pin_source",))
def _lockstep(fn, s, x_T, ts, ts_prev, w, source_emb, target_emb, null_embs, targets, counts, levels, tokens,
              pin_source):
    B = x_T.shape[0]
    rows = jnp.arange(B)
    take_from = jnp.concatenate([rows, rows, rows + 2 * B, rows + 2 * B])  # edit rows read source rows
    is_edit = jnp.concatenate([jnp.zeros(B), jnp.ones(B), jnp.zeros(B), jnp.ones(B)])  # (4B,)
    is_cond_edit = jnp.concatenate([jnp.zeros(B), jnp.ones(B), jnp.zeros(2 * B)])  # (4B,) P2P's conditional half
    if tokens is not None:  # source and unconditional rows: the identity, never switched on
        keep = TokenControl.replace(B, tokens.token_map.shape[1])
        tokens = jax.tree.map(lambda own, edit: jnp.concatenate([own, edit, own, own]), keep, tokens)

    def step(x, inputs):  # x: (2B, H, W, C), source rows first
        i, t, t_prev, target = inputs
        attention = is_edit * (i < counts[0])  # (4B,)
        features = levels[:, None] * (is_edit * (i < counts[1]))[None, :]  # (levels, 4B)
        cross = None if tokens is None else (is_cond_edit * (i < counts[3]), tokens.token_map,
                                             tokens.token_weight, tokens.token_scale, tokens.normalise)
        edit_emb = jnp.where(i < counts[2], source_emb, target_emb)
        emb = jnp.concatenate([source_emb, edit_emb, null_embs[i], null_embs[i]])  # (4B, D) or (4B, L, D)
        t4 = jnp.full((4 * B,), t)
        eps = fn(jnp.concatenate([x, x]), t4, emb, take_from, attention, features, cross)  # (4B, H, W, C)
        eps = cfg_combine(eps[:2 * B], eps[2 * B:], w)  # (2B, H, W, C)
        x = ddim_step(s, x, eps, t4[:2 * B], jnp.full((2 * B,), t_prev))
        if pin_source:  # direct inversion: add the gap to the pivot to the source rows
            x = x.at[:B].set(target)
        return x, None

    n = ts.shape[0]
    x, _ = jax.lax.scan(step, jnp.concatenate([x_T, x_T]), (jnp.arange(n), ts, ts_prev, targets))
    return x[:B], x[B:]


def edit(fn: ControlledEmbEpsFn, s: Schedule, inversion: Inversion, timesteps, w: float, source_emb,
         target_emb, controller: Controller = Controller(), tokens: TokenControl | None = None):
    """Reconstruct and edit a batch of inverted images: (reconstructions, edits), each (B, H, W, C).

    inversion: of the images with label embeddings source_emb (B, D), or a caption model's
    encoded source prompts (B, L, D), over these timesteps (the same ones); target_emb: the
    labels or prompts to edit to, of the same shape; w: the guidance scale of both branches;
    controller: what the edit branch takes from the source branch, and for how long; tokens: a
    caption model's cross-attention control for controller.cross of the steps (None: none).
    With controller.attention = features = 1 and target_emb = source_emb the edit is the
    reconstruction; with all fractions 0 it is plain guided DDIM from x_T with the target.
    """
    ts = check_timesteps(timesteps, s.num_timesteps)
    source_emb, target_emb = jnp.asarray(source_emb), jnp.asarray(target_emb)
    B, n = inversion.x_T.shape[0], len(ts)
    if inversion.null_embeddings.shape[:2] != (n, B):
        raise ValueError(f"the inversion has null embeddings for {inversion.null_embeddings.shape[0]} steps of "
                         f"{inversion.null_embeddings.shape[1]} images; these timesteps have {n} steps, for {B}")
    shape = (B,) + inversion.null_embeddings.shape[2:]
    for name, e in (("source_emb", source_emb), ("target_emb", target_emb)):
        if e.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {e.shape}")
    if controller.cross > 0 and tokens is None:
        raise ValueError("Controller.cross > 0 needs the TokenControl of the prompts (tokens=...)")
    if tokens is not None and (len(shape) != 3 or tokens.token_map.shape != shape[:2]):
        raise ValueError(f"tokens must describe a caption model's (B, L) = {shape[:2]} prompt tokens, "
                         f"got {tokens.token_map.shape} for embeddings of shape {shape}")
    t, t_prev = step_pairs(ts)
    targets = inversion.pivot[::-1][1:] if inversion.pin_source else jnp.zeros((n,))
    return _lockstep(as_partial(fn), s, inversion.x_T, t, t_prev, jnp.float32(w), source_emb, target_emb,
                     inversion.null_embeddings, targets, controller.step_counts(n),
                     jnp.asarray(controller.feature_levels, jnp.float32), tokens, inversion.pin_source)
