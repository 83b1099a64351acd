"""Experiments that turn the library into measured results (JSON + PNG under docs/results/).

    python -m minidiff.experiments inversion --num 100     # DDIM vs null-class inversion, edits
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from minidiff import classifier, data, metrics, pipeline, plotting


def inversion_experiment(num: int = 100, guidance=(1.0, 3.0, 7.5), steps: int = 50,
                         keep_source_steps: int = 5, batch: int = 50, data_dir=None,
                         out_dir=Path("docs/results")) -> dict:
    """Reconstruction PSNR of plain DDIM vs null-class inversion on held-out MNIST digits at
    several guidance scales, and label-swap edits (label -> label + 1 mod 10) scored by the
    eval classifier and by PSNR to the source, against random samples of the target class."""
    model, meta = pipeline.load_model()
    s = pipeline.schedule_of(meta)
    judge, _ = pipeline.load_model(pipeline.CHECKPOINT_DIR / "mnist_classifier.npz", kind="classifier")
    _, (images, labels) = data.load_train_and_heldout("mnist", data_dir)
    x0, labels = data.to_model_range(images[:num]), labels[:num]
    targets = (labels + 1) % model.config.num_classes
    result = {"num_images": int(num), "steps": steps, "rows": []}
    for w in guidance:
        for method in ("ddim", "null"):
            start, outs = time.perf_counter(), []
            for i in range(0, num, batch):
                sl = slice(i, i + batch)
                outs.append(pipeline.invert_and_edit(
                    model, s, x0[sl], labels[sl], method=method, guidance_scale=w, steps=steps,
                    targets=targets[sl], keep_source_steps=keep_source_steps))
            seconds = time.perf_counter() - start
            out = {k: np.concatenate([o[k] for o in outs], axis=-2 if k == "inner_steps" else 0) for k in outs[0]}
            psnr = metrics.psnr(x0, out["reconstructions"])
            row = {"guidance": w, "method": method, "psnr_mean": float(psnr.mean()),
                   "psnr_min": float(psnr.min()), "seconds_per_image": seconds / num,
                   "edit_accuracy": metrics.accuracy(classifier.predict(judge, out["edits"])[0], targets),
                   "edit_psnr_to_source": float(metrics.psnr(x0, out["edits"]).mean())}
            if method == "null":
                row["inner_steps_mean"] = float(out["inner_steps"].mean())
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            if w == max(guidance) and method == "null":
                plotting.save_grid(out_dir / "inversion_null_w7.5.png",
                                   np.concatenate([x0[:10], out["reconstructions"][:10], out["edits"][:10]]),
                                   10, row_labels=["source", "recon.", "edit +1"])
    # Random samples of the target classes: how close would an unrelated image of the class be?
    randoms = np.concatenate([np.asarray(pipeline.generate(model, s, targets[i:i + batch], jax.random.PRNGKey(i),
                                                           guidance_scale=max(guidance)))
                              for i in range(0, num, batch)])
    result["random_target_samples_psnr_to_source"] = float(metrics.psnr(x0, randoms).mean())
    result["random_target_samples_accuracy"] = metrics.accuracy(classifier.predict(judge, randoms)[0], targets)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inversion.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minidiff.experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", required=True)
    p = sub.add_parser("inversion", help="DDIM vs null-class inversion and label-swap edits")
    p.add_argument("--num", type=int, default=100, help="held-out digits")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    result = inversion_experiment(num=args.num, steps=args.steps, data_dir=args.data_dir, out_dir=args.out_dir)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
