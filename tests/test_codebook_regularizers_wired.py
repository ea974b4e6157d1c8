"""Codebook regularisers in the VQ-VAE objective (issue 17): orthogonality and usage entropy against
NumPy, weight 0 bit-identical to the plain objective, gradients where the term says, clear errors for
quantizers they cannot act on, and the experiment's flags training a VQ-VAE."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import data, objectives, training
from vqjax.nn import VQVAE, make_quantizer

TINY = {"hidden": 8, "residual_hidden": 4, "num_residual": 1}


def _model(kind="vq", **kw):
    q = make_quantizer(kind, num_codes=kw.pop("num_codes", 6), code_dim=4, rngs=nnx.Rngs(1), **kw)
    model = VQVAE(in_channels=1, quantizer=q, rngs=nnx.Rngs(0), **TINY)
    return model


def _x(n=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 8, 8, 1)), jnp.float32)


def _np_orthogonality(e):
    e = np.asarray(e, np.float64)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    k = len(e)
    return np.sum((e @ e.T - np.eye(k)) ** 2) / k**2


def _np_soft(z, e, tau):
    d = np.sum((np.asarray(z, np.float64)[..., None, :] - np.asarray(e, np.float64)) ** 2, -1)
    a = -d / tau
    a = np.exp(a - a.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- weight 0: unchanged


@pytest.mark.parametrize("kind", ["vq", "ema", "fsq"])
def test_zero_weights_leave_the_objective_bit_identical(kind):
    kw = {"fsq_levels": (3, 3, 3, 3)} if kind == "fsq" else {}
    model, x = _model(kind, **kw), _x()
    model.eval()
    loss0, m0 = objectives.vqvae_objective(model, {"image": x})
    loss1, m1 = objectives.vqvae_objective(model, {"image": x}, orthogonality_weight=0.0, entropy_weight=0,
                                           entropy_temperature=123.0)
    assert set(m0) == set(m1) and "orthogonality" not in m0 and "entropy" not in m0
    assert np.asarray(loss0).tobytes() == np.asarray(loss1).tobytes()
    for k in m0:
        assert np.asarray(m0[k]).tobytes() == np.asarray(m1[k]).tobytes(), k
    np.testing.assert_allclose(loss0, m0["reconstruction"] + m0["codebook"] + m0["commitment"], rtol=1e-6)
    # and the gradients
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def grad(**kw):
        f = lambda p: objectives.vqvae_objective(nnx.merge(graphdef, p, rest), {"image": x}, **kw)[0]
        return jax.tree.leaves(jax.grad(f)(params))

    for a, b in zip(grad(), grad(orthogonality_weight=0.0, entropy_weight=0.0)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# --------------------------------------------------------------------------- the terms against NumPy


@pytest.mark.parametrize("cosine", [False, True])
def test_orthogonality_term_against_numpy(cosine):
    model, x = _model(cosine=cosine), _x()
    model.eval()
    base, _ = objectives.vqvae_objective(model, {"image": x})
    loss, m = objectives.vqvae_objective(model, {"image": x}, orthogonality_weight=0.5)
    want = 0.5 * _np_orthogonality(model.quantizer.codebook_vectors())
    np.testing.assert_allclose(m["orthogonality"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, base + want, rtol=1e-6)
    np.testing.assert_allclose(m["sum/orthogonality"], want * x.shape[0], rtol=1e-5)
    np.testing.assert_allclose(loss, m["reconstruction"] + m["codebook"] + m["commitment"] + m["orthogonality"],
                               rtol=1e-6)


def test_orthogonality_of_residual_vq_is_the_mean_over_stages():
    model, x = _model("residual", num_stages=3), _x()
    model.eval()
    _, m = objectives.vqvae_objective(model, {"image": x}, orthogonality_weight=1.0)
    books = np.asarray(model.quantizer.codebooks[...])
    np.testing.assert_allclose(m["orthogonality"], np.mean([_np_orthogonality(b) for b in books]), rtol=1e-5)


@pytest.mark.parametrize("kind", ["vq", "ema", "simvq"])
def test_entropy_term_against_numpy_with_padded_rows(kind):
    model, x = _model(kind), _x(6)
    model.eval()
    weights = jnp.array([1, 1, 0, 1, 0, 1], jnp.float32)
    tau = 0.05
    base, _ = objectives.vqvae_objective(model, {"image": x}, weights=weights)
    loss, m = objectives.vqvae_objective(model, {"image": x}, weights=weights, entropy_weight=0.3,
                                         entropy_temperature=tau)
    z = np.asarray(model.encoder(x))[np.asarray(weights) > 0]
    p_bar = _np_soft(z, model.quantizer.codebook_vectors(), tau).reshape(-1, 6).mean(0)
    want = 0.3 * np.sum(p_bar * np.log(p_bar))
    np.testing.assert_allclose(m["entropy"], want, rtol=1e-4)
    np.testing.assert_allclose(loss, base + want, rtol=1e-5)
    np.testing.assert_allclose(m["sum/entropy"], want * 4, rtol=1e-4)  # 4 real images


@pytest.mark.parametrize("kind", ["stochastic", "gumbel"])
def test_entropy_of_a_stochastic_quantizer_uses_its_own_distribution(kind):
    model, x = _model(kind, temperature_start=0.5), _x()
    model.eval()
    _, m = objectives.vqvae_objective(model, {"image": x}, entropy_weight=1.0, entropy_temperature=99.0)
    p = np.asarray(model.quantizer.soft_assignments(model.encoder(x)), np.float64).reshape(-1, 6)
    p_bar = p.mean(0)
    np.testing.assert_allclose(m["entropy"], np.sum(p_bar * np.log(p_bar)), rtol=1e-4)


# --------------------------------------------------------------------------- gradients


def _grads(model, x, **kw):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f(p):
        return objectives.vqvae_objective(nnx.merge(graphdef, p, rest), {"image": x}, **kw)[1]

    return jax.grad(lambda p: f(p)["orthogonality"] if "orthogonality_weight" in kw else f(p)["entropy"])(params)


def _norm(tree) -> float:
    return float(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(tree)))


def test_gradients_of_the_terms_reach_what_they_regularise():
    x = _x()
    model = _model("vq")
    model.eval()
    g = _grads(model, x, orthogonality_weight=1.0)
    assert _norm(g["quantizer"]) > 0 and _norm(g["encoder"]) == 0  # the codes only
    g = _grads(model, x, entropy_weight=1.0, entropy_temperature=0.05)
    assert _norm(g["quantizer"]) > 0 and _norm(g["encoder"]) > 0  # codes and encoder outputs
    model = _model("ema")  # EMA codes are no parameter: the entropy trains the encoder only
    model.eval()
    g = _grads(model, x, entropy_weight=1.0, entropy_temperature=0.05)
    assert _norm(g["encoder"]) > 0 and _norm(g.get("quantizer", {})) == 0


# --------------------------------------------------------------------------- errors


def test_terms_that_could_not_act_are_clear_errors():
    x = _x(2)
    cases = [
        ("orthogonality_weight", _model("ema"), {"orthogonality_weight": 0.1}),
        ("orthogonality_weight", _model("residual", residual_ema=True, num_stages=2), {"orthogonality_weight": 0.1}),
        ("orthogonality_weight", _model("fsq", fsq_levels=(3, 3, 3, 3)), {"orthogonality_weight": 0.1}),
        ("entropy_weight", _model("residual", num_stages=2), {"entropy_weight": 0.1}),
        ("entropy_weight", _model("lfq", bits=4), {"entropy_weight": 0.1}),
        ("orthogonality_weight", _model("vq"), {"orthogonality_weight": -1.0}),
        ("entropy_weight", _model("vq"), {"entropy_weight": -1.0}),
        ("entropy_temperature", _model("vq"), {"entropy_weight": 0.1, "entropy_temperature": 0.0}),
    ]
    for name, model, kw in cases:
        model.eval()
        with pytest.raises(ValueError, match=name):
            objectives.vqvae_objective(model, {"image": x}, **kw)
    with pytest.raises(ValueError, match="no gradient"):
        objectives.vqvae_objective(_model("ema"), {"image": x}, orthogonality_weight=0.1)


# --------------------------------------------------------------------------- the experiment's flags


def _config(idx_dir, kind="vq", **codebook):
    c = vqvae_mnist.get_config()
    c.model.update(TINY)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4, **codebook)
    c.model.quantizer.kind = kind
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update(steps=2, log_every=1, checkpoint_every=2, eval_every=0, micro_batches=0)
    return c


@pytest.mark.parametrize("kind,codebook", [
    ("vq", {"orthogonality_weight": 0.5}),
    ("vq", {"entropy_weight": 0.5, "entropy_temperature": 0.1}),
    ("ema", {"entropy_weight": 0.5}),
    ("stochastic", {"orthogonality_weight": 0.5, "entropy_weight": 0.5}),
])
def test_vqvae_trains_two_steps_with_each_regularizer(idx_dir, kind, codebook):
    config = _config(idx_dir, kind, **codebook)
    task = vqvae_mnist.build(config)
    assert task.per_example == (codebook.get("entropy_weight", 0) == 0)  # the entropy is batch-level
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    step = training.make_train_step(graphdef, tx, task.objective)
    src = data.idx_source(idx_dir, "train")
    x = jnp.asarray(np.stack([src[i]["image"] for i in range(16)]) / np.float32(255))
    names = [k for k in ("orthogonality", "entropy") if codebook.get(f"{k}_weight", 0)]
    for _ in range(2):
        state, m = step(state, {"image": x}, {"model.beta": np.float32(0.25)})
        assert np.isfinite(float(m["loss"])) and set(names) <= set(m)
        np.testing.assert_allclose(m["loss"], m["reconstruction"] + m["codebook"] + m["commitment"]
                                   + sum(m[k] for k in names), rtol=1e-5)


def test_experiment_with_zero_weights_is_the_plain_objective(idx_dir):
    task = vqvae_mnist.build(_config(idx_dir))
    model = task.model(nnx.Rngs(0))
    model.eval()
    src = data.idx_source(idx_dir, "train")
    x = jnp.asarray(np.stack([src[i]["image"] for i in range(4)]) / np.float32(255))
    loss, m = task.objective(model, {"image": x}, key=jax.random.key(0), step=jnp.int32(0),
                             hparams={"model.beta": jnp.float32(0.25)})
    want, m0 = objectives.vqvae_objective(model, {"image": x}, beta=0.25, key=jax.random.key(0))
    assert np.asarray(loss).tobytes() == np.asarray(want).tobytes() and set(m) == set(m0)


def test_bad_regularizer_flags_name_the_flag(idx_dir):
    for kind, flag in (("ema", "orthogonality_weight"), ("fsq", "orthogonality_weight"),
                       ("residual", "entropy_weight"), ("lfq", "entropy_weight")):
        config = _config(idx_dir, kind, **{flag: 0.1})
        with pytest.raises(ValueError, match=rf"quantizer\.codebook\.{flag}"):
            vqvae_mnist.build(config)
    config = _config(idx_dir, "residual", orthogonality_weight=0.1)
    config.model.quantizer.residual.ema = True
    with pytest.raises(ValueError, match=r"quantizer\.codebook\.orthogonality_weight"):
        vqvae_mnist.build(config)
    for flag, value in (("orthogonality_weight", -1.0), ("entropy_temperature", 0.0)):
        with pytest.raises(ValueError, match=rf"quantizer\.codebook\.{flag}"):
            vqvae_mnist.build(_config(idx_dir, **{flag: value}))
