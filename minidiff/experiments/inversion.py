"""Inversion and editing experiments on held-out digits, edits to label + 1 (mod 10).

- `inversion_experiment`: the inversion methods side by side (inversion.METHODS) at several
  guidance scales: reconstruction PSNR (mean, min), seconds per image, and the edits of each
  under one controller, judged by the eval classifier (target accuracy) and by the style ratio
  (metrics.style_ratio: does the edit keep *this* digit's handwriting? and
  metrics.style_ratio_by_attribute: which parts of it?).
- `editing_experiment`: one inversion method, the controllers side by side: the label switch,
  Prompt-to-Prompt self-attention control and feature injection, with a sweep of fractions.

Both compare edits with random samples of the target class drawn at the same guidance (the
style ratio's reference), and write their JSON after every row, so an interrupted run keeps
what it finished."""

from __future__ import annotations

import time

import jax
import numpy as np

from minidiff import editing, evaluation, inversion, metrics, pipeline, plotting, samplers
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json


def _style_spread(setup: Setup) -> np.ndarray:
    """The handwriting attributes' standard deviations over (up to 1000) held-out digits."""
    return metrics.handwriting_attributes(setup.heldout[:1000]).std(axis=0)


def _references(setup: Setup, targets, w: float, steps: int, batch: int) -> np.ndarray:
    """Random samples of each target class at guidance w: what an unrelated digit looks like."""
    return np.concatenate([np.asarray(pipeline.generate(
        setup.model, setup.schedule, targets[i:i + batch], jax.random.PRNGKey(i), steps=steps, guidance_scale=w))
        for i in range(0, len(targets), batch)])


def _run(setup: Setup, x0, labels, targets, batch: int, **options) -> tuple[dict, float]:
    """invert_and_edit over the images in batches: (outputs concatenated, seconds per image)."""
    start, outs = time.perf_counter(), []
    for i in range(0, len(x0), batch):
        sl = slice(i, i + batch)
        outs.append(pipeline.invert_and_edit(setup.model, setup.schedule, x0[sl], labels[sl],
                                             targets=targets[sl], **options))
    seconds = (time.perf_counter() - start) / len(x0)
    return {k: np.concatenate([o[k] for o in outs], axis=-1 if k == "inner_steps" else 0) for k in outs[0]}, seconds


def _edit_scores(setup: Setup, x0, out: dict, targets, references, spread) -> dict:
    edits = out["edits"]
    return {"edit_accuracy": metrics.accuracy(evaluation.predict(setup.judge, edits)[0], targets),
            "style_ratio": metrics.style_ratio(edits, x0, references, spread),
            "style_ratio_by_attribute": metrics.style_ratio_by_attribute(edits, x0, references),
            "edit_psnr_to_source": float(metrics.psnr(x0, edits).mean())}


def inversion_experiment(setup: Setup, out_dir, num: int = 100, guidance=(1.0, 3.0, 7.5), methods=None,
                         steps: int = 50, batch: int = 50, control: dict | None = None) -> dict:
    """Every inversion method at each guidance scale on the first `num` held-out digits, with
    edits under `control` (pipeline.controller_for's arguments; default pipeline.DEFAULT_CONTROL);
    rows go to out_dir/inversion.json as they finish, pictures to inversion_wW.png."""
    model = setup.model
    control = dict(pipeline.DEFAULT_CONTROL if control is None else control)
    methods = inversion.METHODS if methods is None else tuple(methods)
    x0, labels = setup.heldout[:num], setup.heldout_labels[:num]
    targets = (labels + 1) % model.config.num_classes
    spread = _style_spread(setup)
    result = {"experiment": "inversion", "num_images": len(x0), "steps": steps, "batch": batch,
              "control": control, "style_spread": spread.tolist(), "rows": [], "random_target_samples": []}
    for w in guidance:
        references = _references(setup, targets, w, steps, batch)
        result["random_target_samples"].append(
            {"guidance": w, "accuracy": metrics.accuracy(evaluation.predict(setup.judge, references)[0], targets),
             "psnr_to_source": float(metrics.psnr(x0, references).mean())})
        pictures = [x0[:10]]
        for method in methods:
            out, seconds = _run(setup, x0, labels, targets, batch, method=method, guidance_scale=w, steps=steps,
                                controller=pipeline.controller_for(model, **control))
            psnr = metrics.psnr(x0, out["reconstructions"])
            row = {"guidance": w, "method": method, "psnr_mean": float(psnr.mean()), "psnr_min": float(psnr.min()),
                   "seconds_per_image": round(seconds, 3),
                   **_edit_scores(setup, x0, out, targets, references, spread)}
            if "inner_steps" in out:
                row["inner_steps_mean"] = float(out["inner_steps"].mean())
            result["rows"].append(row)
            save_json(out_dir, "inversion", result)
            log_row(row)
            pictures += [out["reconstructions"][:10], out["edits"][:10]]
        names = [f"{m} {what}" for m in methods for what in ("recon.", "edit")]
        plotting.save_grid(out_dir / f"inversion_w{w:g}.png", np.concatenate(pictures), len(pictures[0]),
                           row_labels=["source"] + names, title=f"inversion methods, w = {w:g}, DDIM-{steps}")
    return result


def editing_experiment(setup: Setup, out_dir, controls: dict, num: int = 100, guidance=(3.0, 7.5),
                       method: str = "null", steps: int = 50, batch: int = 50) -> dict:
    """The controllers side by side: controls maps a name to pipeline.controller_for's arguments.
    One inversion per guidance scale, every controller edited from it; rows to editing.json,
    one picture row per controller to editing_wW.png."""
    model, s = setup.model, setup.schedule
    x0, labels = setup.heldout[:num], setup.heldout_labels[:num]
    targets = (labels + 1) % model.config.num_classes
    spread = _style_spread(setup)
    result = {"experiment": "editing", "num_images": len(x0), "steps": steps, "method": method, "rows": []}
    ts = samplers.make_timesteps(s.num_timesteps, steps)
    emb_fn, table = pipeline.unet_embedding_fns(model, s)
    fn = pipeline.unet_controlled_fn(model, s)
    for w in guidance:
        references = _references(setup, targets, w, steps, batch)
        invs = [inversion.invert(method, emb_fn, s, x0[i:i + batch], ts, table[labels[i:i + batch]],
                                 table[model.null_class], w) for i in range(0, len(x0), batch)]
        pictures, names = [x0[:10]], []
        for name, control in controls.items():
            controller = pipeline.controller_for(model, **control)
            edits = np.concatenate([np.asarray(editing.edit(
                fn, s, inv, ts, w, table[labels[i:i + batch]], table[targets[i:i + batch]], controller)[1])
                for inv, i in zip(invs, range(0, len(x0), batch))])
            row = {"guidance": w, "controller": name, **control,
                   **_edit_scores(setup, x0, {"edits": edits}, targets, references, spread)}
            result["rows"].append(row)
            save_json(out_dir, "editing", result)
            log_row(row)
            pictures.append(edits[:10])
            names.append(name)
        plotting.save_grid(out_dir / f"editing_w{w:g}.png", np.concatenate(pictures), len(pictures[0]),
                           row_labels=["source"] + names, title=f"edits to label + 1, {method} inversion, w = {w:g}")
    return result
