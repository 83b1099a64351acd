"""Per-word cross-attention maps of a caption model: where each word of a prompt looks.

Prompt-to-Prompt's Figure 4 (Hertz et al. 2022) shows, for each word of the prompt, its
cross-attention map averaged over heads, layers and diffusion steps: the pixels whose queries
attend to that token. Here:

    M_word(b) = mean over steps i, blocks k and heads h of upsample(A_{i,k,h}[b, :, word])

where A (B, heads, h_k * w_k, L) are a block's weights (softmax over the L tokens), each block's
map is brought to the image's size by nearest-neighbour repetition, and the steps are the DDIM
latents x_{t_i} of a trajectory: a sample's own, or a real digit's w = 1 DDIM inversion (the
pivot of null-text inversion), so the maps are the model's reading of that image.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from minidiff import inversion, pipeline, samplers, schedules
from minidiff.unet import UNet


@functools.lru_cache(maxsize=None)
def _maps_fn(graphdef):
    @jax.jit
    def maps(params, latents, ts, tokens):  # latents (n, B, H, W, C) at ts (n,)
        model = nnx.merge(graphdef, params)
        S = model.config.image_size

        def at_step(total, inputs):
            x_t, t = inputs
            _, found = model(x_t, jnp.full((x_t.shape[0],), t), tokens, return_maps=True)
            per_block = []
            for a in found.cross:  # (B, heads, h * w, L)
                B, _, N, L = a.shape
                side = int(round(N ** 0.5))
                a = a.mean(1).reshape(B, side, side, L)  # heads averaged: (B, h, w, L)
                a = jnp.repeat(jnp.repeat(a, S // side, axis=1), S // side, axis=2)  # (B, S, S, L)
                per_block.append(a)
            return total + jnp.mean(jnp.stack(per_block), 0), None

        B, L = tokens.shape
        total, _ = jax.lax.scan(at_step, jnp.zeros((B, S, S, L)), (latents, ts))
        return jnp.moveaxis(total / ts.shape[0], -1, 1)  # (B, L, S, S)

    return maps


def cross_attention_maps(model: UNet, latents, timesteps, tokens) -> np.ndarray:
    """(B, L, H, W): each token's cross-attention map, averaged over heads, blocks and the steps
    of `latents` (n, B, H, W, C), the latents x_t at `timesteps` (n,), read with prompts tokens (B, L)."""
    if model.config.conditioning != "text":
        raise ValueError("cross-attention maps need a caption model (this U-Net is label-conditioned)")
    graphdef, params = nnx.split(model)
    return np.asarray(_maps_fn(graphdef)(params, jnp.asarray(latents), jnp.asarray(timesteps, jnp.int32),
                                         pipeline.conditions(model, tokens)))


def of_images(model: UNet, s: schedules.Schedule, x0, tokens, steps: int = 50) -> np.ndarray:
    """The maps of real images x0 (B, H, W, C) under their captions tokens (B, L), read along
    their w = 1 DDIM inversion (the pivot of null-text inversion)."""
    ts = samplers.make_timesteps(s.num_timesteps, steps)
    cond = pipeline.embeddings(model, tokens)
    emb_fn = pipeline.unet_embedding_fns(model, s)[0]
    pivot = inversion.negative_prompt_inversion(emb_fn, s, x0, ts, cond, pipeline.null_embedding(model)).pivot
    return cross_attention_maps(model, pivot[::-1][:-1], ts, tokens)  # the latent at ts[i] is pivot[n - i]


def of_samples(model: UNet, s: schedules.Schedule, tokens, key, steps: int = 50,
               guidance_scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(samples (B, H, W, C), their maps (B, L, H, W)): DDIM samples of prompts tokens (B, L) at
    guidance w, the maps read along each sample's own trajectory with its prompt."""
    cfg = model.config
    tokens = pipeline.conditions(model, tokens)
    ts = samplers.make_timesteps(s.num_timesteps, steps)
    x_T = jax.random.normal(key, (tokens.shape[0], cfg.image_size, cfg.image_size, cfg.in_channels))
    eps_fn = pipeline.guided_eps_fn(model, s, guidance_scale)
    x0, path = samplers.ddim_sample(eps_fn, s, x_T, ts, y=tokens, return_trajectory=True)
    return pipeline.check_finite(x0, "sampling"), cross_attention_maps(model, path[:-1], ts, tokens)
