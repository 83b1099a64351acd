"""Inversion experiment: reconstruction PSNR of plain DDIM inversion vs null-class inversion
on held-out digits at several guidance scales, and label-swap edits (label -> label + 1 mod
10) scored by the eval classifier and by PSNR to the source, against random samples of the
target class (how close would an unrelated image of that class be?).

The JSON is rewritten after every row, and rows of an earlier run with the same settings are
kept unless measured again, so the scales can be run separately (`--guidance 7.5`) and an
interrupted run keeps what it finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from minidiff import evaluation, inversion, metrics, pipeline, plotting
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json


def inversion_experiment(setup: Setup, out_dir, num: int = 100, guidance=(1.0, 3.0, 7.5), steps: int = 50,
                         keep_source_steps: int = 5, batch: int = 50) -> dict:
    """Plain DDIM vs null-class inversion of the first `num` held-out images at each guidance
    scale, with edits to label + 1; rows are added to out_dir/inversion.json as they finish."""
    model, s = setup.model, setup.schedule
    x0, labels = setup.heldout[:num], setup.heldout_labels[:num]
    targets = (labels + 1) % model.config.num_classes
    result = {"experiment": "inversion", "num_images": len(x0), "steps": steps,
              "keep_source_steps": keep_source_steps, "batch": batch,
              "null_inner_steps_max": inversion.INNER_STEPS, "null_lr_relative": inversion.LR, "rows": []}
    result = _earlier_result(out_dir, result, guidance)
    for w in guidance:
        for method in pipeline.INVERSION_METHODS:
            start, outs = time.perf_counter(), []
            for i in range(0, len(x0), batch):
                sl = slice(i, i + batch)
                outs.append(pipeline.invert_and_edit(
                    model, s, x0[sl], labels[sl], method=method, guidance_scale=w, steps=steps,
                    targets=targets[sl], keep_source_steps=keep_source_steps))
            seconds = time.perf_counter() - start
            out = {k: np.concatenate([o[k] for o in outs], axis=-1 if k == "inner_steps" else 0) for k in outs[0]}
            psnr = metrics.psnr(x0, out["reconstructions"])
            row = {"guidance": w, "method": method, "psnr_mean": float(psnr.mean()),
                   "psnr_min": float(psnr.min()), "seconds_per_image": round(seconds / len(x0), 3),
                   "edit_accuracy": metrics.accuracy(evaluation.predict(setup.judge, out["edits"])[0], targets),
                   "edit_psnr_to_source": float(metrics.psnr(x0, out["edits"]).mean())}
            if method == "null":
                row["inner_steps_mean"] = float(out["inner_steps"].mean())
                row["inner_steps_mean_per_step"] = np.round(out["inner_steps"].mean(axis=1), 2).tolist()
            result["rows"] = sorted(result["rows"] + [row], key=lambda r: (r["guidance"], r["method"]))
            save_json(out_dir, "inversion", result)
            log_row(row)
            if method == "null":
                n = min(10, len(x0))
                plotting.save_grid(out_dir / f"inversion_null_w{w:g}.png",
                                   np.concatenate([x0[:n], out["reconstructions"][:n], out["edits"][:n]]),
                                   n, row_labels=["source", "recon.", "edit +1"],
                                   title=f"null-class inversion, w = {w:g}, DDIM-{steps}")
    earlier = result.get("random_target_samples")
    if earlier is None or earlier["guidance"] <= max(guidance):
        randoms = np.concatenate([np.asarray(pipeline.generate(
            model, s, targets[i:i + batch], jax.random.PRNGKey(i), steps=steps, guidance_scale=max(guidance)))
            for i in range(0, len(x0), batch)])
        result["random_target_samples"] = {
            "guidance": max(guidance), "psnr_to_source": float(metrics.psnr(x0, randoms).mean()),
            "accuracy": metrics.accuracy(evaluation.predict(setup.judge, randoms)[0], targets)}
        log_row(result["random_target_samples"])
    save_json(out_dir, "inversion", result)
    return result


def _earlier_result(out_dir, fresh: dict, guidance) -> dict:
    """The saved result of an earlier run with the same settings, less the rows measured again;
    or the fresh one."""
    path = Path(out_dir) / "inversion.json"
    if not path.exists():
        return fresh
    earlier = json.loads(path.read_text())
    settings = [k for k in fresh if k != "rows"]
    if any(earlier.get(k) != fresh[k] for k in settings):
        return fresh
    earlier["rows"] = [r for r in earlier["rows"] if r["guidance"] not in guidance]
    return earlier
