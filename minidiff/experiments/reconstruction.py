"""DDIM paper Table 2 analogue: encode real held-out images to x_T with DDIM inversion, decode
them back with the DDIM sampler, and measure the reconstruction error against the number of
steps S (Song et al. 2021, Sec. 5.4). Conditional model (w = 1, the true label), eta = 0.
Beside plain DDIM inversion, fixed-point DDIM inversion (samplers.ddim_invert's
fixed_point_iterations; Pan et al. 2023, Garibi et al. 2024), which solves each inverse step
instead of taking eps at the step's start for eps at its end."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from minidiff import metrics, pipeline, plotting, samplers
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json


def reconstruction_table(setup: Setup, out_dir, num: int = 64, steps=(10, 20, 50, 100, 1000),
                         fixed_point_iterations=(0,)) -> dict:
    """Per-pixel MSE (images in [-1, 1]) and PSNR of encode-decode on `num` held-out images, one
    row per number of steps S and per entry of fixed_point_iterations (0: plain DDIM inversion)."""
    eps_fn = pipeline.guided_eps_fn(setup.model, setup.schedule, 1.0)
    x0, y = jnp.asarray(setup.heldout[:num]), jnp.asarray(setup.heldout_labels[:num], jnp.int32)
    result = {"experiment": "reconstruction", "num_images": int(len(x0)), "rows": []}
    curves = {}
    for k in fixed_point_iterations:
        rows = []
        for S in steps:
            start = time.perf_counter()
            ts = samplers.make_timesteps(setup.schedule.num_timesteps, S)
            x_T = samplers.ddim_invert(eps_fn, setup.schedule, x0, ts, y=y, fixed_point_iterations=k)
            rec = np.asarray(samplers.ddim_sample(eps_fn, setup.schedule, x_T, ts, y=y))
            rows.append({"steps": S, "fixed_point_iterations": k, "mse": float(metrics.mse(x0, rec).mean()),
                         "psnr": float(metrics.psnr(x0, rec).mean()), "seconds": round(time.perf_counter() - start, 1)})
            log_row(rows[-1])
        result["rows"] += rows
        name = "plain DDIM inversion" if k == 0 else f"fixed-point inversion, {k} iterations"
        curves[name] = ([r["steps"] for r in rows], [r["mse"] for r in rows])
    plotting.save_panels(out_dir / "reconstruction.png", {"reconstruction MSE per pixel": curves},
                         "DDIM steps S (encode and decode)", logx=True, logy=True, xticks=steps,
                         title=f"DDIM encode-decode of {len(x0)} held-out digits")
    save_json(out_dir, "reconstruction", result)
    return result
