"""Every config value is checked when a program starts, each error naming its flag (no training here)."""

import importlib
import math
import re

import ml_collections
import pytest

from experiments import sweep as sweep_cli
from experiments import vqvae_mnist
from experiments.configs import common
from vqjax import training

EXPERIMENTS = ["vae_mnist", "vqvae_mnist", "vqvae2_mnist", "vqvae_prior_mnist", "vib_mnist", "vae_rate_distortion",
               "oivae", "mnist_classifier", "vqvae_codebooks", "quantization_theory"]


def _module(name):
    return importlib.import_module(f"experiments.{name}")


def _with(config, path, value):
    """``config`` with ``path`` set to ``value`` of any type (as a saved JSON config or a placeholder can
    hold; a ConfigDict's own type checks would refuse some of them)."""
    d = config.to_dict()
    *parents, leaf = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[leaf] = value
    return ml_collections.ConfigDict(d)


def _flag(path):
    return re.escape(f"`--config.{path}`")


# --------------------------------------------------------------------------- coverage


def test_every_experiment_has_every_field_checked():
    for name in EXPERIMENTS:
        module = _module(name)
        config = module.get_config()
        assert training.unchecked_fields(config, module.CONFIG_RULES) == [], name
        assert training.unknown_rules(config, module.CONFIG_RULES) == [], name  # no misspelt rule path
        assert callable(module.check_config), name


def test_the_shared_rules_cover_the_shared_blocks():
    config = common.base_config()
    assert training.unchecked_fields(config, training.CONFIG_RULES) == []
    assert training.unknown_rules(config, training.CONFIG_RULES) == []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_defaults_pass(name):
    module = _module(name)
    module.check_config(module.get_config())
    assert training.problems(module.get_config(), module.CONFIG_RULES) == []


def test_every_variant_of_the_codebook_comparison_passes():
    from experiments import vqvae_codebooks

    c = vqvae_codebooks.get_config()
    assert set(c.variants) == set(vqvae_codebooks.VARIANTS)
    assert vqvae_codebooks.check_variants(c) == []


# --------------------------------------------------------------------------- one field each

BAD = [
    # the shared blocks (the examples first)
    ("vqvae_mnist", "train.log_every", 0, "an integer >= 1"),
    ("vqvae_mnist", "train.checkpoint_every", 0, "an integer >= 1"),
    ("vqvae_mnist", "optimizer.learning_rate", -1e-3, "a finite number > 0"),
    ("vqvae_mnist", "optimizer.learning_rate", math.nan, "got nan"),
    ("vqvae_mnist", "optimizer.learning_rate", math.inf, "a finite number > 0"),
    ("vqvae_mnist", "optimizer.learning_rate", 0.0, "> 0"),
    ("vqvae_mnist", "optimizer.warmup_steps", -1, ">= 0"),
    ("vqvae_mnist", "optimizer.schedule", "linear", "one of ('constant', 'cosine')"),
    ("vqvae_mnist", "train.steps", 0, ">= 1"),
    ("vqvae_mnist", "train.eval_every", -1, ">= 0"),
    ("vqvae_mnist", "train.keep_checkpoints", 0, ">= 1"),
    ("vqvae_mnist", "train.log_every", 2.5, "an integer"),  # a float where an int is required
    ("vqvae_mnist", "train.steps", 100.0, "an integer"),  # even an integral one
    ("vqvae_mnist", "train.log_every", True, "an integer"),  # a bool is no int
    ("vqvae_mnist", "data.batch_size", 0, ">= 1"),
    ("vqvae_mnist", "data.eval_batch_size", -5, ">= 1"),
    ("vqvae_mnist", "data.seed", -2, ">= -1"),
    ("vqvae_mnist", "data.dataset", "", "a non-empty string"),
    ("vqvae_mnist", "data.idx_dir", 3, "a path"),
    ("vqvae_mnist", "seed", -1, ">= 0"),
    ("vqvae_mnist", "cpu_devices_per_core", 1, "True or False"),
    # the VQ-VAE and every quantizer's settings, whatever the kind
    ("vqvae_mnist", "model.quantizer.kind", "pq", "one of ('vq', 'ema', 'fsq', 'residual'"),
    ("vqvae_mnist", "model.quantizer.fsq.levels", (1,), "each item an integer >= 2"),
    ("vqvae_mnist", "model.quantizer.fsq.levels", (), "a non-empty tuple"),
    ("vqvae_mnist", "model.quantizer.fsq.levels", (8, 2.5), "each item an integer"),
    ("vqvae_mnist", "model.quantizer.fsq.levels", 8, "a non-empty tuple"),
    ("vqvae_mnist", "model.quantizer.ema.decay", 1.5, "in [0, 1)"),
    ("vqvae_mnist", "model.quantizer.ema.decay", 1.0, "in [0, 1)"),
    ("vqvae_mnist", "model.quantizer.ema.eps", 0.0, "> 0"),
    ("vqvae_mnist", "model.quantizer.ema.dead_code_threshold", -1.0, ">= 0"),
    ("vqvae_mnist", "model.quantizer.codebook.init", "zeros", "one of ('uniform', 'lloyd')"),
    ("vqvae_mnist", "model.quantizer.codebook.num_codes", 0, ">= 1"),
    ("vqvae_mnist", "model.quantizer.codebook.cosine", 1, "True or False"),
    ("vqvae_mnist", "model.quantizer.residual.num_stages", 0, ">= 1"),
    ("vqvae_mnist", "model.quantizer.residual.ema", "no", "True or False"),
    ("vqvae_mnist", "model.beta", -0.1, ">= 0"),
    ("vqvae_mnist", "model.beta", True, "a finite number"),  # a bool where a number is required
    ("vqvae_mnist", "model.likelihood", "poisson", "one of ('bernoulli', 'gaussian', 'discretized_logistic')"),
    ("vqvae_mnist", "model.downsample", 0, "an integer >= 1"),
    ("vae_mnist", "model.downsample", 1.5, "an integer"),
    ("vqvae_mnist", "model.hidden", 63, "an even integer >= 2"),
    ("vqvae_mnist", "model.hidden", 64.0, "an even integer"),
    ("vqvae_mnist", "model.num_residual", -1, ">= 0"),
    # VQ-VAE-2: one-stage kinds; the prior's blocks under `prior`
    ("vqvae2_mnist", "model.quantizer.kind", "residual", "one of ('vq', 'ema', 'fsq')"),
    ("vqvae2_mnist", "model.quantizer.ema.decay", -0.1, "in [0, 1)"),
    ("vqvae2_mnist", "prior.train.log_every", 0, ">= 1"),
    ("vqvae2_mnist", "prior.optimizer.learning_rate", 0.0, "> 0"),
    ("vqvae2_mnist", "prior.sample.score_samples", 1, "0 or an integer >= 2"),
    ("vqvae2_mnist", "prior.model.num_layers", 0, ">= 1"),
    ("vqvae2_mnist", "prior.model.class_conditional", "yes", "True or False"),
    # the PixelCNN prior and the VQ-VAE it trains first under `vqvae`
    ("vqvae_prior_mnist", "model.kernel_size", 4, "an odd integer >= 3"),
    ("vqvae_prior_mnist", "sample.temperature", -1.0, ">= 0"),
    ("vqvae_prior_mnist", "sample.per_class", 0, ">= 1"),
    ("vqvae_prior_mnist", "vqvae.train.log_every", 0, ">= 1"),
    ("vqvae_prior_mnist", "vqvae.model.quantizer.fsq.levels", (8, 1), "each item an integer >= 2"),
    ("vqvae_prior_mnist", "vqvae_workdir", 7, "a path"),
    # the VAE: every objective's and likelihood's settings
    ("vae_mnist", "model.likelihood", "poisson", "one of ('bernoulli', 'discretized_logistic')"),
    ("vae_mnist", "model.objective", "wae", "one of ('vae', 'beta_vae', 'info_vae')"),
    ("vae_mnist", "model.arch", "resnet", "one of ('mlp', 'conv')"),
    ("vae_mnist", "model.kernel", "laplace", "one of ('imq', 'rbf')"),
    ("vae_mnist", "model.info_lambda", 0.0, "> 0"),
    ("vae_mnist", "model.info_alpha", 1.5, "<= 1"),
    ("vae_mnist", "model.capacity_max", -1.0, ">= 0"),
    ("vae_mnist", "model.capacity_steps", -1, ">= 0"),
    ("vae_mnist", "model.latents", 0, ">= 1"),
    ("vae_mnist", "eval.iwae_chunk", 0, ">= 1"),
    ("vae_mnist", "eval.iwae_samples", -1, ">= 0"),
    ("vae_mnist", "eval.traversal_range", 0.0, "> 0"),
    ("vae_mnist", "data.dynamic_binarization", "no", "True or False"),
    ("vae_rate_distortion", "betas", ("a",), "each item a finite number >= 0"),
    ("vae_rate_distortion", "model.beta", -1.0, ">= 0"),
    # the VIB (β = inf is accepted: that run diverges and is marked)
    ("vib_mnist", "model.num_classes", 1, ">= 2"),
    ("vib_mnist", "betas", (1.0, -1.0), "each item a number >= 0"),
    ("vib_mnist", "model.hidden", (0,), "each item an integer >= 1"),
    ("vib_mnist", "model.beta", math.nan, ">= 0"),
    ("vib_mnist", "model.num_eval_samples", 0, ">= 1"),
    # the oi-VAE
    ("oivae", "data.dataset", "cifar", "one of ('bars', 'mnist')"),
    ("oivae", "model.groups", "columns", "'rows', 'grid<R>x<C>', named regions as JSON or 'auto'"),
    ("oivae", "model.groups", '{"a": [[0, 4]', "named regions as JSON"),
    ("oivae", "model.generator_hidden", "(32, -4)", "widths >= 1"),
    ("oivae", "model.variance", -1.0, ">= 0"),
    ("oivae", "model.w_optimizer", "lion", "one of ('adam', 'sgd')"),
    ("oivae", "model.w_learning_rate", 0.0, "> 0"),
    ("oivae", "model.generator_prior_scale", -2.0, "-1.0 or a finite number >= 0"),
    ("oivae", "model.group_lasso", -0.1, ">= 0"),
    ("oivae", "lambdas", (-1.0,), "each item a finite number >= 0"),
    ("oivae", "model.decoder", "conv", "one of ('grouped', 'mlp')"),
    # the rest
    ("mnist_classifier", "allow_embedded", "yes", "True or False"),
    ("vqvae_codebooks", "variants", ("vq", "nope"), "each item one of"),
    ("vqvae_codebooks", "variants", (), "a non-empty tuple"),
    ("vqvae_codebooks", "base.train.log_every", 0, ">= 1"),
    ("vqvae_codebooks", "base.model.quantizer.ema.decay", 1.5, "in [0, 1)"),
    ("quantization_theory", "vq.rho", 1.0, "in (-1, 1)"),
    ("quantization_theory", "threads", 0, ">= 1"),
    ("quantization_theory", "table.levels", (0, 2), "each item an integer >= 1"),
    ("quantization_theory", "plots.grid", 1, ">= 2"),
    ("quantization_theory", "vq.tol", -1e-6, ">= 0"),
]


@pytest.mark.parametrize("name, path, value, expected", BAD, ids=[f"{n}:{p}={v!r}" for n, p, v, _ in BAD])
def test_a_bad_value_names_its_flag(name, path, value, expected):
    module = _module(name)
    config = _with(module.get_config(), path, value)
    with pytest.raises(ValueError, match=_flag(path) + " must be ") as err:
        module.check_config(config)
    assert expected in str(err.value) and f"got {value!r}" in str(err.value)
    assert len(str(err.value).splitlines()) == 1  # only that field


def test_every_bad_value_is_listed_at_once():
    c = _with(_with(vqvae_mnist.get_config(), "train.log_every", 0), "train.checkpoint_every", 0)
    c = _with(c, "model.quantizer.fsq.levels", (1,))
    with pytest.raises(ValueError) as err:
        vqvae_mnist.check_config(c)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    for path in ("train.log_every", "train.checkpoint_every", "model.quantizer.fsq.levels"):
        assert any(line.startswith(f"`--config.{path}` must be ") for line in lines), path


# --------------------------------------------------------------------------- between fields

CROSS = [
    ("vqvae_mnist", {"model.quantizer.kind": "fsq", "model.quantizer.codebook.init": "lloyd"},
     "`--config.model.quantizer.codebook.init`='lloyd' needs a codebook; `--config.model.quantizer.kind` is 'fsq'"),
    ("vqvae_mnist", {"model.quantizer.kind": "fsq", "model.quantizer.fsq.lloyd_max": True,
                     "model.quantizer.fsq.levels": (8, 5)}, "`--config.model.quantizer.fsq.levels` must all be equal"),
    ("vqvae_mnist", {"model.quantizer.kind": "fsq", "model.quantizer.fsq.levels": (2**16, 2**16)},
     "at most 2**31 - 1"),
    ("vqvae2_mnist", {"model.quantizer.kind": "fsq", "model.quantizer.fsq.lloyd_max": True,
                      "model.quantizer.fsq.levels": (8, 5)}, "`--config.model.quantizer.fsq.levels` must all be equal"),
    ("vqvae_prior_mnist", {"vqvae.model.quantizer.kind": "fsq", "vqvae.model.quantizer.codebook.init": "lloyd"},
     "`--config.vqvae.model.quantizer.codebook.init`='lloyd' needs a codebook"),
    ("vqvae_prior_mnist", {"vqvae.model.quantizer.kind": "residual"},
     "`--config.vqvae.model.quantizer.kind` must give one code per latent position"),
    ("vae_mnist", {"model.likelihood": "discretized_logistic"},
     "set `--config.data.dynamic_binarization`=False"),
    ("vae_mnist", {"model.objective": "info_vae", "model.info_alpha": 0.0, "model.info_lambda": 0.5},
     "`--config.model.info_alpha` + `--config.model.info_lambda` - 1 must be >= 0"),
    ("vae_rate_distortion", {"model.objective": "vae"}, "`--config.model.objective` must be 'beta_vae'"),
    ("oivae", {"model.decoder": "mlp", "lambdas": (0.0, 1.0)}, "sweeps the group lasso of the grouped decoder"),
    ("oivae", {"model.groups": '{"a": [[0, 5], [0, 8]], "b": [[4, 8], [0, 8]]}'},
     "`--config.model.groups`="),
    ("oivae", {"model.groups": "grid3x3"}, "does not fit the bars images"),
    ("vqvae_codebooks", {"base.model.quantizer.codebook.init": "lloyd"},
     "variant 'fsq5555': `--config.base.model.quantizer.codebook.init`='lloyd' needs a codebook"),
    ("quantization_theory", {"dp.num_samples": 16}, "`--config.dp.num_samples` must be >= the largest"),
    ("quantization_theory", {"vq.train_samples": 32}, "`--config.vq.train_samples` must be >= the largest codebook"),
]


@pytest.mark.parametrize("name, changes, expected", CROSS, ids=[f"{n}:{','.join(c)}" for n, c, _ in CROSS])
def test_fields_that_do_not_go_together(name, changes, expected):
    module = _module(name)
    config = module.get_config()
    for path, value in changes.items():
        config = _with(config, path, value)
    with pytest.raises(ValueError) as err:
        module.check_config(config)
    assert expected in str(err.value)


def test_cross_field_checks_wait_for_the_fields_to_pass():
    """A malformed field is reported by its rule; the checks between fields, which assume well-typed
    values, do not run (and do not crash)."""
    c = _with(vqvae_mnist.get_config(), "model.quantizer.kind", "fsq")
    c = _with(_with(c, "model.quantizer.fsq.levels", "8,8"), "model.quantizer.codebook.init", "lloyd")
    with pytest.raises(ValueError) as err:
        vqvae_mnist.check_config(c)
    assert str(err.value).startswith("`--config.model.quantizer.fsq.levels` must be a non-empty tuple")
    assert "needs a codebook" not in str(err.value)


# --------------------------------------------------------------------------- the rules themselves


def test_rules():
    assert training.integer(min=1)(1) is None and training.integer(min=1)(0) == "an integer >= 1"
    assert training.integer()(True) and training.integer()(2.0) and training.integer()(3) is None
    assert training.number(min=0)(True) and training.number()(math.nan) and training.number()(-math.inf)
    assert training.number(min=0, allow_inf=True)(math.inf) is None and training.number(min=0)(2) is None
    assert training.number(min=0, max=1, max_open=True)(1.0) == "a finite number in [0, 1)"
    assert training.boolean()(0) and training.boolean()(False) is None
    assert training.one_of(1, 2)(True) and training.one_of("a", "b")("b") is None
    assert training.string()(None) and training.path()(None) is None and training.path()("") is None
    assert training.int_sequence(min=2)([2, 3]) is None and training.int_sequence(min=2)("22")
    assert training.sequence(training.one_of("x"))(()) is None
    either = training.any_of(training.one_of(0), training.integer(min=2))
    assert either(0) is None and either(5) is None and either(1) == "0 or an integer >= 2"
    assert training.satisfies(lambda v: v.startswith("a"), "a word in a")(3) == "a word in a"  # raised: not ok
    assert training.nested("vqvae", {"seed": either}) == {"vqvae.seed": either}


def test_paths_the_config_lacks_are_skipped_and_fields_without_rules_listed():
    config = ml_collections.ConfigDict({"train": {"steps": 0}, "extra": {"x": 1, "y": (1, 2)}})
    with pytest.raises(ValueError, match=_flag("train.steps")):
        training.validate(config, training.CONFIG_RULES)  # no data, optimizer, ... blocks: skipped
    assert training.unchecked_fields(config, training.CONFIG_RULES) == ["extra.x", "extra.y"]
    with pytest.raises(ValueError, match=re.escape("`--config.vqvae.train.steps` must be")):
        training.validate(ml_collections.ConfigDict({"vqvae": config}), training.nested("vqvae", training.CONFIG_RULES))


# --------------------------------------------------------------------------- at program start


def test_build_refuses_a_bad_config():
    from experiments import vae_mnist, vib_mnist

    for module, path, value in ((vqvae_mnist, "train.log_every", 0), (vae_mnist, "model.kernel", "laplace"),
                                (vib_mnist, "model.num_eval_samples", 0)):
        with pytest.raises(ValueError, match=_flag(path)):
            module.build(_with(module.get_config(), path, value))


def test_the_sweep_cli_rejects_a_bad_member_before_training():
    config = vqvae_mnist.get_config()
    sweep = training.values("model.beta", [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, -1.0])
    members = training.make_members(config, sweep)
    sweep_cli.check_members(vqvae_mnist, members[:6])  # the good ones pass
    with pytest.raises(ValueError) as err:
        sweep_cli.check_members(vqvae_mnist, members)
    message = str(err.value)
    assert message.startswith("Sweep member 6 (model.beta=-1): `--config.model.beta` must be a finite number >= 0")
    assert len(message.splitlines()) == 1
    bad = training.make_members(config, training.values("model.quantizer.ema.decay", [0.9, 1.5, 2.0]))
    with pytest.raises(ValueError) as err:
        sweep_cli.check_members(vqvae_mnist, bad)
    assert [line.split(":")[0] for line in str(err.value).splitlines()] == [
        "Sweep member 1 (model.quantizer.ema.decay=1.5)", "Sweep member 2 (model.quantizer.ema.decay=2)"]


def test_the_sweep_cli_checks_the_shared_blocks_of_a_module_without_rules():
    class Bare:  # an experiment file that declares no rules of its own
        pass

    members = training.make_members(vqvae_mnist.get_config(), training.values("train.log_every", [10, 0]))
    with pytest.raises(ValueError, match=re.escape("Sweep member 1 (train.log_every=0): `--config.train.log_every`")):
        sweep_cli.check_members(Bare, members)


def test_train_and_evaluate_refuses_log_every_0_before_touching_the_workdir(tmp_path):
    config = vqvae_mnist.get_config()
    task = vqvae_mnist.build(config)
    config.train.log_every = 0
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=_flag("train.log_every") + re.escape(" must be an integer >= 1; got 0.")):
        training.train_and_evaluate(config, str(workdir), task, log=lambda s: None)
    assert not workdir.exists() and list(tmp_path.iterdir()) == []
