"""The course's calibrated sample scores: one sample count, one reference, a real-vs-real floor.

    python -m minidiff.experiments.calibrated [--per-label 20] [--out-dir docs/results/calibrated]

Every classifier FID here is of per_label * 10 samples against the held-out digits from that
count on (evaluation.unseen_floor), and the file records the floor: as many real held-out
digits, which neither the model nor the judge trained on, against the same reference. Notebooks
03 and 04 read the result. The pieces run cheapest first and the file is rewritten after each,
so a stopped run leaves what it finished: the DDIM table for eta 0 and 1 over three seeds, the
guidance sweeps (CFG, classifier guidance), the eta 0.2 / 0.5 / sigma-hat rows (one seed), and
the S = 1000 baseline (one seed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from minidiff import evaluation, models
from minidiff.experiments.common import RESULTS_DIR, save_json
from minidiff.experiments.sampling import guidance_sweep, sampler_table

PIECES = {  # name: what sampler_table or guidance_sweep runs
    "table": dict(steps=(10, 20, 50, 100), etas=(0.0, 1.0), sigma_hat=False, seeds=3),
    "cfg": dict(scales=(0.0, 1.0, 2.0, 3.0, 7.5)),
    "classifier_guidance": dict(scales=(1.0, 2.0, 5.0, 10.0)),  # scale 0 is CFG w = 0: the unconditional model
    "table_etas": dict(steps=(10, 20, 50, 100), etas=(0.2, 0.5), sigma_hat=True, seeds=1),
    "table_1000": dict(steps=(1000,), etas=(0.0, 1.0), sigma_hat=False, seeds=1),
}


def calibrated(setup: evaluation.Setup, out_dir, per_label: int = 20, pieces=tuple(PIECES)) -> dict:
    """Run the pieces at per_label samples per class against one reference; returns the result."""
    num = per_label * setup.model.config.num_classes
    scored, floor = evaluation.unseen_floor(setup, num)
    result = {"experiment": "calibrated", "per_label": per_label, "num_samples": num,
              "reference_images": len(setup.heldout) - num,
              "real_floor": {"classifier_fid": floor, "num_real": num,
                             "what": f"the first {num} held-out digits against the held-out digits after them"}}
    noisy, _ = models.load_model(models.CHECKPOINT_DIR / f"{setup.dataset}_classifier_noisy.npz", kind="classifier")
    for name in pieces:
        with tempfile.TemporaryDirectory() as scratch:  # the pieces' own pictures: not kept
            if name.startswith("table"):
                piece = sampler_table(scored, Path(scratch), per_label=per_label, guidance=1.0, **PIECES[name])
            else:
                piece = guidance_sweep(scored, Path(scratch), PIECES[name]["scales"], per_label=per_label,
                                       classifier=noisy if name == "classifier_guidance" else None)
        result[name] = piece["rows"]
        save_json(out_dir, "calibrated", result)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidiff.experiments.calibrated", description=__doc__.split("\n")[0])
    parser.add_argument("--per-label", type=int, default=20, help="samples per class in every configuration")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR / "calibrated")
    parser.add_argument("--pieces", default=",".join(PIECES), help=f"comma-separated, of {list(PIECES)}")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    calibrated(evaluation.load_setup(), args.out_dir, args.per_label, tuple(args.pieces.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
