"""StochasticVectorQuantizer and GumbelVectorQuantizer (issue 17): greedy at evaluation, sampled codes
distributed as the model says, DALL-E's KL, the estimators' gradients, the temperature schedule, and
the kinds "stochastic" and "gumbel" of the VQ-VAE experiment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import vqvae_mnist
from vqjax import data, objectives, quantizers, training
from vqjax.nn import GumbelVectorQuantizer, StochasticVectorQuantizer, make_quantizer
from vqjax.quantizers._stochastic import gumbel_softmax_code, kl_to_uniform

K, D = 5, 3


def _np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_sqdist(z, e):
    z, e = np.asarray(z, np.float64), np.asarray(e, np.float64)
    return np.sum((z[..., None, :] - e) ** 2, axis=-1)


def _stochastic(**kw):
    q = StochasticVectorQuantizer(K, D, rngs=nnx.Rngs(0), **kw)
    q.codebook[...] = jnp.asarray(np.random.default_rng(1).normal(size=(K, D)) * 0.5, jnp.float32)
    return q


def _gumbel(**kw):
    return GumbelVectorQuantizer(K, D, rngs=nnx.Rngs(0), **kw)


def _z(shape=(4, 6), seed=2):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(*shape, D)), jnp.float32)


# --------------------------------------------------------------------------- evaluation: the greedy code


@pytest.mark.parametrize("kw", [{}, {"estimator": "gumbel"}, {"estimator": "gumbel", "hard": True}])
def test_stochastic_eval_is_the_nearest_code(kw):
    q, z = _stochastic(**kw), _z()
    q.eval()
    out = q(z)  # no key needed
    e = np.asarray(q.codebook[...])
    want = np.argmin(_np_sqdist(z, e), axis=-1)
    np.testing.assert_array_equal(out.indices, want)
    np.testing.assert_allclose(out.z_q, e[want], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(q.encode(z), want)
    np.testing.assert_allclose(q.decode(out.indices), e[want])
    d = np.sum((np.asarray(z) - e[want]) ** 2, -1)
    np.testing.assert_allclose(out.commitment_loss, d, rtol=1e-5)
    np.testing.assert_allclose(out.codebook_loss, d, rtol=1e-5)  # kl_weight 0 by default
    assert int(out.restarted) == 0


def test_gumbel_eval_is_the_argmax_of_the_logits():
    q, z = _gumbel(hard=True), _z()
    q.eval()
    out = q(z)
    w, b = np.asarray(q.project.kernel[...]), np.asarray(q.project.bias[...])
    logits = np.asarray(z, np.float64) @ w + b
    want = np.argmax(logits, -1)
    np.testing.assert_array_equal(out.indices, want)
    np.testing.assert_array_equal(q.encode(z), want)
    np.testing.assert_allclose(out.z_q, np.asarray(q.codebook[...])[want], rtol=1e-6)
    np.testing.assert_allclose(q.soft_assignments(z), _np_softmax(logits), rtol=1e-5, atol=1e-7)


def test_bfloat16_inputs_quantize_in_float32():
    q, z = _stochastic(), _z().astype(jnp.bfloat16)
    out = q(z, key=jax.random.key(0))
    assert out.z_q.dtype == jnp.bfloat16 and out.codebook_loss.dtype == jnp.float32
    g = _gumbel()
    assert g(z, key=jax.random.key(0)).z_q.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- training: sampled codes


def _check_frequencies(indices, p):
    """Empirical frequencies of ``indices`` against ``p [K]``, within 5 binomial standard errors."""
    n = indices.size
    freq = np.bincount(np.asarray(indices).reshape(-1), minlength=len(p)) / n
    se = np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_less(np.abs(freq - p), 5 * se + 1e-9)


@pytest.mark.parametrize("estimator", ["straight_through", "gumbel"])
def test_sampled_codes_follow_softmax_of_negative_distances(estimator):
    tau = 0.7
    q = _stochastic(estimator=estimator, temperature=tau)
    z0 = np.array([0.1, -0.2, 0.3], np.float32)
    z = jnp.broadcast_to(jnp.asarray(z0), (40_000, D))
    out = q(z, key=jax.random.key(3))
    p = _np_softmax(-_np_sqdist(z0, np.asarray(q.codebook[...])) / tau)
    assert p.min() > 0.02  # every code has a fair chance: the test is informative
    _check_frequencies(out.indices, p)
    np.testing.assert_allclose(q.soft_assignments(z0), p, rtol=1e-5)
    # forward: the sampled code itself (straight-through, or the Gumbel-max sample's code when hard)
    if estimator == "straight_through":
        np.testing.assert_allclose(out.z_q, np.asarray(q.codebook[...])[np.asarray(out.indices)], atol=1e-6)


def test_gumbel_vq_samples_follow_softmax_of_the_logits():
    q = _gumbel(hard=True)
    z0 = np.array([0.5, -0.4, 0.8], np.float32)
    out = q(jnp.broadcast_to(jnp.asarray(z0), (40_000, D)), key=jax.random.key(4))
    p = _np_softmax(np.asarray(q.logits(z0)))
    assert p.min() > 0.02
    _check_frequencies(out.indices, p)
    np.testing.assert_allclose(out.z_q, np.asarray(q.codebook[...])[np.asarray(out.indices)], atol=1e-6)


def test_gumbel_vq_soft_forward_and_kl_against_numpy():
    q, z, key, tau, kl_weight = _gumbel(kl_weight=0.7, temperature=0.5), _z(), jax.random.key(5), 0.5, 0.7
    out = q(z, key=key)
    w, b, e = (np.asarray(v, np.float64) for v in (q.project.kernel[...], q.project.bias[...], q.codebook[...]))
    logits = np.asarray(z, np.float64) @ w + b
    g = np.asarray(jax.random.gumbel(key, logits.shape, jnp.float32), np.float64)
    y = _np_softmax((logits + g) / tau)
    np.testing.assert_allclose(out.z_q, y @ e, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out.indices, np.argmax(logits + g, -1))
    qy = _np_softmax(logits)
    kl = np.sum(qy * np.log(K * qy), -1)
    np.testing.assert_allclose(out.codebook_loss, kl_weight * kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out.commitment_loss, 0.0)
    np.testing.assert_allclose(kl_to_uniform(logits), kl, rtol=1e-5, atol=1e-6)
    # a uniform q has no KL; a one-hot one log K
    np.testing.assert_allclose(kl_to_uniform(jnp.zeros((3, K))), 0.0, atol=1e-6)
    np.testing.assert_allclose(kl_to_uniform(jnp.array([0.0, 0, 0, 0, 1e4])), np.log(K), rtol=1e-5)


def test_stochastic_kl_weight_adds_the_rate_to_the_codebook_loss():
    tau = 0.5
    q, z = _stochastic(kl_weight=0.3, temperature=tau), _z()
    q.eval()
    out = q(z)
    e = np.asarray(q.codebook[...])
    d = _np_sqdist(z, e)
    p = _np_softmax(-d / tau)
    kl = np.sum(p * np.log(K * p), -1)
    np.testing.assert_allclose(out.codebook_loss, d.min(-1) + 0.3 * kl, rtol=1e-4)


# --------------------------------------------------------------------------- gradients


def _loss_and_grads(q, z, key, c):
    """Gradients of ``Σ c·z_q`` with respect to ``z`` and to the module's parameters."""
    graphdef, params, rest = nnx.split(q, nnx.Param, ...)

    def f(params, z):
        return jnp.sum(nnx.merge(graphdef, params, rest)(z, key=key).z_q * c)

    return jax.grad(f, argnums=(0, 1))(params, z)


def test_straight_through_gradients_are_those_of_the_soft_assignment():
    tau = 0.8
    q, z, key = _stochastic(temperature=tau), _z((7,)), jax.random.key(6)
    c = jnp.asarray(np.random.default_rng(7).normal(size=(7, D)), jnp.float32)
    k = q(z, key=key).indices
    g_params, g_z = _loss_and_grads(q, z, key, c)
    e = q.codebook[...]

    def reference(e, z):  # (onehot(k) + p - sg[p])·E with p = softmax(-||z - e||²/τ): the documented gradient
        p = jax.nn.softmax(-quantizers.squared_distances(z, e) / tau, axis=-1)
        w = jax.nn.one_hot(k, K) + p - jax.lax.stop_gradient(p)
        return jnp.sum((w @ e) * c)

    want_e, want_z = jax.grad(reference, argnums=(0, 1))(e, z)
    np.testing.assert_allclose(g_z, want_z, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_params["codebook"][...], want_e, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_z))) > 0  # the encoder learns from the decoder through p


def test_gumbel_vq_gradients_reach_codebook_and_projection():
    z, key = _z((7,)), jax.random.key(8)
    c = jnp.asarray(np.random.default_rng(9).normal(size=(7, D)), jnp.float32)
    for hard in (False, True):
        q = _gumbel(hard=hard)
        out = q(z, key=key)
        g_params, g_z = _loss_and_grads(q, z, key, c)
        g_e = np.asarray(g_params["codebook"][...])
        if hard:  # forward e_k: the codebook's gradient is the lookup's, rows sampled only
            unused = np.setdiff1d(np.arange(K), np.asarray(out.indices))
            np.testing.assert_array_equal(g_e[unused], 0.0)
            want = np.zeros((K, D))
            np.add.at(want, np.asarray(out.indices), np.asarray(c))
            np.testing.assert_allclose(g_e, want, rtol=1e-5, atol=1e-6)
        else:  # y·E: every code with weight y_k > 0
            assert np.all(np.abs(g_e).sum(-1) > 0)
        assert float(jnp.max(jnp.abs(g_params["project"]["kernel"][...]))) > 0
        assert float(jnp.max(jnp.abs(g_z))) > 0


def test_eval_gradient_is_the_straight_through_copy():
    q, z = _stochastic(), _z((5,))
    q.eval()
    c = jnp.ones((5, D))
    _, g_z = _loss_and_grads(q, z, None, c)
    np.testing.assert_allclose(g_z, c)


# --------------------------------------------------------------------------- the temperature schedule


@pytest.mark.parametrize("cls", [StochasticVectorQuantizer, GumbelVectorQuantizer])
def test_temperature_at_step_t_is_the_schedule(cls):
    q = cls(K, D, temperature=1.0, temperature_end=1 / 16, anneal_steps=200, rngs=nnx.Rngs(0))
    assert float(q.temperature[...]) == 1.0
    for t in (0, 1, 50, 199, 200, 10_000):
        q.anneal(t)
        want = quantizers.temperature_schedule(t, start=1.0, end=1 / 16, steps=200)
        np.testing.assert_allclose(q.temperature[...], want, rtol=1e-6)
        np.testing.assert_allclose(q.temperature_at(t), want, rtol=1e-6)
    np.testing.assert_allclose(q.temperature[...], 1 / 16, rtol=1e-6)
    const = cls(K, D, temperature=0.3, rngs=nnx.Rngs(0))  # no temperature_end: constant τ
    const.anneal(123)
    np.testing.assert_allclose(const.temperature[...], 0.3, rtol=1e-6)


def test_temperature_schedule_takes_array_endpoints():
    steps = jnp.arange(0, 300, 7)
    want = jax.vmap(lambda t: quantizers.temperature_schedule(t, start=1.0, end=1 / 16, steps=150))(steps)
    got = jax.jit(jax.vmap(lambda t, s, e: quantizers.temperature_schedule(t, start=s, end=e, steps=150),
                           in_axes=(0, None, None)))(steps, jnp.float32(1.0), jnp.float32(1 / 16))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="start"):
        quantizers.temperature_schedule(0, start=jnp.float32(0.0), end=0.5, steps=3)


# --------------------------------------------------------------------------- bad arguments


def test_bad_arguments_are_clear_errors():
    rngs = nnx.Rngs(0)
    cases = [
        ("estimator", lambda: StochasticVectorQuantizer(K, D, estimator="reinforce", rngs=rngs)),
        ("hard", lambda: StochasticVectorQuantizer(K, D, hard=True, rngs=rngs)),
        ("temperature", lambda: StochasticVectorQuantizer(K, D, temperature=0.0, rngs=rngs)),
        ("temperature", lambda: GumbelVectorQuantizer(K, D, temperature=-1.0, rngs=rngs)),
        ("temperature_end", lambda: GumbelVectorQuantizer(K, D, temperature_end=0.0, anneal_steps=3, rngs=rngs)),
        ("anneal_steps", lambda: GumbelVectorQuantizer(K, D, temperature_end=0.5, rngs=rngs)),
        ("anneal_steps", lambda: StochasticVectorQuantizer(K, D, temperature_end=0.5, anneal_steps=0, rngs=rngs)),
        ("kl_weight", lambda: GumbelVectorQuantizer(K, D, kl_weight=-0.1, rngs=rngs)),
        ("gumbel_temperature", lambda: StochasticVectorQuantizer(K, D, gumbel_temperature=0, rngs=rngs)),
        ("num_codes", lambda: StochasticVectorQuantizer(0, D, rngs=rngs)),
        ("code_dim", lambda: GumbelVectorQuantizer(K, 0, rngs=rngs)),
        ("key", lambda: StochasticVectorQuantizer(K, D, rngs=rngs)(_z())),
        ("key", lambda: GumbelVectorQuantizer(K, D, rngs=rngs)(_z())),
        ("logits", lambda: kl_to_uniform(jnp.float32(1.0))),
        ("codebook", lambda: gumbel_softmax_code(jnp.zeros((2, K)), jnp.zeros((K + 1, D)), key=jax.random.key(0))),
        ("key", lambda: gumbel_softmax_code(jnp.zeros((2, K)), jnp.zeros((K, D)))),
        ("temperature", lambda: gumbel_softmax_code(jnp.zeros((2, K)), jnp.zeros((K, D)), key=jax.random.key(0),
                                                    temperature=0.0)),
        ("kind", lambda: make_quantizer("gumbel_vq", rngs=rngs)),
    ]
    for name, fn in cases:
        with pytest.raises(ValueError, match=name):
            fn()


def test_make_quantizer_builds_both_kinds():
    q = make_quantizer("stochastic", num_codes=K, code_dim=D, estimator="gumbel", hard=True, temperature_start=2.0,
                       temperature_end=0.5, anneal_steps=10, kl_weight=0.2, rngs=nnx.Rngs(0))
    assert isinstance(q, StochasticVectorQuantizer) and q.hard and q.estimator == "gumbel"
    assert float(q.kl_weight[...]) == pytest.approx(0.2) and q.anneal_steps == 10
    g = make_quantizer("gumbel", num_codes=K, code_dim=D, rngs=nnx.Rngs(0))
    assert isinstance(g, GumbelVectorQuantizer) and float(g.kl_weight[...]) == 1.0  # the module's default
    assert float(make_quantizer("stochastic", rngs=nnx.Rngs(0)).kl_weight[...]) == 0.0


# --------------------------------------------------------------------------- the VQ-VAE experiment

TINY = {"hidden": 8, "residual_hidden": 4, "num_residual": 1}
KINDS = {
    "stochastic": {"kind": "stochastic"},
    "stochastic_gumbel_hard": {"kind": "stochastic", "stochastic": {"estimator": "gumbel", "hard": True}},
    "gumbel": {"kind": "gumbel"},
    "gumbel_hard": {"kind": "gumbel", "stochastic": {"hard": True, "kl_weight": 1.0}},
}


def _config(idx_dir, kind):
    c = vqvae_mnist.get_config()
    c.model.update(TINY)
    c.model.quantizer.codebook.update(num_codes=16, code_dim=4)
    c.model.quantizer.update(KINDS[kind])
    c.model.quantizer.stochastic.anneal_steps = 4
    c.data.update(idx_dir=idx_dir, batch_size=16, eval_batch_size=32)
    c.train.update(steps=2, log_every=1, checkpoint_every=2, eval_every=0, micro_batches=0)
    return c


def _images(idx_dir, n=16):
    src = data.idx_source(idx_dir, "train")
    return jnp.asarray(np.stack([src[i]["image"] for i in range(n)]) / np.float32(255))


@pytest.mark.parametrize("kind", list(KINDS))
def test_vqvae_trains_two_steps_with_each_stochastic_kind(idx_dir, kind):
    config = _config(idx_dir, kind)
    task = vqvae_mnist.build(config)
    assert task.per_example and set(task.state_hparams) == {
        "model.quantizer.stochastic.temperature_start", "model.quantizer.stochastic.temperature_end",
        "model.quantizer.stochastic.kl_weight"}
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    first = jax.device_get(state.params)
    step = training.make_train_step(graphdef, tx, task.objective)
    x = _images(idx_dir)
    for _ in range(2):
        state, m = step(state, {"image": x}, {"model.beta": np.float32(0.25)})
        assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
        np.testing.assert_allclose(m["loss"], m["reconstruction"] + m["codebook"] + m["commitment"], rtol=1e-5)
    # the train step carried τ at its last step (1) in the quantizer's state
    want = quantizers.temperature_schedule(1, start=1.0, end=1 / 16, steps=4)
    np.testing.assert_allclose(state.rest["quantizer"]["temperature"][...], want, rtol=1e-6)
    now = jax.device_get(state.params)
    for path in (("quantizer", "codebook"), ("encoder", "project", "kernel")):  # both learn
        old, new = first, now
        for p in path:
            old, new = old[p], new[p]
        assert not np.allclose(old[...], new[...]), path
    # evaluation: greedy, deterministic
    model = nnx.merge(graphdef, state.params, state.rest)
    model.eval()
    a, b = model(x), model(x)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indices, model.encode(x))
    _, m = objectives.vqvae_objective(model, {"image": x})
    assert np.isfinite(float(m["loss"]))


def test_the_experiment_anneals_the_temperature_from_the_loop_step(idx_dir):
    task = vqvae_mnist.build(_config(idx_dir, "gumbel"))
    model = task.model(nnx.Rngs(0))
    for t in (0, 2, 100):
        task.objective(model, {"image": _images(idx_dir, 4)}, key=jax.random.key(0), step=jnp.int32(t),
                       hparams={"model.beta": jnp.float32(0.25)})
        want = quantizers.temperature_schedule(t, start=1.0, end=1 / 16, steps=4)
        np.testing.assert_allclose(model.quantizer.temperature[...], want, rtol=1e-6)


@pytest.mark.parametrize("kind", ["stochastic", "gumbel_hard"])
def test_the_experiment_trains_evaluates_and_reports(idx_dir, tmp_path, kind):
    config = _config(idx_dir, kind)
    summary = training.train_and_evaluate(config, str(tmp_path), vqvae_mnist.build(config), devices=jax.devices()[:1],
                                          log=lambda s: None)
    test = summary["test"]
    assert np.isfinite(test["loss"]) and 1.0 <= test["perplexity"] <= 16


def test_bad_stochastic_flags_and_old_configs(idx_dir):
    config = _config(idx_dir, "stochastic")
    config.model.quantizer.stochastic.estimator = "reinforce"
    with pytest.raises(ValueError, match=r"quantizer\.stochastic\.estimator"):
        vqvae_mnist.build(config)
    config = _config(idx_dir, "stochastic")
    config.model.quantizer.stochastic.hard = True  # with the straight-through estimator
    with pytest.raises(ValueError, match=r"quantizer\.stochastic\.hard"):
        vqvae_mnist.build(config)
    config = _config(idx_dir, "stochastic")
    config.model.quantizer.stochastic.temperature_end = 0.0
    with pytest.raises(ValueError, match=r"quantizer\.stochastic\.temperature_end"):
        vqvae_mnist.build(config)
    # a config saved before the stochastic block and the regularisers still builds (vq)
    config = _config(idx_dir, "stochastic")
    config.model.quantizer.kind = "vq"
    del config.model.quantizer.stochastic
    for k in ("orthogonality_weight", "entropy_weight", "entropy_temperature", "dead_code_threshold"):
        del config.model.quantizer.codebook[k]
    task = vqvae_mnist.build(config)
    assert task.per_example and task.state_hparams == ()
    task.model(nnx.Rngs(0))


def test_micro_batches_see_the_step_temperature(idx_dir):
    """Only Hyperparameter state: the loop may split a step's batch; each part anneals to the same τ."""
    task = vqvae_mnist.build(_config(idx_dir, "stochastic"))
    tx = optax.adam(1e-3)
    graphdef, state = training.init_train_state(task.model(nnx.Rngs(0)), tx, seed=0)
    from vqjax.training._steps import has_only_hyperparameter_state

    assert has_only_hyperparameter_state(state.rest)
    step = training.make_train_step(graphdef, tx, task.objective, micro_batches=2)
    state, m = step(state, {"image": _images(idx_dir)}, {"model.beta": np.float32(0.25)})
    assert np.isfinite(float(m["loss"])) and int(state.step) == 1
