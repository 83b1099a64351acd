import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff import classifier, classifier_train, data, evaluation, guidance, models, pipeline
from tests.helpers import data_dir

TINY = dict(channels=(8, 16, 16), emb_dim=16, num_groups=4, feature_dim=32)


def test_shapes_and_time_conditioning():
    noisy = classifier.Classifier(classifier.ClassifierConfig(noised=True, **TINY), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
    assert noisy(x, jnp.array([0, 5, 900])).shape == (3, 10)
    assert noisy.features(x, jnp.zeros(3, jnp.int32)).shape == (3, 32)
    assert float(jnp.abs(noisy(x, jnp.zeros(3, jnp.int32)) - noisy(x, jnp.full(3, 900))).max()) > 1e-4
    with pytest.raises(ValueError, match="needs the timestep"):
        noisy(x)


def test_log_prob_fn_is_the_log_softmax_and_its_gradient_matches_finite_differences():
    model = classifier.Classifier(classifier.ClassifierConfig(noised=True, **TINY), rngs=nnx.Rngs(1))
    log_prob = pipeline.classifier_log_prob_fn(model)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
    t, y = jnp.array([100, 600]), jnp.array([3, 7])
    expected = jax.nn.log_softmax(model(x, t))[jnp.arange(2), y]
    np.testing.assert_allclose(log_prob(x, t, y), expected, atol=1e-6)
    grad = guidance._log_prob_grad(log_prob, x, t, y)  # what classifier guidance uses
    direction = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    h = 1e-2
    fd = (log_prob(x + h * direction, t, y) - log_prob(x - h * direction, t, y)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(grad * direction, axis=(1, 2, 3)), fd, rtol=2e-2, atol=1e-4)


def test_random_shift_moves_pixels_by_at_most_the_shift():
    x = jnp.full((64, 9, 9, 1), -1.0).at[:, 4, 4, 0].set(1.0)  # one white pixel on black (-1)
    shifted = classifier_train.random_shift(jax.random.PRNGKey(0), x, max_shift=2)
    rows, cols = np.nonzero(np.asarray(shifted[..., 0]).max(axis=0) > 0)
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert np.all((np.asarray(shifted) == 1.0).sum(axis=(1, 2, 3)) == 1)  # nothing lost or added
    assert np.all((np.asarray(shifted) == -1.0).sum(axis=(1, 2, 3)) == 80)  # padding is black
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # the shifts do vary


@pytest.mark.slow
def test_training_reaches_high_accuracy_on_digits(tmp_path):
    root = data_dir()
    if root is None:
        pytest.skip("MNIST files not available")
    images, labels = data.load_split("mnist", "test", root, download=False)
    x = data.to_model_range(images)
    cfg = classifier.ClassifierConfig(**TINY)
    model = classifier_train.train_classifier(cfg, x[:2000], labels[:2000], steps=200, batch_size=64, lr=3e-3, progress=False)
    acc = classifier_train.evaluate(model, x[-500:], labels[-500:])["clean"]
    assert acc > 0.85, acc  # chance is 0.1; measured 0.93
    models.save_model(tmp_path / "c.npz", model, {})
    loaded, meta = models.load_model(tmp_path / "c.npz", kind="classifier")
    assert meta["kind"] == "classifier"
    np.testing.assert_allclose(evaluation.predict(loaded, x[-8:])[0], evaluation.predict(model, x[-8:])[0], atol=1e-5)
    with pytest.raises(Exception, match="not a unet model file"):
        models.load_model(tmp_path / "c.npz")
