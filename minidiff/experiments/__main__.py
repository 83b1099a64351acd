"""python -m minidiff.experiments EXPERIMENT [options]: see minidiff/experiments/__init__.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minidiff import arguments, checkpoint, evaluation, experiments, models, pipeline
from minidiff.arguments import count, finite_float, finite_floats, steps_list
from minidiff.experiments.common import RESULTS_DIR
from minidiff.experiments.prompts import TEXT_EDIT_DEFAULT, TEXT_EDIT_SWEEP
from minidiff.files import check_output_folder, check_output_path

HELD_OUT = ("reconstruction", "inversion", "editing", "word-swap", "diagnosis")  # --num counts held-out images


def chosen(sweep: dict, names) -> dict:
    """The controllers of sweep named in names (all for None); an unknown name is refused."""
    unknown = set(names or ()) - set(sweep)
    if unknown:
        raise ValueError(f"unknown controller(s) {sorted(unknown)}; choose from {list(sweep)}")
    return {k: v for k, v in sweep.items() if names is None or k in names}


def recipe_result(text: str) -> tuple[str, Path]:
    """'NAME=PATH' -> (NAME, PATH): one recipe of `recipes`."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH to a time_to_quality.json, got {text!r}")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minidiff.experiments",
                                     description="Measured results as JSON + PNG (default folder docs/results).")
    sub = parser.add_subparsers(dest="experiment", required=True)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--ckpt", type=Path, default=None, help="U-Net model file (default: released MNIST)")
        p.add_argument("--judge", type=Path, default=None, help="clean evaluation classifier "
                       "(default data/checkpoints/DATASET_classifier.npz)")
        p.add_argument("--data-dir", type=Path, default=None)
        p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
        return p

    p = add("sampler-table", "DDIM Table 1 analogue: classifier FID over steps x eta, plus sigma-hat")
    p.add_argument("--per-label", type=count, default=50, help="samples per class for each configuration")
    p.add_argument("--steps", type=steps_list, default=(10, 20, 50, 100), help="comma-separated step counts")
    p.add_argument("--etas", type=arguments.probabilities, default=(0.0, 0.2, 0.5, 1.0))
    p.add_argument("--guidance", type=finite_float, default=1.0, help="CFG scale of the samples (1: conditional)")
    p.add_argument("--seeds", type=count, default=1, help="seeds per cell (means and the FID's spread over them)")
    p.add_argument("--no-sigma-hat", action="store_true", help="leave out the sigma-hat row (DDPM, variance beta)")
    p = add("reconstruction", "DDIM Table 2 analogue: encode-decode MSE of held-out images vs steps")
    p.add_argument("--num", type=count, default=64, help="held-out images")
    p.add_argument("--steps", type=steps_list, default=(10, 20, 50, 100, 1000))
    p.add_argument("--fixed-point-iterations", type=arguments.iterations_list, default=(0,),
                   help="comma-separated; one set of rows for each (0: plain DDIM inversion), e.g. 0,5")
    p = add("guidance", "CFG sweep and classifier-guidance sweep: accuracy, classifier FID, diversity")
    p.add_argument("--per-label", type=count, default=30)
    p.add_argument("--cfg-scales", type=finite_floats, default=(0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0))
    p.add_argument("--classifier-scales", type=finite_floats, default=(0.0, 1.0, 2.0, 5.0, 10.0, 20.0))
    p.add_argument("--classifier", type=Path, default=None,
                   help="noised classifier (default data/checkpoints/DATASET_classifier_noisy.npz)")
    p = add("inversion", "the inversion methods side by side on held-out images: PSNR, seconds, edits")
    p.add_argument("--num", type=count, default=100, help="held-out images")
    p.add_argument("--steps", type=arguments.steps, default=50)
    p.add_argument("--guidance", type=finite_floats, default=(1.0, 3.0, 7.5))
    p.add_argument("--methods", type=lambda t: tuple(t.split(",")), default=None,
                   help="comma-separated, default all of minidiff.inversion.METHODS")
    p.add_argument("--batch", type=count, default=50)
    p = add("editing", "the edit controllers side by side (label switch, P2P attention, feature injection)")
    p.add_argument("--num", type=count, default=100, help="held-out images")
    p.add_argument("--steps", type=arguments.steps, default=50)
    p.add_argument("--guidance", type=finite_floats, default=(3.0, 7.5))
    p.add_argument("--method", default="null", help="inversion method (default null)")
    p.add_argument("--batch", type=count, default=50)
    p.add_argument("--controllers", type=lambda t: tuple(t.split(";")), default=None,
                   help="semicolon-separated names of pipeline.EDIT_SWEEP to run (default all)")
    p = add("prompt-following", "caption model: digit accuracy and style words in their terciles, per prompt")
    p.add_argument("--num", type=count, default=500, help="samples, the digits in turn under the nine style combinations")
    p.add_argument("--guidance", type=finite_float, default=3.0)
    p.add_argument("--steps", type=arguments.steps, default=50)
    p = add("word-swap", "caption model: null-text inversion, the digit word swapped under each P2P controller, "
                         "and the thickness word reweighted")
    p.add_argument("--num", type=count, default=100, help="held-out images")
    p.add_argument("--guidance", type=finite_float, default=pipeline.EDIT_GUIDANCE["text"],
                   help="w of the inversion and the edits (default: edit's on a caption model)")
    p.add_argument("--steps", type=arguments.steps, default=50)
    p.add_argument("--batch", type=count, default=50)
    p.add_argument("--factors", type=finite_floats, default=(0.5, 1.0, 2.0, 4.0), help="reweight factors")
    p.add_argument("--no-reweight", action="store_true", help="only the word swaps")
    p.add_argument("--controllers", type=lambda t: tuple(t.split(";")), default=None,
                   help="semicolon-separated names of experiments.prompts.TEXT_EDIT_SWEEP (default: the seven of TEXT_EDIT_DEFAULT, the released model's table)")
    p = add("time-to-quality", "accuracy, pixels outside [-1, 1] and classifier FID over the real floor of a "
                               "run's snapshots against its training wall time")
    p.add_argument("--run", type=Path, required=True, help="run directory trained with --snapshot-every "
                   "(its snapshots set the data set, the judge and the schedule; --ckpt is not needed)")
    p.add_argument("--per-label", type=count, default=10)
    p.add_argument("--scales", type=finite_floats, default=(1.0, 2.0, 3.0))
    recipes_help = "several runs' time-to-quality results in one picture, one curve per recipe"
    p = sub.add_parser("recipes", help=recipes_help, description=recipes_help)
    p.add_argument("results", nargs="+", type=recipe_result, metavar="NAME=JSON",
                   help="a recipe's name and its time-to-quality result, e.g. min-snr-5=DIR/time_to_quality.json")
    p.add_argument("--scale", type=finite_float, default=None,
                   help="the guidance scale drawn (default: each result's largest)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "recipes.png", help="the picture (PNG)")
    p = add("diagnosis", "eps loss per timestep (training vs held-out digits) and x0_pred along DDIM trajectories")
    p.add_argument("--guidance", type=finite_floats, default=(1.0, 3.0), help="CFG scales of the trajectories")
    p.add_argument("--num", type=count, default=1000, help="training and held-out images for the loss")
    p.add_argument("--per-label", type=count, default=20, help="trajectories per class")
    p.add_argument("--name", type=arguments.file_name, default="diagnosis", help="output file name (NAME.json, NAME.png)")
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        arguments.exit_interrupted("minidiff.experiments", "nothing was written")
    prog = f"minidiff.experiments {args.experiment}"
    status = arguments.run_command(prog, lambda: run(args))
    if status == 0:
        print(f"results written to {getattr(args, 'out_dir', None) or args.out}")
    return status


def run(args) -> None:
    """The experiment args names, its flags checked first (the bounds that need the model here)."""
    if args.experiment == "recipes":
        return recipes(args)
    out = check_output_folder(args.out_dir, what="--out-dir")
    if args.experiment == "diagnosis":  # the one output named by a flag; every write refuses a model file too
        for suffix in (".json", ".png"):
            check_output_path(out / f"{args.name}{suffix}", what="--name", inputs=arguments.inputs_of(args))
    ckpt = args.ckpt
    if args.experiment == "time-to-quality" and ckpt is None:  # the run's data set, judge and schedule
        ckpt = experiments.first_snapshot(args.run)
    setup = evaluation.load_setup(ckpt, args.judge, args.data_dir)
    if args.experiment in HELD_OUT and args.num > len(setup.heldout):
        raise ValueError(f"--num {args.num} is more than the {len(setup.heldout)} held-out images")
    arguments.check_steps(getattr(args, "steps", None), setup.schedule)
    cfg = setup.model.config
    if hasattr(args, "per_label"):
        arguments.check_sample_count(cfg.num_classes, args.per_label, (cfg.image_size, cfg.image_size, cfg.in_channels),
                                     "--per-label", picture=False)
    if args.experiment == "sampler-table":
        experiments.sampler_table(setup, out, per_label=args.per_label, steps=args.steps, etas=args.etas,
                                  guidance=args.guidance, seeds=args.seeds, sigma_hat=not args.no_sigma_hat)
    elif args.experiment == "reconstruction":
        experiments.reconstruction_table(setup, out, num=args.num, steps=args.steps,
                                         fixed_point_iterations=args.fixed_point_iterations)
    elif args.experiment == "guidance":
        noisy, _ = models.load_model(
            args.classifier or models.CHECKPOINT_DIR / f"{setup.dataset}_classifier_noisy.npz", kind="classifier")
        cfg = experiments.guidance_sweep(setup, out, args.cfg_scales, per_label=args.per_label)
        clf = experiments.guidance_sweep(setup, out, args.classifier_scales, per_label=args.per_label,
                                         classifier=noisy)
        experiments.plot_guidance(out, [cfg, clf])
    elif args.experiment == "inversion":
        experiments.inversion_experiment(setup, out, num=args.num, guidance=args.guidance, steps=args.steps,
                                         methods=args.methods, batch=args.batch)
    elif args.experiment == "editing":
        experiments.editing_experiment(setup, out, chosen(pipeline.EDIT_SWEEP, args.controllers), num=args.num, guidance=args.guidance,
                                       method=args.method, steps=args.steps, batch=args.batch)
    elif args.experiment in ("prompt-following", "word-swap"):
        terciles = models.captions_of(checkpoint.read_metadata(args.ckpt or models.DEFAULT_CHECKPOINT), args.ckpt)
        if args.experiment == "prompt-following":
            experiments.prompt_following(setup, terciles, out, num=args.num, guidance=args.guidance,
                                         steps=args.steps)
        else:
            experiments.word_swap(setup, terciles, out, num=args.num, guidance=args.guidance, steps=args.steps,
                                  batch=args.batch, controls=chosen(TEXT_EDIT_SWEEP, args.controllers or TEXT_EDIT_DEFAULT),
                                  reweight_factors=() if args.no_reweight else args.factors)
    elif args.experiment == "diagnosis":
        experiments.diagnosis(setup, out, guidance=args.guidance, num=args.num, per_label=args.per_label,
                              name=args.name)
    else:
        experiments.time_to_quality(setup, args.run, out, scales=args.scales, per_label=args.per_label)


def recipes(args) -> None:
    """`recipes`: read each NAME=JSON, refuse what is not a time-to-quality result, draw them."""
    out = check_output_path(args.out, suffixes=(".png",), what="--out")
    if len({name for name, _ in args.results}) < len(args.results):
        raise ValueError("each recipe needs its own NAME")
    results = {}
    for name, path in args.results:
        try:
            result = json.loads(Path(path).read_text())  # a missing file: FileNotFoundError names it
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a JSON file ({err})") from None
        if result.get("experiment") != "time_to_quality" or "real_floor" not in result:
            raise ValueError(f"{path} is not a time-to-quality result with the classifier FID "
                             "(python -m minidiff.experiments time-to-quality writes one)")
        results[name] = result
    experiments.compare_recipes(results, out, args.scale)
    for name, result in results.items():
        print(f"{name}: reached {json.dumps(result['reached'])}")


if __name__ == "__main__":
    sys.exit(main())
