"""Why a model's deterministic samples leave the data range: where along t, and on which data.

Two measurements of one model (the evidence behind the clean-samples release, docs/results.md):

- **eps loss per timestep**, on training digits and on held-out digits with the same noise:
  L_t = E ||eps - eps_theta(x_t, t, y)||^2 / D at fixed t (Ho et al. 2020, Eq. 14 without the
  average over t). Equal curves mean the model underfits rather than memorises; the level at
  small t says how well it removes the last of the noise (real MNIST's background is exactly
  -1, so there the noise is predictable in principle).
- **x0_pred along DDIM trajectories** (eta = 0): at each step, the fraction of pixels of
  x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) outside [-1, 1] and its
  minimum. A model whose ODE stays on the data brings these to the real data's 0 by t = 0;
  where they stop falling is where the model stops correcting the trajectory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from minidiff import data, diffusion, metrics, pipeline, plotting, samplers
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json

LOSS_TIMESTEPS = (0, 10, 50, 100, 200, 400, 600, 800, 999)


def eps_loss_by_timestep(setup: Setup, timesteps=LOSS_TIMESTEPS, num: int = 1000, seed: int = 1,
                         batch: int = 250) -> list[dict]:
    """Per-timestep eps MSE (per pixel) on `num` training and `num` held-out images, with the
    same noise for both; also the RMS of the prediction (an MSE-optimal one has
    E||eps_theta||^2 = 1 - L_t)."""
    eps_fn = jax.jit(pipeline.unet_eps_fn(setup.model, setup.schedule))
    sets = {"train": (data.to_model_range(setup.train_images[:num]), setup.train_labels[:num]),
            "heldout": (setup.heldout[:num], setup.heldout_labels[:num])}
    rows = []
    for t in timesteps:
        row = {"t": int(t)}
        for name, (x0, y) in sets.items():
            noise = jax.random.normal(jax.random.PRNGKey(seed), x0.shape)
            losses, norms = [], []
            for i in range(0, len(x0), batch):
                xb, eb = jnp.asarray(x0[i:i + batch]), noise[i:i + batch]
                tt = jnp.full((len(xb),), t, jnp.int32)
                pred = eps_fn(diffusion.q_sample(setup.schedule, xb, tt, eb), tt, jnp.asarray(y[i:i + batch]))
                losses.append(np.asarray(jnp.mean((pred - eb) ** 2, axis=(1, 2, 3))))
                norms.append(np.asarray(jnp.mean(pred ** 2, axis=(1, 2, 3))))
            row[f"{name}_loss"] = float(np.concatenate(losses).mean())
            row[f"{name}_pred_rms"] = float(np.sqrt(np.concatenate(norms).mean()))
        rows.append(row)
        log_row(row)
    return rows


def x0_pred_along_trajectory(setup: Setup, guidance: float = 1.0, steps: int = 50, per_label: int = 20,
                             seed: int = 0) -> dict:
    """Out-of-range statistics of x0_pred at every step of DDIM-`steps`, eta = 0, CFG w =
    guidance, for per_label samples of each class (one batch)."""
    model, s = setup.model, setup.schedule
    labels = jnp.asarray(pipeline.label_grid(model.config.num_classes, per_label))
    eps_fn = pipeline.guided_eps_fn(model, s, guidance)
    c = model.config
    x_T = jax.random.normal(jax.random.PRNGKey(seed), (len(labels), c.image_size, c.image_size, c.in_channels))
    ts = samplers.make_timesteps(s.num_timesteps, steps)
    x0, xs = samplers.ddim_sample(eps_fn, s, x_T, ts, y=labels, return_trajectory=True)
    call = jax.jit(lambda x, t: eps_fn(x, jnp.full((len(labels),), t, jnp.int32), labels))
    rows = []
    for t, x_t in zip(ts, xs[:-1]):  # xs[i] is x at ts[i]
        x0_pred = np.asarray(diffusion.predict_x0_from_eps(s, x_t, jnp.full((len(labels),), t), call(x_t, int(t))))
        rows.append({"t": int(t), "x0_pred_outside": metrics.out_of_range_fraction(x0_pred),
                     "x0_pred_below": float(np.mean(x0_pred < -1.05)), "x0_pred_min": float(x0_pred.min()),
                     "x0_pred_max": float(x0_pred.max())})
    x0 = np.asarray(x0)
    final = {"outside": metrics.out_of_range_fraction(x0), "background_noise": metrics.background_noise(x0),
             "min": float(x0.min()), "max": float(x0.max()),
             "images_over_5pct_outside": float(np.mean(np.mean(np.abs(x0) > 1.05, axis=(1, 2, 3)) > 0.05))}
    log_row({"guidance": guidance, **final})
    return {"guidance": guidance, "steps": steps, "num_samples": len(labels), "rows": rows, "final": final}


def diagnosis(setup: Setup, out_dir, guidance=(1.0, 3.0), num: int = 1000, per_label: int = 20,
              name: str = "diagnosis") -> dict:
    """Both measurements, written to out_dir/NAME.json and NAME.png."""
    result = {"experiment": "diagnosis", "eps_loss": eps_loss_by_timestep(setup, num=num),
              "trajectories": [x0_pred_along_trajectory(setup, w, per_label=per_label) for w in guidance]}
    plot_diagnosis(result, out_dir / f"{name}.png", name)
    save_json(out_dir, name, result)
    return result


def plot_diagnosis(result: dict, path, name: str = "diagnosis"):
    """diagnosis's picture from its result: eps MSE by t (training vs held-out images) and the
    fraction of x0_pred outside the range along each trajectory, both on log axes."""
    loss = result["eps_loss"]
    ts = [max(r["t"], 1) for r in loss]  # t = 0 drawn at 1 on the log axis
    panels = {
        "eps MSE at fixed t": {"training images": (ts, [r["train_loss"] for r in loss]),
                               "held-out images": (ts, [r["heldout_loss"] for r in loss])},
        "x0_pred: pixels outside [-1.05, 1.05]": {
            f"DDIM-{tr['steps']}, eta = 0, w = {tr['guidance']:g}":
                ([max(r["t"], 1) for r in tr["rows"]], [r["x0_pred_outside"] for r in tr["rows"]])
            for tr in result["trajectories"]},
    }
    return plotting.save_panels(path, panels, "timestep t (log scale; t = 0 at 1)", logx=True, logy=True,
                                title=f"{name}: where the model's samples leave the data range")
