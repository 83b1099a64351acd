"""The glue between trained networks and the maths: eps_fn, log_prob_fn, sampling, inversion.

The samplers take eps_fn(x_t, t, y) (minidiff/contracts.py); `unet_eps_fn` makes one from a
U-Net by splitting the module into a static graph definition and its weights (as the flax gemma
sampler does), and binding the weights with `jax.tree_util.Partial`, so they reach the jitted
sampling loop as arguments rather than as compiled-in constants. `classifier_log_prob_fn` does
the same for a noisy classifier. Model files (load_model, save_model) are in minidiff/models.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.tree_util import Partial

from minidiff import captions, diffusion, editing, guidance, inversion, samplers, schedules
from minidiff.classifier import Classifier
from minidiff.contracts import ControlledEmbEpsFn, EmbEpsFn, EpsFn, LogProbFn
from minidiff.text_layers import CrossControl
from minidiff.unet import Control, UNet

SAMPLERS = ("ddim", "ddpm")
# What `edit` does with no control flags (controller_for's arguments): the best controller measured
# on 100 held-out digits at w = 7.5, the source's self-attention at every step and its
# full-resolution decoder features (level -1) for the first 40%; docs/results.md, "Editing", has
# it against the label switch. Those features are the whole output (feature_levels), so for those
# steps the edit follows the reconstruction: it is the label switch at 40% with self-attention.
DEFAULT_CONTROL = {"attention": 1.0, "features": 0.4, "levels": (-1,), "source_label": 0.0}
# ... and on a caption model: the best measured word swap judged the new digit at least 95% of the
# time (100 held-out digits at w = 3, docs/results.md, "Prompts for digits"): the source prompt for
# the first 30% of the steps (the edit follows the reconstruction that long), then the new one, with
# the source's self-attention at every step. P2P's cross-attention replace kept less of the hand.
# Reweighting acts through the cross-attention maps, so it uses P2P's cross_replace_steps 0.8 and
# self_replace_steps 0.4 (the settings it was measured with).
TEXT_DEFAULT_CONTROL = {"attention": 1.0, "features": 0.0, "levels": (), "source_label": 0.3, "cross": 0.0}
REWEIGHT_CONTROL = {"attention": 0.4, "features": 0.0, "levels": (), "source_label": 0.0, "cross": 0.8}
# The guidance scale `invert` and `edit` use when none is given: 7.5 (Stable Diffusion's, the
# papers') on a label model; 3 on a caption model, where the word swap at w = 7.5 drew heavier
# digits than random samples of the new digit and w = 3 kept more of the hand (docs/results.md).
EDIT_GUIDANCE = {"label": 7.5, "text": 3.0}
# The controllers `python -m minidiff.experiments editing` compares.
EDIT_SWEEP = {
    "label switch": {"source_label": 0.1},
    "P2P attention 0.5": {"attention": 0.5},
    "P2P attention 1.0": {"attention": 1.0},
    **{f"P2P + features {f:g} (28x28)": {"attention": 1.0, "features": f, "levels": (2,)} for f in (0.3, 0.4, 0.5)},
    **{f"P2P + features {f:g} (7x7)": {"attention": 1.0, "features": f, "levels": (0,)} for f in (0.3, 0.4, 0.5)},
    **{f"features {f:g} (14x14)": {"features": f, "levels": (1,)} for f in (0.2, 0.3)},
}


def as_eps(model: UNet, s: schedules.Schedule | None, x_t, t, out):
    """The network's output as eps: itself for an eps-prediction U-Net, eps_from_v for a
    v-prediction one (which needs the schedule s it was trained with)."""
    if model.config.prediction == "eps":
        return out
    _check_schedule(model, s)
    return diffusion.eps_from_v(s, x_t, t, out)


@functools.lru_cache(maxsize=None)
def _apply_controlled(graphdef):
    """The U-Net on class embeddings under attention control (contracts.ControlledEmbEpsFn)."""

    def apply(params, s, x_t, t, emb, source, attention, features, cross=None):
        model = nnx.merge(graphdef, params)
        cross = None if cross is None else CrossControl(*cross)
        out = model.embedded(x_t, t, emb, control=Control(source, attention, features, cross))
        return as_eps(model, s, x_t, jnp.broadcast_to(t, (x_t.shape[0],)), out)

    return apply


def unet_controlled_fn(model: UNet, s: schedules.Schedule | None = None) -> ControlledEmbEpsFn:
    """controlled_fn(x_t, t, emb, source, attention, features) for editing.edit: the U-Net
    called with class embeddings, rows taking other rows' attention weights and decoder
    features (unet.Control); s as in unet_eps_fn."""
    _check_schedule(model, s)
    graphdef, params = nnx.split(model)
    return Partial(_apply_controlled(graphdef), params, s)


@functools.lru_cache(maxsize=None)
def _apply(graphdef, with_embedding: bool = False):
    """One function per network structure, so jit caches by structure, not by weights.
    The conditioning c is a label (B,) or, with_embedding, a class-embedding vector (B, D)."""

    def apply(params, s, x_t, t, c):
        model = nnx.merge(graphdef, params)
        out = model.embedded(x_t, t, c) if with_embedding else model(x_t, t, c)
        return as_eps(model, s, x_t, jnp.broadcast_to(t, (x_t.shape[0],)), out)

    return apply


def _check_schedule(model: UNet, s) -> None:
    """A v-prediction U-Net needs its schedule to be read as eps; refuse it without one."""
    if model.config.prediction != "eps" and s is None:
        raise ValueError("this U-Net predicts v (config.prediction = 'v'): give its noise schedule "
                         "(models.schedule_of(metadata)) to turn its output into eps")


def unet_eps_fn(model: UNet, s: schedules.Schedule | None = None) -> EpsFn:
    """eps_fn(x_t, t, y) running the model, with its weights as traced arguments. s, the
    model's noise schedule, is needed for a v-prediction U-Net (as_eps)."""
    _check_schedule(model, s)
    graphdef, params = nnx.split(model)
    return Partial(_apply(graphdef), params, s)


def null_condition(model: UNet) -> np.ndarray:
    """What the model reads as "no condition": the null class (a label model), or the empty
    prompt's tokens (L,) (a caption model); classifier-free guidance's unconditional half."""
    if model.config.conditioning == "text":
        return captions.null_tokens(model.config.text_length)
    return np.int32(model.null_class)


def conditions(model: UNet, y) -> jax.Array:
    """What to condition on, checked against the model: labels (N,) in 0..num_classes for a label
    model; for a caption model token ids (N, L), or labels (N,), which become the digit words
    alone ("seven"; the null class num_classes becomes the empty prompt)."""
    y, cfg = np.asarray(y), model.config
    if cfg.conditioning == "text" and y.ndim == 2:
        if y.shape[1] != cfg.text_length or y.min(initial=0) < 0 or y.max(initial=0) >= cfg.vocab_size:
            raise ValueError(f"prompt tokens must be (N, {cfg.text_length}) ids in 0..{cfg.vocab_size - 1} "
                             f"(captions.tokenize), got shape {y.shape}")
        return jnp.asarray(y, jnp.int32)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or np.any((y < 0) | (y > cfg.num_classes)):
        raise ValueError(f"labels must be a 1-D array of ints in 0..{cfg.num_classes} "
                         f"({cfg.num_classes} = unconditional)")
    if cfg.conditioning == "text":
        words = list(captions.DIGIT_WORDS[:cfg.num_classes]) + [""]
        return jnp.asarray(captions.tokenize_all([words[i] for i in y], cfg.text_length))
    return jnp.asarray(y, jnp.int32)


def embeddings(model: UNet, y) -> jax.Array:
    """The conditioning embeddings of y (as `conditions` takes it): class-table rows (N, D), or
    the text encoder's contexts (N, L, D); what null-class / null-text inversion starts from."""
    return model.embed(conditions(model, y))


def null_embedding(model: UNet) -> jax.Array:
    """The embedding of null_condition: the null class's row (D,), or the empty prompt's context (L, D)."""
    return model.embed(jnp.asarray(null_condition(model))[None])[0]


def unet_embedding_fns(model: UNet, s: schedules.Schedule | None = None) -> tuple[EmbEpsFn, jax.Array]:
    """(emb_eps_fn(x_t, t, emb), class table (num_classes + 1, D)) for null-class inversion:
    the U-Net called with class-embedding vectors instead of labels (s as in unet_eps_fn). A
    caption model has no table (None): its emb_eps_fn takes encoded prompts (B, L, D), made by
    `embeddings` and `null_embedding`."""
    _check_schedule(model, s)
    graphdef, params = nnx.split(model)
    table = None if model.class_table is None else model.class_table.embedding[...]
    return Partial(_apply(graphdef, True), params, s), table


def _log_prob(graphdef, params, x_t, t, y):
    logits = nnx.merge(graphdef, params)(x_t, t)  # (B, num_classes)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]  # (B,)


def classifier_log_prob_fn(classifier: Classifier) -> LogProbFn:
    """log p(y | x_t, t) of a noisy classifier as log_prob_fn(x_t, t, y) -> (B,), for
    guidance.classifier_guidance; its weights are traced arguments, as in unet_eps_fn."""
    graphdef, params = nnx.split(classifier)
    return Partial(functools.partial(_log_prob, graphdef), params)


def check_finite(x, what: str):
    """x as a NumPy array, if every value is finite; else a ValueError saying how many are not.

    The one check where minidiff produces images: a NaN weight or an overflowing guidance
    scale must not end in a picture of NaNs and exit code 0."""
    x = np.asarray(x)
    bad = int(np.sum(~np.isfinite(x)))
    if bad:
        raise ValueError(f"{what} came out with {bad} of {x.size} values NaN or infinite "
                         "(a model file with broken weights, or a guidance scale that overflows)")
    return x


def guided_eps_fn(model: UNet, s: schedules.Schedule, guidance_scale: float, *,
                  classifier: Classifier | None = None, sampler: str = "ddim") -> EpsFn:
    """The eps_fn that samples are drawn with.

    Without a classifier: classifier-free guidance at w = guidance_scale (w = 1 is the
    conditional model alone, run without the unconditional half of the batch; w = 0 the
    unconditional one). With a noisy classifier: classifier guidance at scale guidance_scale on
    the unconditional model (Dhariwal & Nichol 2021, Algorithm 2 for DDIM, 1 for DDPM).
    """
    eps_fn = unet_eps_fn(model, s)
    if classifier is not None:
        if not classifier.config.noised:
            raise ValueError("classifier guidance needs a noised (time-conditioned) classifier; "
                             "this one was trained on clean images only")
        guide = guidance.classifier_guidance_ddpm if sampler == "ddpm" else guidance.classifier_guidance
        return guide(guidance.unconditional(eps_fn, null_condition(model)), classifier_log_prob_fn(classifier),
                     s, guidance_scale)
    if guidance_scale == 1.0:
        return eps_fn
    return guidance.classifier_free(eps_fn, guidance_scale, null_condition(model))


def generate(
    model: UNet, s: schedules.Schedule, labels, key, *, sampler: str = "ddim", steps: int | None = None,
    eta: float = 0.0, guidance_scale: float = 3.0, spacing: str = "leading", clip_x0: bool = False,
    dynamic_threshold: float = 0.0, variance: str = "beta_tilde", classifier=None,
):
    """Class-conditional samples, one per label, with classifier-free guidance at w =
    guidance_scale, or classifier guidance at that scale when a noised classifier is given.

    sampler "ddim" (steps, default 50; eta; spacing) or "ddpm" (ancestral; all T steps unless
    steps is given; variance "beta_tilde", or "beta" for the DDIM paper's sigma-hat sampler).
    clip_x0 / dynamic_threshold limit x0_pred inside every step (samplers.limit_x0; off by
    default). Returns a NumPy array (N, H, W, C): the sampler's final values as they are, not
    clipped (a model's samples can leave [-1, 1]; the CLI clips before it writes an image); a
    non-finite result raises ValueError (check_finite).
    """
    labels = conditions(model, labels)
    cfg = model.config
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    eps_fn = guided_eps_fn(model, s, guidance_scale, classifier=classifier, sampler=sampler)
    key_T, key_steps = jax.random.split(key)
    x_T = jax.random.normal(key_T, (labels.shape[0], cfg.image_size, cfg.image_size, cfg.in_channels))
    if sampler == "ddim":
        ts = samplers.make_timesteps(s.num_timesteps, 50 if steps is None else steps, spacing)
        x0 = samplers.ddim_sample(eps_fn, s, x_T, ts, eta=eta, key=key_steps, y=labels, clip_x0=clip_x0,
                                 dynamic_threshold=dynamic_threshold)
    else:
        ts = None if steps is None else samplers.make_timesteps(s.num_timesteps, steps, spacing)
        x0 = samplers.ddpm_sample(eps_fn, s, x_T, key_steps, y=labels, timesteps=ts, variance=variance,
                                  clip_x0=clip_x0, dynamic_threshold=dynamic_threshold)
    return check_finite(x0, "sampling")


def label_grid(num_classes: int, per_label: int) -> np.ndarray:
    """Labels 0,0,..,1,1,..: one row of per_label samples for each class."""
    return np.repeat(np.arange(num_classes), per_label).astype(np.int32)


def feature_levels(model: UNet, *levels: int) -> tuple[float, ...]:
    """Controller.feature_levels for this U-Net: weight 1 at the given up-path levels (0 the
    deepest, at the lowest resolution; -1 the last, at full resolution), 0 elsewhere.

    The last level's features are the whole output (only norm_out and conv_out follow), so
    injecting them is not Plug-and-Play's partial injection: the edit follows the reconstruction
    for those steps, exactly the label switch after that fraction (tests/test_editing.py). On a
    caption model whose full-resolution blocks read no prompt, the level above it is the same."""
    count = len(model.config.channels)
    if any(not -count <= l < count for l in levels):
        raise ValueError(f"feature levels must lie in 0..{count - 1} (this U-Net has {count}), got {levels}")
    levels = {l % count for l in levels}
    return tuple(1.0 if l in levels else 0.0 for l in range(count))


def controller_for(model: UNet, attention: float = 0.0, features: float = 0.0, levels=(), source_label: float = 0.0,
                   cross: float = 0.0):
    """An editing.Controller sized to this U-Net's decoder (levels as in feature_levels); cross,
    the steps with the source's cross-attention maps, needs a caption model."""
    if cross > 0 and model.config.conditioning != "text":
        raise ValueError("cross-attention control needs a caption model (this U-Net is label-conditioned)")
    return editing.Controller(attention, features, feature_levels(model, *levels), source_label, cross)


def token_control(source_tokens, target_tokens, reweight: dict[str, float] | None = None,
                  renormalise: bool = False) -> editing.TokenControl:
    """Prompt-to-Prompt's per-token control of edits from prompts source_tokens to target_tokens
    (B, L): captions.align's map and weights (word swap or refine), and reweight's factors
    {word: factor} on the target prompts' words (captions.reweight_scale), with each pixel's
    weights renormalised over the tokens if renormalise (text_layers.CrossControl)."""
    pairs = [captions.align(a, b) for a, b in zip(np.asarray(source_tokens), np.asarray(target_tokens))]
    scale = [captions.reweight_scale(b, reweight or {}) for b in np.asarray(target_tokens)]
    return editing.TokenControl(jnp.asarray(np.stack([p[0] for p in pairs])),
                                jnp.asarray(np.stack([p[1] for p in pairs])), jnp.asarray(np.stack(scale)),
                                jnp.full((len(pairs),), float(renormalise), jnp.float32))


def invert_and_edit(model: UNet, s: schedules.Schedule, x0, labels, *, method: str = "null",
                    guidance_scale: float = 7.5, steps: int = 50, targets=None,
                    controller: editing.Controller | None = None, inner_steps: int = inversion.INNER_STEPS,
                    lr: float = inversion.LR, fixed_point_iterations: int = 5,
                    reweight: dict[str, float] | None = None, renormalise: bool = False) -> dict:
    """Invert real images x0 (B, H, W, C) with their labels by one of inversion.METHODS and
    reconstruct them; with targets (B,) also edit them to those labels, the edit branch
    controlled by `controller` (editing.Controller; None: no control). On a caption model labels
    and targets are prompts' tokens (B, L) (or labels, read as the digit words alone), "null"
    is null-text inversion, and the edit's cross-attention follows token_control (with
    `reweight`, {word: factor}, renormalised over the tokens if renormalise). inner_steps and lr go to null-class inversion,
    fixed_point_iterations to fixed-point inversion. Returns numpy arrays: reconstructions, edits
    when targets are given, and for "null" the inner optimiser steps used (n, B)."""
    if method not in inversion.METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {inversion.METHODS}")
    ts = samplers.make_timesteps(s.num_timesteps, steps)
    emb_fn = unet_embedding_fns(model, s)[0]
    source = conditions(model, labels)
    source_emb = model.embed(source)
    inv = inversion.invert(method, emb_fn, s, x0, ts, source_emb, null_embedding(model), guidance_scale,
                           fixed_point_iterations=fixed_point_iterations, inner_steps=inner_steps, lr=lr)
    if targets is None:  # reconstruction only: the source branch alone
        rec = inversion.reconstruct(emb_fn, s, inv, ts, guidance_scale, source_emb)
    else:
        target = conditions(model, targets)
        controller = controller_for(model) if controller is None else controller
        tokens = token_control(source, target, reweight, renormalise) if model.config.conditioning == "text" else None
        rec, edits = editing.edit(unet_controlled_fn(model, s), s, inv, ts, guidance_scale, source_emb,
                                  model.embed(target), controller, tokens)
    out = {"reconstructions": rec} | ({} if targets is None else {"edits": edits})
    if inv.inner_steps is not None:
        out["inner_steps"] = inv.inner_steps
    return {k: check_finite(v, k) for k, v in out.items()}
