"""Command line: minidiff {train,sample,eval,train-classifier,bench,invert,edit} ... (each with --help).

Also runs as `python -m minidiff`. The CLI only maps flags to config fields and calls library
functions; the choices it offers are the library's own (SCHEDULES, SPACINGS, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial
from pathlib import Path

import numpy as np

from minidiff import arguments, captions, data
from minidiff.arguments import check_labels
from minidiff.files import atomic_write, check_output_folder, check_output_path, is_model_file, json_ready, write_json

# TrainConfig fields that are flags, with the type that validates each
TRAIN_FLAGS = {"steps": arguments.positive_int, "batch_size": arguments.positive_int,
               "lr": arguments.positive_float, "warmup_steps": arguments.nonnegative_int,
               "weight_decay": arguments.nonnegative_float, "grad_clip": arguments.positive_float,
               "ema_decay": arguments.below_one, "p_uncond": arguments.probability,
               "p_drop_word": arguments.probability, "seed": arguments.seed,
               "log_every": arguments.positive_int, "ckpt_every": arguments.positive_int,
               "sample_every": arguments.nonnegative_int, "snapshot_every": arguments.nonnegative_int}


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a class-conditional U-Net with the DDPM objective",
                       description="Train a class-conditional U-Net (DDPM loss, EMA, label dropout "
                       "for classifier-free guidance). Resumes from RUN_DIR/ckpt.npz if present.")
    p.add_argument("--dataset", choices=data.DATASETS, default="mnist")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/DATASET)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the dataset files "
                   "(else $MINIDIFF_DATA_DIR, the cache, then download)")
    p.add_argument("--channels", type=arguments.channels, default=None,
                   help="U-Net widths per level, e.g. 32,64,128 (default: the dataset's preset)")
    from minidiff import schedules, train
    from minidiff.unet import PREDICTIONS
    p.add_argument("--prediction", choices=PREDICTIONS, default=None,
                   help="what the U-Net outputs and its loss: eps (DDPM's L_simple) or v (Salimans & Ho "
                        "2022); samplers see eps either way (default: the dataset's preset)")
    defaults = train.TrainConfig()
    for name, kind in TRAIN_FLAGS.items():
        value = getattr(defaults, name)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=value,
                       help=f"{kind.__name__} (default {value})")
    p.add_argument("--snr-gamma", type=arguments.nonnegative_float, default=defaults.snr_gamma, metavar="GAMMA",
                   help="Min-SNR-gamma loss weighting (Hang et al. 2023): each step's x_0 error weighted by "
                        "min(SNR(t), GAMMA), for eps and v models alike; 5 is the usual value; 0 keeps the "
                        "prediction's own loss (default %(default)s)")
    p.add_argument("--ema-warmup", choices=train.EMA_WARMUPS, default=defaults.ema_warmup,
                   help="how the EMA decay rises to --ema-decay at step k: ramp (1+k)/(10+k), power "
                        "1-(1+k)^(-3/4) (diffusers' use_ema_warmup), or none (default %(default)s)")
    p.add_argument("--lr-schedule", choices=train.LR_SCHEDULES, default=defaults.lr_schedule,
                   help="after warm-up: cosine decay to 0 at --steps, or constant "
                   f"(default {defaults.lr_schedule})")
    p.add_argument("--schedule", choices=schedules.SCHEDULES, default=defaults.schedule,
                   help="noise schedule (default %(default)s)")
    p.add_argument("--conditioning", choices=("label", "text"), default="label",
                   help="label: a class-conditional U-Net; text: a caption model (MNIST only), whose "
                        "prompts ('bold right-leaning seven') are computed from each digit's handwriting "
                        "and read through cross-attention (default %(default)s)")
    p.add_argument("--cross-attention-levels", type=arguments.resolution_levels, default=None, metavar="L,L",
                   help="a caption model's resolution levels with cross-attention after every ResBlock, "
                        "0 = full resolution (28x28), 1 = 14x14, 2 = 7x7; the middle always has one "
                        "(default: the preset's 1,2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    many = p.add_argument_group("many processes (JAX's multi-controller runtime; README, \"On many machines\")")
    many.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                      help="process 0's address, the same in every process (or $JAX_COORDINATOR_ADDRESS)")
    many.add_argument("--num-processes", type=arguments.positive_int, default=None, metavar="P",
                      help="how many processes train together")
    many.add_argument("--process-id", type=arguments.nonnegative_int, default=None, metavar="I",
                      help="this process, 0..P-1; process 0 alone writes the run directory")
    many.add_argument("--distributed", action="store_true",
                      help="leave the three above to JAX's cluster detection (SLURM, TPU pods, Open MPI)")


def run_train(args) -> None:
    from minidiff import distributed, train
    from minidiff.unet import UNetConfig

    if distributed.requested(args.coordinator_address, args.num_processes, args.process_id, args.distributed):
        who = "" if None in (args.process_id, args.num_processes) else f" (process {args.process_id} of {args.num_processes})"
        print(f"joining the other processes{who} through the coordinator {args.coordinator_address or 'JAX finds'}; "
              f"waiting up to {distributed.INITIALIZATION_TIMEOUT} s for all of them", flush=True)
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    cfg = train.TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.conditioning == "text" and args.dataset != "mnist":
        raise ValueError(f"--conditioning text needs --dataset mnist (its captions describe handwritten "
                         f"digits), got {args.dataset}")
    run_dir = args.out or Path("runs") / args.dataset
    if distributed.is_main():  # the others never write into the run directory, not even a test write
        check_output_folder(run_dir, what="--out")  # before the data
    if (run_dir / "model.npz").exists() and not (run_dir / "ckpt.npz").exists():
        raise ValueError(f"--out {run_dir} holds a model.npz but no ckpt.npz to resume from: training would "
                         "overwrite a model it did not make; give another run directory")
    unet_cfg = UNetConfig.cifar() if args.dataset == "cifar10" else UNetConfig.mnist()
    if args.conditioning == "text":
        unet_cfg = UNetConfig.mnist_text()
    if args.channels:  # a caption model keeps the preset's cross-attention levels that these widths have
        levels = tuple(l for l in unet_cfg.cross_attention_levels if l < len(args.channels))
        unet_cfg = dataclasses.replace(unet_cfg, channels=args.channels, cross_attention_levels=levels)
    if args.cross_attention_levels is not None:
        if args.conditioning != "text":
            raise ValueError("--cross-attention-levels needs --conditioning text (a label model has no "
                             "cross-attention)")
        unet_cfg = dataclasses.replace(unet_cfg, cross_attention_levels=args.cross_attention_levels)
    if args.prediction:
        unet_cfg = dataclasses.replace(unet_cfg, prediction=args.prediction)
    (images, labels), _ = data.load_train_and_heldout(args.dataset, args.data_dir)
    arguments.check_batch_size(args.batch_size, len(images))
    trainer = train.Trainer(unet_cfg, cfg, run_dir, images, labels)
    print(f"{train.describe(unet_cfg)}; {len(images)} training images; run dir {run_dir} "
          f"(starting at step {trainer.step})")
    records = trainer.run(progress=not args.no_progress)
    if records and trainer.writes:
        r = records[-1]
        print(f"done: step {r['step']}, loss {r['loss']:.4f}, {r['elapsed'] / 60:.1f} min of training; "
              f"weights in {run_dir / 'model.npz'}")


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw class-conditional samples from a trained model",
                       description="Sample with DDIM or DDPM and classifier-free guidance. "
                       "Without --ckpt, uses the released MNIST model.")
    p.add_argument("--ckpt", type=Path, default=None, help="model file (default: data/checkpoints/mnist.npz)")
    add_sampling_arguments(p)
    p.add_argument("--labels", type=arguments.labels, default=None, help="e.g. 0..9 or 1,4,7 (default all classes; "
                   "on a caption model, the digit words alone)")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="caption model: a prompt such as 'bold right-leaning seven' (repeat for more rows; "
                        "replaces --labels)")
    p.add_argument("--per-label", type=arguments.count, default=10,
                   help="samples per label or prompt (one grid row each)")
    p.add_argument("--batch-size", type=arguments.count, default=250,
                   help="samples drawn at once (memory; default %(default)s)")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help=".png for a picture grid; .npz for arrays: images (clipped to [-1, 1], as the "
                        "picture shows them), raw (the sampler's final values, unclipped) and labels")


def add_sampling_arguments(p) -> None:
    """Sampler and guidance options shared by `sample` and `eval`."""
    from minidiff import pipeline, samplers

    p.add_argument("--sampler", choices=pipeline.SAMPLERS, default="ddim")
    p.add_argument("--steps", type=arguments.steps, default=None,
                   help="sampling steps (default: DDIM 50, DDPM all T)")
    p.add_argument("--eta", type=arguments.probability, default=0.0,
                   help="DDIM eta: 0 deterministic, 1 DDPM-like")
    p.add_argument("--variance", choices=samplers.DDPM_VARIANCES, default="beta_tilde",
                   help="DDPM step variance; 'beta' with --steps is the DDIM paper's sigma-hat sampler")
    p.add_argument("--spacing", choices=samplers.SPACINGS, default="leading")
    p.add_argument("--clip-x0", action="store_true", help="clip predicted x0 to [-1, 1] at each step")
    p.add_argument("--dynamic-threshold", type=arguments.below_one, default=0.0, metavar="P",
                   help="Imagen's dynamic thresholding of predicted x0 at percentile P, e.g. 0.995 "
                        "(default 0: off)")
    p.add_argument("--guidance", type=arguments.finite_float, default=3.0,
                   help="CFG scale w (1: conditional, 0: unconditional); with --classifier, the "
                        "classifier-guidance scale on the unconditional model")
    p.add_argument("--classifier", type=Path, default=None,
                   help="noised classifier file: use classifier guidance instead of CFG")


def sampling_kwargs(args, dataset: str | None) -> dict:
    """generate() keyword arguments from the options of add_sampling_arguments, for a model of
    `dataset` (a --classifier trained on another data set is refused)."""
    from minidiff import models

    clf = None
    if args.classifier is not None:
        clf, clf_meta = models.load_model(args.classifier, kind="classifier")
        models.check_same_dataset(dataset, clf_meta, args.classifier, "--classifier")
    return {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "variance": args.variance,
            "clip_x0": args.clip_x0, "dynamic_threshold": args.dynamic_threshold,
            "guidance_scale": args.guidance, "spacing": args.spacing, "classifier": clf}


def sampling_title(args) -> str:
    """A short description such as 'DDIM-50, eta=0.0, CFG w=3.0' for plot titles."""
    steps = args.steps or (50 if args.sampler == "ddim" else "all")
    name = f"{args.sampler.upper()}-{steps}" + (f", eta={args.eta}" if args.sampler == "ddim" else "")
    if args.sampler == "ddpm" and args.variance == "beta":
        name += " (sigma-hat)"
    if args.clip_x0:
        name += ", x0 clipped"
    if args.dynamic_threshold:
        name += f", dynamic threshold {args.dynamic_threshold:g}"
    return name + (f", classifier scale {args.guidance}" if args.classifier else f", CFG w={args.guidance}")


def run_sample(args) -> None:
    import jax

    from minidiff import models, pipeline, plotting

    check_output_path(args.out, suffixes=(".png", ".npz"), what="--out", inputs=arguments.inputs_of(args))
    model, meta = models.load_model(args.ckpt)
    num_classes = model.config.num_classes
    wanted = list(range(num_classes)) if args.labels is None else args.labels
    if args.prompt is not None:
        if model.config.conditioning != "text":
            raise ValueError(f"--prompt needs a caption model; {args.ckpt or models.DEFAULT_CHECKPOINT} is "
                             "label-conditioned (use --labels)")
        if args.labels is not None:
            raise ValueError("give --prompt or --labels, not both")
        wanted = args.prompt
    else:
        wanted = check_labels(wanted, num_classes, "--labels" if args.labels is not None else "label(s)")
    cfg = model.config
    arguments.check_sample_count(len(wanted), args.per_label, (cfg.image_size, cfg.image_size, cfg.in_channels),
                                 "--per-label", picture=args.out.suffix == ".png")
    if args.prompt is not None:
        labels = np.repeat(captions.tokenize_all(wanted, cfg.text_length), args.per_label, axis=0)
    else:
        labels = np.repeat(np.asarray(wanted, np.int32), args.per_label)
    kwargs = sampling_kwargs(args, models.dataset_of(meta))
    s, key, batches = models.schedule_of(meta), jax.random.PRNGKey(args.seed), []
    arguments.check_steps(args.steps, s)
    for i, start in enumerate(range(0, len(labels), args.batch_size)):
        batch_key = key if i == 0 else jax.random.fold_in(key, i)  # batch 0: the seed's own key
        batches.append(pipeline.generate(model, s, labels[start:start + args.batch_size], batch_key, **kwargs))
    raw = np.concatenate(batches)  # (N, H, W, C), the sampler's final values
    images = np.clip(raw, -1.0, 1.0)  # what every picture shows
    if args.out.suffix == ".npz":
        with atomic_write(args.out) as f:
            np.savez(f, images=images, raw=raw, labels=labels)
    else:
        names = data.CLASS_NAMES.get(models.dataset_of(meta), range(num_classes))
        rows = wanted if args.prompt is not None else [names[v] for v in wanted]
        plotting.save_grid(args.out, images, args.per_label, row_labels=[f'"{r}"' if args.prompt else r for r in rows],
                           title=sampling_title(args))
    print(f"wrote {len(labels)} samples to {args.out}")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a model's samples with the evaluation classifier",
                       description="Draw --per-label samples of every class and report, as JSON, how "
                       "often the clean evaluation classifier agrees with the label, the classifier "
                       "FID against the held-out real images (NOT comparable to Inception FID), "
                       "the within-class feature diversity, the fraction of pixels outside [-1, 1] "
                       "(|x| > 1.05, before any clip) and the background noise (mean |x + 1| of the clipped "
                       "image farther than 3 pixels from any stroke); under real_digits, the same for "
                       "real images and the classifier FID of as many real training images.")
    p.add_argument("--ckpt", type=Path, default=None, help="U-Net model file (default: released MNIST)")
    p.add_argument("--judge", type=Path, default=None,
                   help="clean evaluation classifier (default data/checkpoints/DATASET_classifier.npz)")
    add_sampling_arguments(p)
    p.add_argument("--per-label", type=arguments.count, default=20,
                   help="samples per class (diversity needs 2; with 1 it is reported as null)")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the data set (FID reference)")
    p.add_argument("--grid", type=Path, default=None, help="also save the samples as a PNG grid")
    p.add_argument("--out", type=Path, default=None, help="also write the result to this .json file")


def run_eval(args) -> None:
    import json

    from minidiff import evaluation, models, plotting

    for path, suffix, flag in ((args.out, ".json", "--out"), (args.grid, ".png", "--grid")):
        if path is not None:
            check_output_path(path, suffixes=(suffix,), what=flag, inputs=arguments.inputs_of(args))
    setup = evaluation.load_setup(args.ckpt, args.judge, args.data_dir)
    cfg = setup.model.config
    arguments.check_sample_count(cfg.num_classes, args.per_label, (cfg.image_size, cfg.image_size, cfg.in_channels),
                                 "--per-label", picture=args.grid is not None)
    arguments.check_steps(args.steps, setup.schedule)
    images, labels, seconds = evaluation.draw_samples(setup.model, setup.schedule, args.per_label, seed=args.seed,
                                                      progress=True, **sampling_kwargs(args, setup.dataset))
    result = evaluation.score_samples(setup.judge, images, labels, setup.reference)
    result["real_digits"] = evaluation.real_data_scores(setup, len(images))  # the floor, beside each
    result.update(sampler=sampling_title(args), sampling_seconds=round(seconds, 1),
                  checkpoint=str(args.ckpt or models.DEFAULT_CHECKPOINT),
                  judge=str(args.judge or evaluation.judge_path(setup.dataset)))
    if args.grid:
        names = data.CLASS_NAMES.get(setup.dataset, range(setup.model.config.num_classes))
        plotting.save_grid(args.grid, images, args.per_label, row_labels=list(names),
                           title=f"{sampling_title(args)}: accuracy {result['accuracy']:.1%}")
    if args.out:
        write_json(args.out, result)
    print(json.dumps(json_ready(result), indent=2, allow_nan=False))


def add_classifier_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a clean evaluation or a noisy guidance classifier",
                       description="Train the clean evaluation classifier, or with --noised the "
                       "time-conditioned classifier p(y | x_t, t) used for classifier guidance. "
                       "Reports held-out accuracy and stores it in the model file.")
    p.add_argument("--dataset", choices=data.DATASETS, default="mnist")
    p.add_argument("--noised", action="store_true", help="train on q_sample'd images at uniform t")
    p.add_argument("--steps", type=arguments.positive_int, default=2000)
    p.add_argument("--batch-size", type=arguments.positive_int, default=128)
    p.add_argument("--lr", type=arguments.positive_float, default=2e-3)
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="model file (default runs/DATASET_classifier[_noisy].npz; the released "
                        "judges in data/checkpoints/ are only written when named here)")
    p.add_argument("--no-progress", action="store_true")


def run_classifier(args) -> None:
    import time

    from minidiff import checkpoint, classifier, classifier_train, models

    name = f"{args.dataset}_classifier{'_noisy' if args.noised else ''}.npz"
    out = check_output_path(args.out or Path("runs") / name, suffixes=(".npz",), what="--out", writes_models=True)
    if is_model_file(out) and checkpoint.read_metadata(out).get("kind") != "classifier":  # a U-Net, a training state
        raise ValueError(f"--out {out} is a minidiff model file but not a classifier; train-classifier only "
                         "overwrites classifiers: give another name")
    (images, labels), (held_images, held_labels) = data.load_train_and_heldout(args.dataset, args.data_dir)
    arguments.check_batch_size(args.batch_size, len(images))
    h, w, c = images.shape[1:]
    cfg = classifier.ClassifierConfig(image_size=h, in_channels=c, noised=args.noised,
                                      num_classes=data.num_classes(args.dataset))
    start = time.perf_counter()
    model = classifier_train.train_classifier(cfg, data.to_model_range(images), labels, steps=args.steps,
                                        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                        progress=not args.no_progress)
    minutes = (time.perf_counter() - start) / 60
    acc = classifier_train.evaluate(model, data.to_model_range(held_images), held_labels)
    models.save_model(out, model, {"dataset": args.dataset, "steps": args.steps, "heldout_accuracy": acc,
                                     "train_minutes": round(minutes, 2)})
    print(f"{out}: held-out accuracy {acc} ({len(held_labels)} images), trained in {minutes:.1f} min")


def add_inversion_parser(sub, name: str) -> None:
    from minidiff import inversion, pipeline

    editing = name == "edit"
    p = sub.add_parser(name, help=("change the label of real images" if editing else
                                   "invert real images to noise and reconstruct them"),
                       description="Invert real digits (held-out data set images, or a PNG) at a guidance "
                       "scale by one of five methods (plain DDIM, fixed-point DDIM, negative-prompt, null-class, "
                       "direct inversion; minidiff/inversion.py), then "
                       + ("sample them again with another label, the edit branch under Prompt-to-Prompt-style "
                          "control (minidiff/editing.py)." if editing else "reconstruct them."))
    p.add_argument("--ckpt", type=Path, default=None, help="U-Net model file (default: released MNIST)")
    p.add_argument("--image", type=Path, default=None, help="a PNG to invert (any size; made grey for a 1-channel model, kept in colour for a 3-channel one)")
    p.add_argument("--label", type=int, default=None, help="the class of --image")
    p.add_argument("--dataset", choices=data.DATASETS, default=None,
                   help="data set whose held-out images --index selects (default: the model's own)")
    p.add_argument("--index", type=arguments.index, default=slice(0, 8), help="held-out images, e.g. 0:100")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--method", choices=inversion.METHODS, default="null",
                   help="ddim (plain), fixed_point (each inverse step solved by iteration), negative "
                        "(negative-prompt), null (null-class, the default) or direct (the source pinned to the pivot)")
    p.add_argument("--guidance", type=arguments.finite_float, default=None,
                   help=f"CFG scale w (default {pipeline.EDIT_GUIDANCE['label']:g}, on a caption model "
                        f"{pipeline.EDIT_GUIDANCE['text']:g})")
    p.add_argument("--steps", type=arguments.steps, default=50, help="DDIM steps")
    p.add_argument("--inner-steps", type=arguments.inner_steps, default=inversion.INNER_STEPS,
                   help=f"null-class inversion: most Adam steps per sampling step (default {inversion.INNER_STEPS})")
    p.add_argument("--lr", type=arguments.relative_lr, default=inversion.LR,
                   help=f"null-class inversion: Adam step size relative to the null row's RMS (default {inversion.LR})")
    p.add_argument("--fixed-point-iterations", type=arguments.iterations, default=5,
                   help="fixed_point: iterations per inverse step (default 5)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="caption model: the source prompt of every image (default: each digit's own caption, "
                        "computed from its handwriting)")
    if editing:
        c = pipeline.DEFAULT_CONTROL
        p.add_argument("--to", type=int, default=None,
                       help="the new label (on a caption model: the digit word of the source prompt swapped)")
        p.add_argument("--to-prompt", default=None, metavar="TEXT",
                       help="caption model: the prompt to edit to (a word swap, or words added or removed)")
        p.add_argument("--reweight", type=arguments.reweight, action="append", default=None, metavar="WORD=FACTOR",
                       help="caption model: scale one word's cross-attention in the edit, e.g. bold=2 (repeatable)")
        p.add_argument("--renormalise", action="store_true",
                       help="caption model: renormalise each pixel's cross-attention over the tokens after "
                            "--reweight (a shift of the word's logit by log FACTOR; P2P does not renormalise)")
        t = pipeline.TEXT_DEFAULT_CONTROL
        p.add_argument("--cross", type=arguments.probability, default=None,
                       help=f"caption model: fraction of the steps on which the edit takes the source's "
                            f"cross-attention maps (P2P's cross_replace_steps; default {t['cross']}, "
                            f"with --reweight {pipeline.REWEIGHT_CONTROL['cross']})")
        p.add_argument("--attention", type=arguments.probability, default=None,
                       help=f"fraction of the steps on which the edit takes the source's self-attention "
                            f"(Prompt-to-Prompt's self_replace_steps; default {c['attention']}, "
                            f"on a caption model {t['attention']}, with --reweight "
                            f"{pipeline.REWEIGHT_CONTROL['attention']})")
        p.add_argument("--features", type=arguments.probability, default=None,
                       help=f"fraction of the steps on which it takes the source's decoder features "
                            f"(Plug-and-Play; default {c['features']}, on a caption model {t['features']})")
        p.add_argument("--feature-levels", type=arguments.levels, default=None,
                       help="decoder levels whose features are taken, 0 the deepest, e.g. 0,2 "
                            f"(default {','.join(map(str, c['levels'])) or 'none'}: -1 is the full-resolution one; "
                            f"on a caption model {','.join(map(str, t['levels'])) or 'none'})")
        p.add_argument("--source-label", type=arguments.probability, default=None,
                       help=f"fraction of the steps that keep the source label (or prompt) before it switches "
                            f"(default {c['source_label']}, on a caption model {t['source_label']})")
    p.add_argument("--out", type=Path, default=Path(f"{name}.png"),
                   help=".png: source / reconstruction" + (" / edit" if editing else "") +
                   " rows; .npz: the arrays, labels and per-image PSNR")


def _controller(args, model):
    """The edit's controller: the flags given, the model kind's measured defaults for the rest."""
    from minidiff import pipeline

    text = model.config.conditioning == "text"
    defaults = pipeline.REWEIGHT_CONTROL if text and args.reweight else pipeline.TEXT_DEFAULT_CONTROL
    control = dict(defaults if text else pipeline.DEFAULT_CONTROL)
    for flag, key in (("attention", "attention"), ("features", "features"), ("feature_levels", "levels"),
                      ("source_label", "source_label"), ("cross", "cross")):
        if getattr(args, flag) is not None:
            if flag == "cross" and not text:
                raise ValueError("--cross needs a caption model (a label model has no cross-attention)")
            control[key] = getattr(args, flag)
    return pipeline.controller_for(model, **control)


def _prompts(args, model, meta, x0, labels):
    """(source tokens, target tokens or None) of a caption model's inversion or edit."""
    from minidiff import models

    length = model.config.text_length
    if args.prompt is not None:
        source = np.repeat(captions.tokenize(args.prompt, length)[None], len(labels), axis=0)
    else:  # each digit's own caption, from the terciles the model was trained with
        source = np.asarray(captions.pack(captions.caption_words(x0, labels, models.captions_of(meta, args.ckpt))))
    if args.command != "edit":
        return source, None
    if args.to_prompt is not None:
        if args.to is not None:
            raise ValueError("give --to or --to-prompt, not both")
        return source, np.repeat(captions.tokenize(args.to_prompt, length)[None], len(labels), axis=0)
    if args.to is not None:
        return source, captions.with_digit(source, check_labels([args.to], model.config.num_classes, "--to")[0])
    if args.reweight:
        return source, source  # the same prompt, one word's attention scaled
    raise ValueError("edit needs --to, --to-prompt or --reweight")


def run_inversion(args) -> None:
    from minidiff import metrics, models, pipeline, plotting

    check_output_path(args.out, suffixes=(".png", ".npz"), what="--out", inputs=arguments.inputs_of(args))
    model, meta = models.load_model(args.ckpt)
    cfg = model.config
    arguments.check_steps(args.steps, models.schedule_of(meta))
    text = cfg.conditioning == "text"
    editing = args.command == "edit"
    if args.guidance is None:
        args.guidance = pipeline.EDIT_GUIDANCE[cfg.conditioning]
    if editing and args.renormalise and not args.reweight:
        raise ValueError("--renormalise needs --reweight (it renormalises the reweighted maps)")
    if not text:
        for flag in ("prompt", "to_prompt", "reweight", "renormalise"):
            if getattr(args, flag, None) not in (None, False):
                raise ValueError(f"--{flag.replace('_', '-')} needs a caption model; this one is label-conditioned")
        if editing and args.to is None:
            raise ValueError("edit needs --to (the new label)")
    if args.image is not None:
        if args.label is None:
            raise ValueError("--image needs --label (the class of the picture)")
        labels = np.array(check_labels([args.label], cfg.num_classes, "--label"), np.int32)
        images = data.load_image(args.image, cfg.image_size, cfg.in_channels)[None]
    else:
        trained_on = models.dataset_of(meta)
        if args.dataset is not None and trained_on is not None and args.dataset != trained_on:
            raise ValueError(f"--dataset {args.dataset}, but the model {args.ckpt or models.DEFAULT_CHECKPOINT} "
                             f"was trained on {trained_on}; give --dataset {trained_on} or another --ckpt")
        rows = 3 if editing else 2
        arguments.check_sample_count(rows, args.index.stop - args.index.start,
                                     (cfg.image_size, cfg.image_size, cfg.in_channels), "--index",
                                     picture=args.out.suffix == ".png")
        _, (held, held_labels) = data.load_train_and_heldout(args.dataset or trained_on or "mnist", args.data_dir)
        if args.index.stop > len(held):
            raise ValueError(f"--index {args.index.start}:{args.index.stop} goes past the held-out set, "
                             f"which has {len(held)} images (0:{len(held)})")
        images, labels = held[args.index], held_labels[args.index]
    if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.in_channels):
        raise ValueError(f"images of shape {images.shape[1:]} do not match the checkpoint's "
                         f"{cfg.image_size}x{cfg.image_size}x{cfg.in_channels}")
    x0 = data.to_model_range(images)
    if text:
        source, targets = _prompts(args, model, meta, x0, labels)
    else:
        source = labels
        targets = None if not editing else np.full(len(labels), check_labels([args.to], cfg.num_classes, "--to")[0],
                                                   np.int32)
    controller = _controller(args, model) if editing else None
    result = pipeline.invert_and_edit(
        model, models.schedule_of(meta), x0, source, method=args.method, guidance_scale=args.guidance,
        steps=args.steps, targets=targets, controller=controller, inner_steps=args.inner_steps, lr=args.lr,
        fixed_point_iterations=args.fixed_point_iterations, reweight=dict(args.reweight or []) if editing else None,
        renormalise=editing and args.renormalise)
    psnr = metrics.psnr(x0, result["reconstructions"])
    summary = f"{len(labels)} image(s), {args.method} inversion, w={args.guidance}: mean PSNR {psnr.mean():.2f} dB"
    if args.out.suffix == ".npz":
        with atomic_write(args.out) as f:
            np.savez(f, sources=x0, labels=labels, psnr=psnr,
                     **({"prompts": source} if text else {}),
                     **({"targets": targets} if targets is not None else {}), **result)
    else:
        rows = [x0, result["reconstructions"]] + ([result["edits"]] if targets is not None else [])
        if text:
            said = ", ".join(dict.fromkeys(captions.detokenize(p) for p in (targets if targets is not None else source)))
            if len(said) <= 40:  # a title line that fits the grid
                summary += "; " + ("edit: " if targets is not None else "prompt: ") + said
        plotting.save_grid(args.out, np.concatenate(rows), len(labels),
                           row_labels=["source", "recon."] + (["edit"] if targets is not None else []),
                           title=summary)
    print(f"{summary}; wrote {args.out}")


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure U-Net, sampler and training speed on this machine",
                       description="Forward images/s, DDIM-50 sampling overhead, train-step time, "
                       "XLA FLOP counts and the same run's float32 matmul peak (medians after warm-up).",
                       epilog="minidiff adds an XLA:CPU flag on import that keeps convolutions on all "
                       "cores (minidiff/xla_flags.py); MINIDIFF_XLA_DEFAULTS=1 python -m minidiff bench "
                       "measures XLA's own defaults.")
    p.add_argument("--channels", type=arguments.channels, default=None,
                   help="U-Net widths (default: the MNIST preset)")
    p.add_argument("--repeats", type=arguments.positive_int, default=5,
                   help="rounds, each timing every measurement once (reported: medians over rounds)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run_bench(args) -> None:
    import json

    from minidiff import bench
    from minidiff.unet import UNetConfig

    config = UNetConfig.mnist()
    if args.channels:
        config = dataclasses.replace(config, channels=args.channels)
    result = bench.run_bench(config, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else bench.format_report(result))


COMMANDS = {
    "train": (add_train_parser, run_train),
    "sample": (add_sample_parser, run_sample),
    "eval": (add_eval_parser, run_eval),
    "train-classifier": (add_classifier_parser, run_classifier),
    "bench": (add_bench_parser, run_bench),
    "invert": (partial(add_inversion_parser, name="invert"), run_inversion),
    "edit": (partial(add_inversion_parser, name="edit"), run_inversion),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minidiff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    try:
        for add, _ in COMMANDS.values():
            add(sub)
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # while the parsers import JAX
        arguments.exit_interrupted("minidiff", "nothing was written")
    return arguments.run_command(f"minidiff {args.command}", partial(COMMANDS[args.command][1], args),
                                 partial(interrupted, args))


def interrupted(args) -> str:
    """What a Ctrl-C left behind, in a few words: for train, the checkpoint a rerun resumes from."""
    if args.command != "train":
        return "no output is left half-written"
    from minidiff import checkpoint

    ckpt = (args.out or Path("runs") / args.dataset) / "ckpt.npz"
    try:
        step = checkpoint.read_metadata(ckpt)["step"]
    except (checkpoint.CheckpointError, KeyError):
        return f"no checkpoint had been written in {ckpt.parent}"
    return f"{ckpt} (step {step}) is intact; the same command resumes from it"
