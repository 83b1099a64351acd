"""The experiment entry points on tiny settings: they run, write their JSON and PNGs, and the
numbers they report have the properties the full runs rely on."""

import json

import numpy as np
import pytest
from flax import nnx

from minidiff import checkpoint, classifier, data, evaluation, experiments, inversion, metrics, models, train
from minidiff.experiments.__main__ import main
from minidiff.experiments.diagnosis import LOSS_TIMESTEPS
from tests.helpers import TINY_UNET, data_dir


@pytest.fixture(scope="module")
def setup():
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    return evaluation.load_setup(data_dir=data_dir())


@pytest.mark.slow
def test_inversion_experiment(setup, tmp_path):
    result = experiments.inversion_experiment(setup, tmp_path, num=2, guidance=(1.0, 7.5), steps=4, batch=2)
    rows = {(r["guidance"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(w, m) for w in (1.0, 7.5) for m in inversion.METHODS}
    # At w = 1 the null embedding cancels out of the guided eps: plain, null-class and
    # negative-prompt inversion are the same method there.
    for m in ("null", "negative"):
        assert rows[1.0, m]["psnr_mean"] == pytest.approx(rows[1.0, "ddim"]["psnr_mean"], abs=1e-4)
    assert rows[1.0, "null"]["inner_steps_mean"] == 0
    assert rows[7.5, "null"]["psnr_mean"] > rows[7.5, "ddim"]["psnr_mean"]
    assert rows[7.5, "direct"]["psnr_mean"] > 60  # exact by construction
    assert all(0 <= r["edit_accuracy"] <= 1 and r["style_ratio"] > 0 for r in rows.values())
    saved = json.loads((tmp_path / "inversion.json").read_text())
    assert saved["num_images"] == 2 and len(saved["random_target_samples"]) == 2
    assert (tmp_path / "inversion_w7.5.png").exists()


@pytest.mark.slow
def test_editing_experiment(setup, tmp_path):
    controls = {"switch": {"source_label": 0.25}, "attention": {"attention": 0.5},
                "features": {"attention": 0.5, "features": 0.5, "levels": (1,)}}
    result = experiments.editing_experiment(setup, tmp_path, controls, num=2, guidance=(3.0,), steps=4, batch=2)
    assert [r["controller"] for r in result["rows"]] == list(controls)
    assert all(0 <= r["edit_accuracy"] <= 1 and r["style_ratio"] > 0 for r in result["rows"])
    assert (tmp_path / "editing.json").exists() and (tmp_path / "editing_w3.png").exists()


@pytest.mark.slow
def test_sampler_table(setup, tmp_path):
    result = experiments.sampler_table(setup, tmp_path, per_label=2, steps=(2, 4), etas=(0.0, 1.0), seeds=2)
    assert [(r["steps"], r["eta"]) for r in result["rows"]] == [
        (2, 0.0), (2, 1.0), (2, "sigma-hat"), (4, 0.0), (4, 1.0), (4, "sigma-hat")]
    assert all(r["classifier_fid"] > 0 and r["num_samples"] == 20 for r in result["rows"])
    for r in result["rows"]:  # the mean and spread of the two seeds' own values
        fids = r["classifier_fid_per_seed"]
        assert len(fids) == 2 and fids[0] != fids[1]
        np.testing.assert_allclose(r["classifier_fid"], np.mean(fids))
        np.testing.assert_allclose(r["classifier_fid_std"], np.std(fids, ddof=1))
    for name in ("sampler_table.json", "sampler_table.png", "sampler_table_samples.png"):
        assert (tmp_path / name).exists()


def test_reconstruction_error_falls_with_steps(setup, tmp_path):
    result = experiments.reconstruction_table(setup, tmp_path, num=4, steps=(5, 50), fixed_point_iterations=(0, 3))
    mse = {(r["fixed_point_iterations"], r["steps"]): r["mse"] for r in result["rows"]}
    assert mse[0, 50] < mse[0, 5], mse
    assert mse[3, 5] < mse[0, 5], mse  # solving each inverse step removes most of plain inversion's error
    assert (tmp_path / "reconstruction.png").exists()


@pytest.mark.slow
def test_guidance_sweeps(setup, tmp_path):
    noisy = classifier.Classifier(classifier.ClassifierConfig(noised=True), rngs=nnx.Rngs(0))
    cfg = experiments.guidance_sweep(setup, tmp_path, (0.0, 3.0), per_label=1, steps=4)
    clf = experiments.guidance_sweep(setup, tmp_path, (0.0, 2.0), per_label=1, steps=4, classifier=noisy)
    experiments.plot_guidance(tmp_path, [cfg, clf])
    assert [r["scale"] for r in clf["rows"]] == [0.0, 2.0] and clf["experiment"] == "classifier_guidance"
    # Scale 0 is the unconditional model on both paths, from the same noise.
    assert cfg["rows"][0]["accuracy"] == clf["rows"][0]["accuracy"]
    for name in ("cfg_w0.png", "cfg_w3.png", "classifier_guidance_w2.png", "guidance.png", "cfg.json"):
        assert (tmp_path / name).exists()


@pytest.mark.slow
def test_time_to_quality_scores_every_snapshot(setup, tmp_path):
    images, labels = data.load_split("mnist", "test", data_dir(), download=False)
    cfg = train.TrainConfig(steps=2, batch_size=16, log_every=1, ckpt_every=2, sample_every=0, snapshot_every=1)
    train.Trainer(TINY_UNET, cfg, tmp_path / "run", images[:256], labels[:256]).run(progress=False)
    result = experiments.time_to_quality(setup, tmp_path / "run", tmp_path, scales=(1.0, 3.0), per_label=1,
                                         target=0.0, outside_target=-1.0)
    assert [r["step"] for r in result["rows"]] == [1, 2]
    assert result["rows"][0]["minutes"] <= result["rows"][1]["minutes"]
    assert all(0 <= r[f"outside_w{w}"] <= 1 and r[f"fid_ratio_w{w}"] > 0 for r in result["rows"] for w in (1, 3))
    floor = result["real_floor"]
    assert floor["num_real"] == 10 and floor["classifier_fid"] > 0
    # Every accuracy reaches 0 at the first snapshot; no fraction of pixels is ever below -1.
    assert result["reached"]["w3"] == {"accuracy": {"step": 1, "minutes": result["rows"][0]["minutes"]},
                                       "outside": None}
    assert result["device"] == train.device_description()  # recorded by the training run
    assert (tmp_path / "time_to_quality.png").exists()
    # Run again: the snapshots already scored are kept, not scored again (a marked row shows it).
    saved = json.loads((tmp_path / "time_to_quality.json").read_text())
    # A row from before a measure was added (no outside_w3) is scored again.
    saved["rows"][0]["accuracy_w1"] = 0.5
    saved["rows"][1]["accuracy_w1"] = 0.5
    del saved["rows"][1]["outside_w3"]
    (tmp_path / "time_to_quality.json").write_text(json.dumps(saved))
    again = experiments.time_to_quality(setup, tmp_path / "run", tmp_path, scales=(1.0, 3.0), per_label=1,
                                        target=0.0, outside_target=-1.0)
    assert again["rows"][0]["accuracy_w1"] == 0.5 and again["rows"][1] == result["rows"][1]
    # Two recipes in one picture, through the command line; what is not a result is refused.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads((tmp_path / "time_to_quality.json").read_text()), "device": "elsewhere"}))
    picture = tmp_path / "recipes.png"
    assert main(["recipes", f"a={tmp_path / 'time_to_quality.json'}", f"b={other}", "--out", str(picture)]) == 0
    assert picture.exists()
    assert main(["recipes", f"a={tmp_path / 'run' / 'log.jsonl'}", "--out", str(picture)]) == 2
    assert main(["recipes", f"a={other}", "--scale", "2", "--out", str(picture)]) == 2


def test_recipes_command_line_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["recipes", "no-equals-sign.json"])
    assert "expected NAME=PATH" in capsys.readouterr().err
    assert main(["recipes", f"a={tmp_path / 'missing.json'}", "--out", str(tmp_path / "r.png")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["recipes", f"a={tmp_path}/x.json", "--out", str(tmp_path / "r.txt")]) == 2
    assert "must end in .png" in capsys.readouterr().err


def test_command_line_errors_are_clear(tmp_path, capsys):
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    assert main(["time-to-quality", "--run", str(tmp_path), "--data-dir", str(data_dir())]) == 2
    assert "no snapshots" in capsys.readouterr().err


def test_diagnosis_on_the_released_model(setup, tmp_path):
    result = experiments.diagnosis(setup, tmp_path, guidance=(1.0,), num=20, per_label=1)
    loss = result["eps_loss"]
    assert [r["t"] for r in loss] == list(LOSS_TIMESTEPS)
    # Noise is hardest to predict at small t (least of it in x_t): the loss falls with t.
    assert loss[0]["heldout_loss"] > loss[-1]["heldout_loss"]
    trajectory = result["trajectories"][0]
    assert [r["t"] for r in trajectory["rows"]] == list(range(980, -1, -20))
    # At t = 0, x0_pred is the sample the sampler returns: the last row and the final agree.
    assert trajectory["rows"][-1]["x0_pred_outside"] == pytest.approx(trajectory["final"]["outside"], abs=1e-6)
    assert (tmp_path / "diagnosis.json").exists() and (tmp_path / "diagnosis.png").exists()


def test_unseen_floor_scores_real_digits_against_the_rest(setup):
    scored, floor = evaluation.unseen_floor(setup, 200)
    assert scored.reference.shape[0] == len(setup.heldout) - 200  # the floor's digits are not in the reference
    expected = metrics.feature_fid(evaluation.reference_features(setup.judge, setup.heldout[:200]),
                                              evaluation.reference_features(setup.judge, setup.heldout[200:]))
    np.testing.assert_allclose(floor, expected)
    assert floor < evaluation.unseen_floor(setup, 50)[1]  # FID's sample-size bias: fewer digits, a higher floor
    with pytest.raises(ValueError, match="num must lie"):
        evaluation.unseen_floor(setup, len(setup.heldout))


def test_calibrated_runs_its_pieces_against_one_reference(setup, tmp_path, monkeypatch):
    from minidiff.experiments import calibrated

    monkeypatch.setattr(calibrated, "PIECES", {"table": dict(steps=(2,), etas=(0.0, 1.0), sigma_hat=False, seeds=2),
                                               "cfg": dict(scales=(1.0,))})
    result = calibrated.calibrated(setup, tmp_path, per_label=2, pieces=("table", "cfg"))
    assert result["num_samples"] == 20 and result["reference_images"] == len(setup.heldout) - 20
    assert result["real_floor"]["classifier_fid"] == evaluation.unseen_floor(setup, 20)[1]
    assert [r["eta"] for r in result["table"]] == [0.0, 1.0] and len(result["cfg"]) == 1
    assert json.loads((tmp_path / "calibrated.json").read_text())["real_floor"] == result["real_floor"]


@pytest.mark.slow
def test_word_swap_measures_both_reweights(tmp_path):
    """The caption model's word swap on 6 digits (the sixth is the first held-out digit whose caption
    has a thickness word): a row per controller, the same-hand real digits beside them, and that word reweighted as P2P does and
    renormalised, where factor 1 is the plain edit either way."""
    if data_dir() is None:
        pytest.skip("MNIST files not available")
    ckpt = "data/checkpoints/mnist_text.npz"
    text_setup = evaluation.load_setup(ckpt, data_dir=data_dir())
    terciles = models.captions_of(checkpoint.read_metadata(ckpt), ckpt)
    controls = {"none": {}, "switch": {"source_label": 0.3}}
    result = experiments.word_swap(text_setup, terciles, tmp_path, num=6, steps=4, batch=6, controls=controls,
                                   reweight_factors=(1.0, 4.0))
    assert [r["controller"] for r in result["rows"]] == list(controls)
    hand = result["references"]["same-hand real digit"]  # training digits of the target class
    assert hand["accuracy"] == 1.0 and 0 < hand["style_ratio_vs_digit_word"] < 2
    plain, renormalised = ([r for r in result["reweight"] if r["renormalise"] == flag] for flag in (False, True))
    assert [r["word"] for r in plain] == [r["word"] for r in renormalised] and plain
    for a, b in zip(plain, renormalised):
        assert a["factors"][0] == pytest.approx(b["factors"][0])  # factor 1: nothing to renormalise
        assert a["factors"][1]["mean_thickness"] != pytest.approx(b["factors"][1]["mean_thickness"])
    assert {"word_swap.json", "word_swap.png", "reweight.png", "reweight_renormalised.png"} <= {
        p.name for p in tmp_path.iterdir()}


def test_time_to_quality_scores_a_run_on_its_own_data_set(tmp_path, monkeypatch, capsys):
    """Without --ckpt the setup (data set, judge, schedule) comes from the run's first snapshot,
    not from the released MNIST model: a Fashion-MNIST run is judged by the Fashion-MNIST judge."""
    (tmp_path / "snapshots").mkdir()
    for step in (500, 250):
        (tmp_path / "snapshots" / f"model_{step:06d}.npz").write_bytes(b"")

    def load_setup(ckpt, judge, data_dir):
        raise ValueError(f"setup from {ckpt}")
    monkeypatch.setattr(evaluation, "load_setup", load_setup)
    assert main(["time-to-quality", "--run", str(tmp_path)]) == 2
    assert f"setup from {tmp_path / 'snapshots' / 'model_000250.npz'}" in capsys.readouterr().err


def test_word_swap_runs_the_released_models_seven_controllers_unless_others_are_named():
    """The default reproduces docs/results.md's table of the release; the 28x28 model's rows are named."""
    from minidiff.experiments.__main__ import build_parser, chosen
    from minidiff.experiments.prompts import TEXT_EDIT_DEFAULT, TEXT_EDIT_SWEEP

    default = chosen(TEXT_EDIT_SWEEP, build_parser().parse_args(["word-swap"]).controllers or TEXT_EDIT_DEFAULT)
    assert list(default) == list(TEXT_EDIT_DEFAULT) and len(default) == 7
    named = build_parser().parse_args(["word-swap", "--controllers", "cross-attention 0.4;no control"]).controllers
    assert list(chosen(TEXT_EDIT_SWEEP, named)) == ["no control", "cross-attention 0.4"]
    with pytest.raises(ValueError, match="unknown controller"):
        chosen(TEXT_EDIT_SWEEP, ("cross-attention 0.9",))
