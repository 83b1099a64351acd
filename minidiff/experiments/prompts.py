"""Experiments on the caption model: does it follow its prompts, and do Prompt-to-Prompt's edits
keep the writer's hand?

- `prompt_following`: samples of every digit word under each of the nine style-word
  combinations. The digit word is judged by the evaluation classifier; a style word is followed
  when the sample's measured attribute falls in that word's tercile of its class (the cut
  points the model's captions were made with).
- `word_swap`: held-out digits, null-text inverted under their own computed captions, then
  edited to the caption with the digit word changed to digit + 1 (the other words kept), under
  each controller of TEXT_EDIT_DEFAULT (or those named, of TEXT_EDIT_SWEEP). Judged as the target, and by the style ratio over slant
  and thickness (metrics.style_ratio) against two references: random samples of the target
  digit word alone, and random samples of the full target caption (which already name the
  source's style, so beating them shows what the maps add). Beside them, the same-hand real digit
  (metrics.same_hand): a training digit of the target class that stands where the source stands in
  its own class: what a real digit in the source's hand scores. Then P2P's reweight: the thickness
  word of the digits whose caption has one, scaled by each factor (pipeline.REWEIGHT_CONTROL),
  once as P2P does and once with each pixel's weights renormalised over the tokens.

Both write their JSON after every row, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import itertools
import time

import jax
import numpy as np

from minidiff import captions, data, editing, evaluation, inversion, metrics, pipeline, plotting, samplers, word_maps
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json

STYLE_COMBINATIONS = [" ".join(w for w in pair if w) for pair in
                      itertools.product(("", "thin", "bold"), ("", "left-leaning", "right-leaning"))]
# The tercile (0 lowest, 2 highest) of its attribute that each style word names (captions.py).
WORD_TERCILE = {"thin": ("thickness", 0), "bold": ("thickness", 2),
                "right-leaning": ("slant", 0), "left-leaning": ("slant", 2)}
# The controllers `python -m minidiff.experiments word-swap` compares (pipeline.controller_for's
# arguments). P2P's own: cross-attention replace at the paper's 0.8 and at the shorter fractions
# that a model with cross-attention at 28x28 needs (there 0.8 keeps the source digit), and
# self-attention. Then the prompt switch: the source prompt for the first part of the steps, the
# edit following the reconstruction that long.
# Then Plug-and-Play's feature injection at 14x14 (levels (-2,): the up path's level above full
# resolution). On a model with cross-attention at 28x28 (`train --cross-attention-levels 0,1,2`)
# the full-resolution blocks still read the new prompt after it; on the released model, whose
# full-resolution blocks read no prompt, it is the prompt switch (pipeline.feature_levels).
TEXT_EDIT_SWEEP = {
    "no control": {},
    "cross-attention 0.8": {"cross": 0.8},
    "cross-attention 0.2": {"cross": 0.2},
    "cross-attention 0.3": {"cross": 0.3},
    "cross-attention 0.4": {"cross": 0.4},
    "cross-attention 0.5": {"cross": 0.5},
    "self-attention 0.4": {"attention": 0.4},
    "cross 0.8 + self 0.4 (P2P)": {"cross": 0.8, "attention": 0.4},
    "prompt switch 0.2": {"source_label": 0.2},
    "prompt switch 0.3 + self 1.0": {"source_label": 0.3, "attention": 1.0},
    "prompt switch 0.4 + self 1.0": {"source_label": 0.4, "attention": 1.0},
    "features 14x14 0.4 + self 1.0": {"features": 0.4, "levels": (-2,), "attention": 1.0},
    "features 14x14 0.7 + self 1.0": {"features": 0.7, "levels": (-2,), "attention": 1.0},
    "features 14x14 1.0 + self 1.0": {"features": 1.0, "levels": (-2,), "attention": 1.0},
}
# The controllers run when none are named: the seven of the released model's table (docs/results.md).
# The others are for a model with cross-attention at 28x28, where they differ from these.
TEXT_EDIT_DEFAULT = ("no control", "cross-attention 0.8", "self-attention 0.4", "cross 0.8 + self 0.4 (P2P)",
                     "prompt switch 0.2", "prompt switch 0.3 + self 1.0", "prompt switch 0.4 + self 1.0")


def _sample(setup: Setup, tokens, w: float, steps: int, batch: int, seed: int = 0) -> np.ndarray:
    return np.concatenate([pipeline.generate(setup.model, setup.schedule, tokens[i:i + batch],
                                             jax.random.PRNGKey(seed * 1000 + i), steps=steps, guidance_scale=w)
                           for i in range(0, len(tokens), batch)])


def in_tercile(images, labels, prompts_tokens, terciles) -> dict[str, float]:
    """For each style word: the fraction of images whose prompt has it that fall in its tercile."""
    attributes = captions.style_attributes(images)
    out = {}
    for word, (name, third) in WORD_TERCILE.items():
        has = np.any(np.asarray(prompts_tokens) == captions.TOKEN[word], axis=1)
        if has.any():
            j = captions.STYLE_ATTRIBUTES.index(name)
            got = captions.tercile_of(attributes[has, j], np.asarray(labels)[has], terciles[name])
            out[word] = float(np.mean(got == third))
    return out


def prompt_following(setup: Setup, terciles: dict, out_dir, num: int = 500, guidance: float = 3.0,
                     steps: int = 50, batch: int = 250) -> dict:
    """num samples, the digits in turn, each under the next of the nine style combinations."""
    labels = np.arange(num) % 10
    prompts = [f"{STYLE_COMBINATIONS[(i // 10) % 9]} {captions.DIGIT_WORDS[labels[i]]}".strip() for i in range(num)]
    tokens = captions.tokenize_all(prompts)
    start = time.perf_counter()
    images = _sample(setup, tokens, guidance, steps, batch)
    seconds = time.perf_counter() - start
    judged = np.argmax(evaluation.predict(setup.judge, images)[0], axis=-1)
    result = {"experiment": "prompt_following", "num_samples": num, "guidance": guidance, "steps": steps,
              "sampling_seconds": round(seconds, 1), "digit_accuracy": float(np.mean(judged == labels)),
              "style_word_in_its_tercile": in_tercile(images, labels, tokens, terciles),
              "digit_accuracy_by_combination": {
                  c or "(digit word alone)": float(np.mean((judged == labels)[[(i // 10) % 9 == k for i in range(num)]]))
                  for k, c in enumerate(STYLE_COMBINATIONS)}}
    save_json(out_dir, "prompt_following", result)
    log_row(result)
    # One row per style combination, one column per digit.
    rows = [[i for i in range(num) if (i // 10) % 9 == k][:10] for k in range(9)]
    if all(len(r) == 10 for r in rows):
        plotting.save_grid(out_dir / "prompt_following.png", np.clip(images[np.concatenate(rows)], -1, 1), 10,
                           row_labels=[c or "(none)" for c in STYLE_COMBINATIONS], col_labels=captions.DIGIT_WORDS,
                           title=f"prompt following: DDIM-{steps}, w = {guidance:g}")
    save_word_maps(setup, terciles, out_dir, steps=steps, guidance=guidance)
    return result


def save_word_maps(setup: Setup, terciles: dict, out_dir, num: int = 4, steps: int = 50, guidance: float = 3.0):
    """Prompt-to-Prompt's per-word picture for the first num held-out digits under their own
    captions (word_maps_real.png) and for samples of num prompts (word_maps_samples.png)."""
    x0, labels = setup.heldout[:num], setup.heldout_labels[:num]
    tokens = np.asarray(captions.pack(captions.caption_words(x0, labels, terciles)))
    maps = word_maps.of_images(setup.model, setup.schedule, x0, tokens, steps=steps)
    plotting.save_figure(out_dir / "word_maps_real.png", plotting.word_maps_figure(
        x0, maps, captions.word_positions(tokens), f"held-out digits under their own captions, along their DDIM inversion ({steps} steps)"))
    prompts = captions.tokenize_all(["bold right-leaning seven", "thin left-leaning seven", "bold two",
                                     "thin right-leaning four"][:num])
    samples, maps = word_maps.of_samples(setup.model, setup.schedule, prompts, jax.random.PRNGKey(0), steps=steps,
                                         guidance_scale=guidance)
    plotting.save_figure(out_dir / "word_maps_samples.png", plotting.word_maps_figure(
        np.clip(samples, -1, 1), maps, captions.word_positions(prompts), f"samples, along their own trajectory (w = {guidance:g})"))


def word_swap(setup: Setup, terciles: dict, out_dir, num: int = 100, guidance: float = pipeline.EDIT_GUIDANCE["text"],
              steps: int = 50, batch: int = 50, controls: dict | None = None, reweight_factors=(0.5, 1.0, 2.0, 4.0),
              reweight_control: dict | None = None) -> dict:
    """Null-text inversion of the first num held-out digits under their own captions, then the
    word swap under each controller and the thickness word reweighted (module docstring), as
    P2P does and with each pixel's weights renormalised over the tokens."""
    model, s = setup.model, setup.schedule
    controls = {name: TEXT_EDIT_SWEEP[name] for name in TEXT_EDIT_DEFAULT} if controls is None else controls
    x0, labels = setup.heldout[:num], setup.heldout_labels[:num]
    targets = (labels + 1) % 10
    source = np.asarray(captions.pack(captions.caption_words(x0, labels, terciles)))
    target = captions.with_digit(source, targets)
    ts = samplers.make_timesteps(s.num_timesteps, steps)
    emb_fn = pipeline.unet_embedding_fns(model, s)[0]
    null = pipeline.null_embedding(model)
    spread = metrics.handwriting_attributes(setup.heldout[:1000]).std(axis=0)
    batches = [slice(i, i + batch) for i in range(0, num, batch)]

    start = time.perf_counter()
    invs = [inversion.invert("null", emb_fn, s, x0[b], ts, model.embed(source[b]), null, guidance) for b in batches]
    jax.block_until_ready(invs[-1].x_T)
    seconds = (time.perf_counter() - start) / num
    recs = np.concatenate([inversion.reconstruct(emb_fn, s, inv, ts, guidance, model.embed(source[b]))
                           for inv, b in zip(invs, batches)])
    psnr = metrics.psnr(x0, recs)
    digit_refs = _sample(setup, targets, guidance, steps, batch, seed=1)  # the digit word alone
    caption_refs = _sample(setup, target, guidance, steps, batch, seed=2)  # the full target caption
    judge = lambda images, want: metrics.accuracy(evaluation.predict(setup.judge, images)[0], want)
    pool = data.to_model_range(setup.train_images)  # same_hand picks each source's from these
    hand = pool[metrics.same_hand(metrics.handwriting_attributes(x0), labels, metrics.handwriting_attributes(pool),
                                  setup.train_labels, targets)]
    result = {"experiment": "word_swap", "num_images": num, "guidance": guidance, "steps": steps,
              "inversion": {"method": "null", "psnr_mean": float(psnr.mean()), "psnr_min": float(psnr.min()),
                            "seconds_per_digit": round(seconds, 2),
                            "inner_steps_mean": float(np.mean(np.concatenate([np.asarray(i.inner_steps) for i in invs],
                                                                             axis=1)))},
              "references": {"digit word alone": {"accuracy": judge(digit_refs, targets)},
                             "full target caption": {"accuracy": judge(caption_refs, targets)},
                             "same-hand real digit": {
                                 "accuracy": judge(hand, targets),
                                 "style_ratio_vs_digit_word": metrics.style_ratio(hand, x0, digit_refs, spread),
                                 "style_ratio_vs_full_caption": metrics.style_ratio(hand, x0, caption_refs, spread),
                                 "style_ratio_by_attribute": metrics.style_ratio_by_attribute(hand, x0, digit_refs)}},
              "rows": [], "reweight": []}
    fn = pipeline.unet_controlled_fn(model, s)

    def run(tgt, controller, reweight=None, rows=None, renormalise=False):
        """Edits to prompts tgt (num, L), of every digit or only of `rows` (indices)."""
        outs = []
        for inv, b in zip(invs, batches):
            index = np.arange(num)[b] if rows is None else np.intersect1d(np.arange(num)[b], rows)
            if len(index) == 0:
                continue
            if rows is not None:  # the inversion of these rows alone
                inv = inv.take(index - b.start)
            tokens = pipeline.token_control(source[index], tgt[index], reweight, renormalise)
            outs.append(np.asarray(editing.edit(fn, s, inv, ts, guidance, model.embed(source[index]),
                                                model.embed(tgt[index]), controller, tokens)[1]))
        return np.concatenate(outs)

    pictures, names = [x0[:10], recs[:10], hand[:10]], ["source", "recon.", "same hand"]
    for name, control in controls.items():
        edits = run(target, pipeline.controller_for(model, **control))
        row = {"controller": name, **control, "edit_accuracy": judge(edits, targets),
               "style_ratio_vs_digit_word": metrics.style_ratio(edits, x0, digit_refs, spread),
               "style_ratio_vs_full_caption": metrics.style_ratio(edits, x0, caption_refs, spread),
               "style_ratio_by_attribute": metrics.style_ratio_by_attribute(edits, x0, digit_refs)}
        result["rows"].append(row)
        save_json(out_dir, "word_swap", result)
        log_row(row)
        pictures.append(edits[:10])
        names.append(name)
    plotting.save_grid(out_dir / "word_swap.png", np.clip(np.concatenate(pictures), -1, 1), 10, row_labels=names,
                       title=f"word swap to digit + 1 after null-text inversion, w = {guidance:g}")

    reweight_control = dict(pipeline.REWEIGHT_CONTROL if reweight_control is None else reweight_control)
    controller = pipeline.controller_for(model, **reweight_control)
    thickness = captions.style_attributes
    words = [w for w in captions.THICKNESS_WORDS if len(reweight_factors) and np.any(source == captions.TOKEN[w])]
    for renormalise in (False, True):  # P2P's reweight, then each pixel's weights renormalised over the tokens
        pictures = []
        for word in words:
            has = np.flatnonzero(np.any(source == captions.TOKEN[word], axis=1))
            row = {"word": word, "num_images": int(len(has)), "control": reweight_control,
                   "renormalise": renormalise, "source_thickness": float(thickness(x0[has])[:, 0].mean()),
                   "factors": []}
            for factor in reweight_factors:
                edits = run(source, controller, {word: factor}, rows=has, renormalise=renormalise)
                row["factors"].append({"factor": factor, "mean_thickness": float(thickness(edits)[:, 0].mean()),
                                       "accuracy": judge(edits, labels[has])})
                shown = edits[:8]  # one row of 8 per factor; grey tiles where fewer digits carry the word
                pictures.append(np.concatenate([shown, np.zeros((8 - len(shown), *shown.shape[1:]), shown.dtype)]))
            result["reweight"].append(row)
            save_json(out_dir, "word_swap", result)
            log_row(row)
        if pictures:
            plotting.save_grid(out_dir / ("reweight_renormalised.png" if renormalise else "reweight.png"),
                               np.clip(np.concatenate(pictures), -1, 1), 8,
                               row_labels=[f"{w} x{f:g}" for w in words for f in reweight_factors],
                               title="each caption's thickness word reweighted"
                                     + (", renormalised" if renormalise else " as P2P does"))
    return result
