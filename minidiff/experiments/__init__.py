"""Experiments that turn the library into measured results (JSON + PNG under docs/results/).

    python -m minidiff.experiments sampler-table       # DDIM Table 1: classifier FID, S x eta
    python -m minidiff.experiments reconstruction      # DDIM Table 2: encode-decode MSE vs S
    python -m minidiff.experiments guidance            # CFG and classifier guidance sweeps
    python -m minidiff.experiments inversion           # the inversion methods side by side, edits
    python -m minidiff.experiments editing             # the edit controllers side by side (P2P)
    python -m minidiff.experiments prompt-following --ckpt data/checkpoints/mnist_text.npz   # words obeyed?
    python -m minidiff.experiments word-swap --ckpt data/checkpoints/mnist_text.npz          # P2P's edits
    python -m minidiff.experiments time-to-quality --run runs/mnist   # quality vs training time
    python -m minidiff.experiments recipes A=DIR_A/time_to_quality.json B=...   # recipe against recipe
    python -m minidiff.experiments diagnosis           # eps loss per t; x0_pred along trajectories

Each has --help; sample counts are flags, so a GPU run can scale them up. Each takes an
evaluation.Setup (evaluation.load_setup: the model, its schedule, the judge, held-out data).
"""

from minidiff.experiments.diagnosis import diagnosis
from minidiff.experiments.inversion import editing_experiment, inversion_experiment
from minidiff.experiments.prompts import prompt_following, word_swap
from minidiff.experiments.reconstruction import reconstruction_table
from minidiff.experiments.sampling import guidance_sweep, plot_guidance, sampler_table
from minidiff.experiments.time_to_quality import compare_recipes, first_snapshot, time_to_quality

__all__ = ["compare_recipes", "diagnosis", "editing_experiment", "first_snapshot", "guidance_sweep", "inversion_experiment", "plot_guidance", "prompt_following",
           "reconstruction_table", "sampler_table", "time_to_quality", "word_swap"]
