"""Time to quality: how many minutes of training until guided samples are good, recipe by recipe.

A training run with --snapshot-every keeps its EMA weights at regular steps, each with the
training wall time so far. Every snapshot is scored here: DDIM-50 samples at each guidance
scale, judged by the clean evaluation classifier (accuracy), their fraction of pixels outside
[-1, 1] (|x| > 1.05) before any clip (metrics.out_of_range_fraction), and their classifier FID divided by the
real-data floor of as many held-out images (evaluation.unseen_floor; 1 is as close to the data
as real images are). The answer is the first training time at which each scale reaches the
accuracy target and the out-of-range target. Scoring time is not training time.

compare_recipes draws several runs' results in one picture, one curve per recipe, so recipes
that cost different time per step are compared on what they cost: wall-clock minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

from minidiff import evaluation, models, plotting
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json

MEASURES = ("accuracy", "outside", "fid_ratio")
PANELS = ("accuracy (judged)", "pixels outside [-1.05, 1.05]", "classifier FID / real floor")  # one per measure


def time_to_quality(setup: Setup, run_dir, out_dir, scales=(1.0, 2.0, 3.0), per_label: int = 10,
                    target: float = 0.98, outside_target: float = 0.005, seed: int = 0) -> dict:
    """Scores of each snapshot in run_dir/snapshots at each scale, and when the targets are met.

    Snapshots already scored in out_dir/time_to_quality.json with the same settings are not
    scored again, so the experiment can follow a run that is still training."""
    snapshots = _snapshots(run_dir)
    num = per_label * setup.model.config.num_classes
    scored, floor = evaluation.unseen_floor(setup, num)
    result = {"experiment": "time_to_quality", "run_dir": str(run_dir), "per_label": per_label,
              "num_classes": setup.model.config.num_classes, "scales": list(scales), "target": target,
              "outside_target": outside_target,
              "real_floor": {"classifier_fid": floor, "num_real": num,
                             "what": f"the first {num} held-out images against the held-out images after them"},
              "rows": []}
    earlier = _earlier_rows(Path(out_dir) / "time_to_quality.json", result)
    for path in snapshots:
        model, meta = models.load_model(path)
        result.setdefault("device", meta.get("device", "not recorded"))
        if meta["step"] in earlier:
            result["rows"].append(earlier[meta["step"]])
            continue
        row = {"step": meta["step"], "minutes": round(meta["elapsed"] / 60, 2)}
        for w in scales:
            images, labels, _ = evaluation.draw_samples(model, setup.schedule, per_label, seed=seed,
                                                        guidance_scale=w)
            scores = evaluation.score_samples(scored.judge, images, labels, scored.reference)
            row[f"accuracy_w{w:g}"] = scores["accuracy"]
            row[f"outside_w{w:g}"] = scores["pixels_outside_range"]
            row[f"fid_ratio_w{w:g}"] = scores["classifier_fid"] / floor
        result["rows"].append(row)
        log_row(row)
    result["reached"] = {f"w{w:g}": {
        "accuracy": _first(result["rows"], lambda r: r[f"accuracy_w{w:g}"] >= target),
        "outside": _first(result["rows"], lambda r: r[f"outside_w{w:g}"] <= outside_target)} for w in scales}
    compare_recipes({Path(run_dir).name: result}, Path(out_dir) / "time_to_quality.png")
    save_json(out_dir, "time_to_quality", result)
    return result


def _snapshots(run_dir) -> list[Path]:
    """A run's snapshots/model_<step>.npz in step order; FileNotFoundError if it has none."""
    snapshots = sorted(Path(run_dir, "snapshots").glob("model_*.npz"))
    if not snapshots:
        raise FileNotFoundError(f"no snapshots in {Path(run_dir, 'snapshots')}; train with --snapshot-every")
    return snapshots


def first_snapshot(run_dir) -> Path:
    """The run's earliest snapshot: the model file that tells which data set the run is on."""
    return _snapshots(run_dir)[0]


def _first(rows, met) -> dict | None:
    """{step, minutes} of the first row where met(row) holds, else None (never reached)."""
    return next(({"step": r["step"], "minutes": r["minutes"]} for r in rows if met(r)), None)


def _earlier_rows(path: Path, fresh: dict) -> dict:
    """{step: row} of an earlier result at path with the same settings and measures, else {}."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if any(earlier.get(k) != fresh[k] for k in ("run_dir", "per_label", "num_classes", "scales", "real_floor")):
        return {}
    measures = [f"{m}_w{w:g}" for w in fresh["scales"] for m in MEASURES]
    return {r["step"]: r for r in earlier["rows"] if all(m in r for m in measures)}


def compare_recipes(results: dict, path, scale: float | None = None) -> Path:
    """One picture of {recipe name: time_to_quality result}: accuracy, pixels outside the range and
    classifier FID over the real floor against training minutes, with the targets. One
    curve per recipe at one guidance scale (default: each result's largest); a single result
    without a scale given draws every scale it was scored at."""
    panels = {panel: {} for panel in PANELS}
    for name, result in results.items():
        drawn = [scale] if scale is not None else result["scales"] if len(results) == 1 else [max(result["scales"])]
        minutes = [r["minutes"] for r in result["rows"]]
        for w in drawn:
            if w not in result["scales"]:
                raise ValueError(f"recipe {name!r} was scored at w = {result['scales']}, not at w = {w:g}")
            label = f"{name} (w = {w:g})" if len(results) > 1 else f"w = {w:g}"
            for panel, measure in zip(panels, MEASURES):
                panels[panel][label] = (minutes, [r[f"{measure}_w{w:g}"] for r in result["rows"]])
    first = next(iter(results.values()))
    devices = sorted({r.get("device", "not recorded") for r in results.values()})
    # No target line on the FID ratio: a release's "at most 1.5x the floor" is a 500-sample measure
    # (minidiff eval), and at the few samples per snapshot both FIDs are biased up, the ratio towards 1.
    targets = dict(zip(PANELS[:2], (first["target"], first["outside_target"])))
    return plotting.save_panels(
        path, panels, "training wall time (minutes)", logy={PANELS[1]: True}, ylim={PANELS[0]: (0, 1.02)},
        target=targets,
        title=f"time to quality on {', '.join(devices)}\n({first['num_classes'] * first['per_label']} DDIM-50 "
              f"samples per point, eta = 0)")
