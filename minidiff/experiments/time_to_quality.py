"""Time to quality: how many minutes of training until guided samples are recognisable.

A training run with --snapshot-every keeps its EMA weights at regular steps, each with the
training wall time so far. Every snapshot is scored here (DDIM-50 samples at each guidance
scale, judged by the clean evaluation classifier); the answer is the first training time at
which the best scale reaches the target accuracy. Each row also keeps the samples' fraction of
pixels outside [-1, 1] before any clip (metrics.out_of_range_fraction), so the same run shows
how clean the samples get with training. Scoring time is not training time.
"""

from __future__ import annotations

import json
from pathlib import Path

from minidiff import evaluation, models, plotting
from minidiff.evaluation import Setup
from minidiff.experiments.common import log_row, save_json


def time_to_quality(setup: Setup, run_dir, out_dir, scales=(1.0, 2.0, 3.0), per_label: int = 10,
                    target: float = 0.95, seed: int = 0) -> dict:
    """Accuracy of each snapshot in run_dir/snapshots at each scale, and when target is met.

    Snapshots already scored in out_dir/time_to_quality.json with the same settings are not
    scored again, so the experiment can follow a run that is still training."""
    snapshots = sorted(Path(run_dir, "snapshots").glob("model_*.npz"))
    if not snapshots:
        raise FileNotFoundError(f"no snapshots in {Path(run_dir, 'snapshots')}; train with --snapshot-every")
    result = {"experiment": "time_to_quality", "run_dir": str(run_dir), "per_label": per_label,
              "num_classes": setup.model.config.num_classes, "scales": list(scales), "target": target,
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
            scores = evaluation.score_samples(setup.judge, images, labels)
            row[f"accuracy_w{w:g}"] = scores["accuracy"]
            row[f"outside_w{w:g}"] = scores["pixels_outside_range"]
        result["rows"].append(row)
        log_row(row)
    reached = [r for r in result["rows"] if max(r[f"accuracy_w{w:g}"] for w in scales) >= target]
    if reached:
        first = reached[0]
        best = max(scales, key=lambda w: first[f"accuracy_w{w:g}"])
        result["first_reached"] = {"step": first["step"], "minutes": first["minutes"], "scale": best}
    plot_time_to_quality(result, Path(out_dir) / "time_to_quality.png")
    save_json(out_dir, "time_to_quality", result)
    return result


def _earlier_rows(path: Path, fresh: dict) -> dict:
    """{step: row} of an earlier result at path with the same settings and measures, else {}."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if any(earlier.get(k) != fresh[k] for k in ("run_dir", "per_label", "num_classes", "scales", "target")):
        return {}
    measures = [f"{m}_w{w:g}" for w in fresh["scales"] for m in ("accuracy", "outside")]
    return {r["step"]: r for r in earlier["rows"] if all(m in r for m in measures)}


def plot_time_to_quality(result: dict, path) -> Path:
    """Accuracy against training minutes, one line per guidance scale, from time_to_quality's result."""
    rows, minutes = result["rows"], [r["minutes"] for r in result["rows"]]
    lines = {f"w = {w:g}": (minutes, [r[f"accuracy_w{w:g}"] for r in rows]) for w in result["scales"]}
    return plotting.save_panels(
        path, {"accuracy of DDIM-50 samples": lines}, "training wall time (minutes)",
        ylim=(0, 1.02), target=result["target"],
        title=f"time to quality on {result['device']}\n({result['num_classes'] * result['per_label']} "
              f"samples per point; target {result['target']:.0%})")
