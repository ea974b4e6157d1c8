"""vqjax.evaluation: Gaussian statistics and the Fréchet distance against NumPy/SciPy, the shipped
MNIST classifier on real digits, its save/load, the Fréchet classifier distance, fit_classifier
and the Classification Accuracy Score; and vqjax.training.evaluate over a split its batch size does
not divide."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx

from vqjax import data, evaluation

RNG = np.random.default_rng(0)
# The pure statistics run under strict promotion; optax (in fit_classifier) is not strict-clean.
strict = pytest.mark.usefixtures("strict_promotion")
F = 6


def _psd(f, seed, jitter=0.1):
    a = np.random.default_rng(seed).normal(size=(f, f))
    return (a @ a.T / f + jitter * np.eye(f)).astype(np.float32)


def _np_frechet(mu1, s1, mu2, s2):
    """The textbook formula: ||μ₁ - μ₂||² + Tr(Σ₁ + Σ₂ - 2 sqrtm(Σ₁ Σ₂)), in float64."""
    mu1, s1, mu2, s2 = (np.asarray(a, np.float64) for a in (mu1, s1, mu2, s2))
    cross = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(cross)))


@pytest.fixture(scope="module")
def mnist():
    """The embedded real MNIST digits as float32 [N, 28, 28, 1] in [0, 1] and int labels."""
    out = {}
    for split in ("train", "test"):
        src = data.embedded_mnist_source(split)
        items = [src[i] for i in range(len(src))]
        out[split] = (np.stack([it["image"] for it in items]).astype(np.float32) / 255,
                      np.array([it["label"] for it in items], np.int32))
    assert out["train"][0].shape == (4500, 28, 28, 1) and out["test"][0].shape == (500, 28, 28, 1)
    return out


@pytest.fixture(scope="module")
def classifier():
    return evaluation.load_classifier()


# --------------------------------------------------------------------------- statistics, Fréchet distance


@strict
def test_gaussian_statistics_match_numpy():
    x = RNG.normal(size=(50, F)).astype(np.float32) * np.arange(1, F + 1) + 3.0
    mu, sigma = evaluation.gaussian_statistics(x)
    assert mu.shape == (F,) and sigma.shape == (F, F) and mu.dtype == sigma.dtype == jnp.float32
    np.testing.assert_allclose(mu, np.mean(x.astype(np.float64), axis=0), rtol=1e-5)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        evaluation.gaussian_statistics(x[0])
    with pytest.raises(ValueError, match="N >= 2"):
        evaluation.gaussian_statistics(x[:1])


@strict
def test_frechet_distance_of_identical_gaussians_is_zero():
    mu, sigma = RNG.normal(size=F).astype(np.float32), _psd(F, 1)
    d = float(evaluation.frechet_distance(mu, sigma, mu, sigma))
    assert abs(d) <= 1e-3 * np.trace(sigma)


@strict
def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    mu1, mu2 = RNG.normal(size=(2, F)).astype(np.float32)
    a, b = RNG.uniform(0.1, 4.0, size=(2, F)).astype(np.float32)
    want = np.sum((mu1 - mu2) ** 2.0) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2.0)
    d = evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    np.testing.assert_allclose(d, want, rtol=1e-4)


@strict
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances(seed):
    r = np.random.default_rng(seed)
    mu1, mu2 = r.normal(size=(2, F)).astype(np.float32)
    s1, s2 = _psd(F, 10 * seed), _psd(F, 10 * seed + 1, jitter=0.01)
    want = _np_frechet(mu1, s1, mu2, s2)
    # Not the diagonal case in disguise: the cross term differs from the one of the diagonals.
    assert abs(want - _np_frechet(mu1, np.diag(np.diag(s1)), mu2, np.diag(np.diag(s2)))) > 1e-2
    d = evaluation.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(d, want, rtol=1e-4, atol=1e-4)
    # Symmetric, and the same under jit.
    np.testing.assert_allclose(evaluation.frechet_distance(mu2, s2, mu1, s1), d, rtol=1e-4, atol=1e-4)
    jitted = jax.jit(evaluation.frechet_distance)(mu1, s1, mu2, s2)
    np.testing.assert_allclose(jitted, d, rtol=1e-5, atol=1e-5)


@strict
def test_frechet_distance_rejects_mismatched_shapes():
    mu, sigma = np.zeros(F, np.float32), np.eye(F, dtype=np.float32)
    for args in [(mu, sigma, mu[:-1], sigma), (mu, sigma, mu, sigma[:-1, :-1]), (mu, sigma[0], mu, sigma),
                 (mu[None], sigma, mu, sigma), (mu, sigma, mu, sigma[:, :-1])]:
        with pytest.raises(ValueError, match="Expected mu1, mu2"):
            evaluation.frechet_distance(*args)


# --------------------------------------------------------------------------- the shipped classifier


def test_shipped_classifier_recognises_real_digits(classifier, mnist):
    x, y = mnist["test"]
    pred = evaluation.predict(classifier, x)
    assert pred.shape == (500,)
    assert np.mean(pred == y) >= 0.97
    feats = evaluation.features(classifier, x[:10])
    assert feats.shape == (10, 128) and np.all(feats >= 0)  # ReLU features
    with pytest.raises(ValueError, match="28, 28, 1"):
        classifier(jnp.zeros((2, 28, 28)))


def test_save_and_load_round_trip(classifier, mnist, tmp_path):
    path = str(tmp_path / "clf.npz")
    evaluation.save_classifier(classifier, path)
    loaded = evaluation.load_classifier(path)
    x = mnist["test"][0]
    np.testing.assert_array_equal(evaluation.predict(loaded, x), evaluation.predict(classifier, x))
    for (k, a), (_, b) in zip(nnx.to_flat_state(nnx.state(classifier)), nnx.to_flat_state(nnx.state(loaded))):
        np.testing.assert_array_equal(a[...], b[...], err_msg=str(k))  # shipped values: float16 already


def test_load_classifier_rejects_wrong_files(classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match="No classifier weights"):
        evaluation.load_classifier(str(tmp_path / "missing.npz"))
    other = str(tmp_path / "other.npz")
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not an MNISTClassifier checkpoint.*is missing"):
        evaluation.load_classifier(other)
    flat = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(classifier))}
    flat["out/kernel"] = flat["out/kernel"][:, :5]  # a 5-class head
    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, **flat)
    with pytest.raises(ValueError, match=r"out/kernel has shape \(128, 5\), expected \(128, 10\)"):
        evaluation.load_classifier(wrong)


def test_frechet_classifier_distance_separates_digits_from_noise(classifier, mnist):
    x = mnist["train"][0]
    noise = np.random.default_rng(1).uniform(size=(600, 28, 28, 1)).astype(np.float32)
    real_real = evaluation.frechet_classifier_distance(x[:600], x[600:1200], classifier=classifier)
    real_noise = evaluation.frechet_classifier_distance(x[:600], noise, classifier=classifier)
    assert 0 < real_real < real_noise / 5
    # The default classifier is the shipped one.
    default = evaluation.frechet_classifier_distance(x[:600], x[600:1200])
    np.testing.assert_allclose(default, real_real, rtol=1e-5)


# --------------------------------------------------------------------------- fit_classifier, CAS


def test_fit_classifier_is_deterministic_for_a_seed(mnist):
    x, y = mnist["train"][0][:96], mnist["train"][1][:96]
    fit = lambda seed: nnx.to_flat_state(nnx.state(evaluation.fit_classifier(x, y, steps=4, batch_size=32,
                                                                              seed=seed)))
    a, b, c = fit(0), fit(0), fit(1)
    for (k, va), (_, vb) in zip(a, b):
        np.testing.assert_array_equal(va[...], vb[...], err_msg=str(k))
    assert any(np.any(np.asarray(va[...]) != np.asarray(vc[...])) for (_, va), (_, vc) in zip(a, c))


def test_fit_classifier_learns(mnist):
    (x, y), (xt, yt) = mnist["train"], mnist["test"]
    model = evaluation.fit_classifier(x, y, steps=200, batch_size=32)  # 1.4 epochs, a few seconds
    assert np.mean(evaluation.predict(model, xt) == yt) > 0.9


def test_fit_classifier_rejects_bad_shapes(mnist):
    x, y = mnist["train"][0][:200], mnist["train"][1][:200]
    with pytest.raises(ValueError, match="`images` must be"):
        evaluation.fit_classifier(x[..., 0], y)
    with pytest.raises(ValueError, match="`images` must be"):
        evaluation.fit_classifier(np.zeros((200, 32, 32, 1), np.float32), y)
    with pytest.raises(ValueError, match="`labels` must be"):
        evaluation.fit_classifier(x, y[:, None])
    with pytest.raises(ValueError, match="`labels` must be"):
        evaluation.fit_classifier(x, y[:-1])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        evaluation.fit_classifier(x[:100], y[:100], batch_size=128)


def test_classification_accuracy_score_is_chance_for_shuffled_labels(mnist):
    (x, y), (xt, yt) = mnist["train"], mnist["test"]
    shuffled = np.random.default_rng(0).permutation(y)
    assert np.mean(shuffled == y) < 0.15
    # 15 steps of 128 (CAS's batch size): enough to be far above chance with the true labels.
    true = evaluation.classification_accuracy_score(x, y, xt, yt, steps=15)
    chance = evaluation.classification_accuracy_score(x, shuffled, xt, yt, steps=15)
    assert true > 0.7
    assert chance < 0.3


# --------------------------------------------------------------------------- vqjax.training.evaluate


class _FirstExamples(data.ImageSource):
    """The first ``n`` examples of ``source``."""

    def __init__(self, source, n):
        self.name, self.image_shape, self._source, self._n = f"first-{n}", source.image_shape, source, n

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source[index]


@pytest.fixture(scope="module")
def vqvae_task(idx_dir):
    """A tiny VQ-VAE of experiments/vqvae_mnist.py, its train state and the first 37 training digits."""
    from experiments import vqvae_mnist
    from vqjax import training

    c = vqvae_mnist.get_config()
    c.model.update(hidden=8, residual_hidden=4, num_residual=1)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4)
    task = vqvae_mnist.build(c)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), optax.sgd(0.1), seed=0)
    source = _FirstExamples(data.idx_source(idx_dir, "train"), 37)
    return task, graphdef, jax.device_get(state), source


@pytest.mark.parametrize("devices, batch_size", [(1, 8), (8, 16)])
def test_evaluate_with_a_padded_last_batch_equals_the_objective_on_all_examples(vqvae_task, devices, batch_size):
    """37 examples in batches of 8 (1 device) or 16 (8 devices): the last batch is padded and masked,
    and the summary equals the objective evaluated once on all 37 examples (means over 37, code counts)."""
    from vqjax import training

    task, graphdef, state, source = vqvae_task
    hparams = {k: np.float32(v) for k, v in task.hparams.items()}
    assert len(source) % batch_size and len(source) > batch_size
    mesh = training.make_mesh(jax.devices()[:devices])
    with jax.set_mesh(mesh):
        st, hp = training.replicate((state, hparams), mesh)
        got = training.evaluate(training.make_eval_step(graphdef, task.objective), st, source, mesh,
                                batch_size=batch_size, hparams=hp)

    @jax.jit
    def reference(state, batch):
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()
        return task.objective(model, batch, key=jax.random.key(0), step=state.step, hparams=hparams)[1]

    images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32) / np.float32(255)
    want = jax.device_get(reference(state, {"image": images, "index": np.arange(len(source), dtype=np.int32)}))
    assert got["num_examples"] == len(source) == float(want["weight"])
    for key in ("loss", "reconstruction", "codebook", "commitment", "mse"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    np.testing.assert_array_equal(got["_counts"], want["counts"])
    assert int(np.sum(got["_counts"])) == len(source) * 7 * 7  # every latent position of every example, once
    np.testing.assert_allclose(got["perplexity"], want["perplexity"], rtol=1e-5)
    assert got["dead_codes"] == int(np.sum(want["counts"] == 0))
