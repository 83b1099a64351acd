"""Sample-quality experiments: the DDIM paper's Table 1 (steps x eta) and guidance sweeps.

Every configuration draws the same number of samples per class from the same seeds and is
scored by the clean evaluation classifier: accuracy (is it the class asked for?), classifier
FID against the held-out real images (NOT comparable to Inception FID) and within-class
feature diversity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minidiff import evaluation, plotting
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, per_class_grid, save_json

SIGMA_HAT = "sigma-hat"  # the DDIM paper's eta-hat row: ancestral steps with variance beta
GUIDANCE_NAMES = {"cfg": "classifier-free guidance (w)",
                  "classifier_guidance": "classifier guidance (noisy classifier, scale s)"}


def _measure(setup: Setup, per_label: int, seed: int, **sampling) -> tuple[dict, np.ndarray]:
    images, labels, seconds = evaluation.draw_samples(setup.model, setup.schedule, per_label, seed=seed,
                                                      **sampling)
    row = evaluation.score_samples(setup.judge, images, labels, setup.reference)
    row["seconds"] = round(seconds, 1)
    return row, images


def _over_seeds(rows: list[dict]) -> dict:
    """One table cell from its per-seed rows: every number's mean, and the classifier FID's
    standard deviation and per-seed values (the spread that says whether two cells differ)."""
    cell = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], (int, float))}
    cell["num_samples"] = rows[0]["num_samples"]
    fids = [r["classifier_fid"] for r in rows]
    cell.update(seeds=len(rows), classifier_fid_std=float(np.std(fids, ddof=1)) if len(rows) > 1 else 0.0,
                classifier_fid_per_seed=fids)
    return cell


def sampler_table(setup: Setup, out_dir, per_label: int = 50, steps=(10, 20, 50, 100),
                  etas=(0.0, 0.2, 0.5, 1.0), sigma_hat: bool = True, guidance: float = 1.0,
                  seeds: int = 1) -> dict:
    """DDIM Table 1 analogue: classifier FID for S steps x eta, plus the sigma-hat sampler
    (Song et al. 2021, Sec. 5.1: sigma_t = sqrt(1 - alpha_t / alpha_{t-1}), i.e. DDPM with
    variance beta over the same strided steps). Samples are conditional at CFG w = guidance.
    Each cell is drawn with seeds 0..seeds-1 (the same noise in every cell of a seed) and
    reports means, with the classifier FID's spread over seeds."""
    result = {"experiment": "sampler_table", "per_label": per_label, "guidance": guidance, "seeds": seeds,
              "num_classes": setup.model.config.num_classes,
              "rows": []}
    pictures = {}
    variants = [(eta, {"sampler": "ddim", "eta": eta}) for eta in etas]
    if sigma_hat:
        variants.append((SIGMA_HAT, {"sampler": "ddpm", "variance": "beta"}))
    for S in steps:
        for name, sampling in variants:
            per_seed = []
            for seed in range(seeds):
                row, images = _measure(setup, per_label, seed, steps=S, guidance_scale=guidance, **sampling)
                per_seed.append(row)
                if seed == 0 and S == min(steps) and name in (0.0, 1.0):
                    pictures[f"S={S}, eta={name}"] = per_class_grid(images, per_label, show=1)
            row = {"steps": S, "eta": name, **_over_seeds(per_seed)}
            result["rows"].append(row)
            log_row(row)
    plot_sampler_table(result, out_dir / "sampler_table.png")
    if pictures:
        plotting.save_grid(out_dir / "sampler_table_samples.png", np.concatenate(list(pictures.values())),
                           len(next(iter(pictures.values()))), row_labels=list(pictures),
                           title="same noise, one sample per class")
    save_json(out_dir, "sampler_table", result)
    return result


def plot_sampler_table(result: dict, path) -> Path:
    """Classifier FID against the steps S, one line per eta (error bars: std over seeds)."""
    rows, etas = result["rows"], list(dict.fromkeys(r["eta"] for r in result["rows"]))
    lines = {f"eta = {e}" if e != SIGMA_HAT else SIGMA_HAT:
             tuple([r[k] for r in rows if r["eta"] == e] for k in ("steps", "classifier_fid", "classifier_fid_std"))
             for e in etas}
    seeds = result.get("seeds", 1)
    spread = f", mean and std over {seeds} seeds" if seeds > 1 else ""
    return plotting.save_panels(path, {"classifier FID (lower is better)": lines}, "sampling steps S",
                                logx=True, xticks=sorted({r["steps"] for r in rows}),
                                title=f"DDIM steps x eta\n({result['num_classes'] * result['per_label']} samples "
                                      f"per cell, w = {result['guidance']:g}{spread})")


def guidance_sweep(setup: Setup, out_dir, scales=(0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0), per_label: int = 30,
                   steps: int = 50, classifier=None, seed: int = 0) -> dict:
    """Accuracy, classifier FID and diversity against the guidance scale, with a picture grid
    per scale. Classifier-free guidance by default; with a noised classifier, classifier
    guidance on the unconditional model (Dhariwal & Nichol 2021) at those scales."""
    name = "classifier_guidance" if classifier is not None else "cfg"
    result = {"experiment": name, "per_label": per_label, "steps": steps, "rows": []}
    for w in scales:
        row, images = _measure(setup, per_label, seed, steps=steps, guidance_scale=w, classifier=classifier)
        row = {"scale": w, **row}
        result["rows"].append(row)
        log_row(row)
        show = min(per_label, 8)
        plotting.save_grid(out_dir / f"{name}_w{w:g}.png", per_class_grid(images, per_label, show), show,
                           row_labels=list(range(setup.model.config.num_classes)),
                           title=f"{GUIDANCE_NAMES[name]} = {w:g}: accuracy {row['accuracy']:.0%}")
    save_json(out_dir, name, result)
    return result


def plot_guidance(out_dir, results: list[dict]) -> None:
    """One figure comparing guidance sweeps (CFG and classifier guidance) on all three metrics."""
    panels = {}
    for metric, label in (("accuracy", "accuracy under the eval classifier"),
                          ("classifier_fid", "classifier FID"), ("diversity", "within-class diversity")):
        panels[label] = {GUIDANCE_NAMES[r["experiment"]]: ([row["scale"] for row in r["rows"]],
                                                           [row[metric] for row in r["rows"]])
                         for r in results}
    plotting.save_panels(out_dir / "guidance.png", panels, "guidance scale",
                         title="guidance trades diversity for class accuracy")
