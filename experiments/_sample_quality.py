"""Score a class-conditional generator of MNIST digits the way the papers do, beside its ceiling
(real images) and its floor (codes drawn uniformly at random, decoded).

- FD: :func:`vqjax.evaluation.frechet_classifier_distance` between N generated images and the N
  first real test images (real ceiling: N real *training* images).
- CAS: :func:`vqjax.evaluation.classification_accuracy_score`, a classifier trained on the N
  generated ``(image, class)`` pairs and tested on the whole real test split (real ceiling: one
  trained on N real training images).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import jax
import numpy as np

from vqjax import evaluation

MNIST_SHAPE = (28, 28, 1)  # the images the shipped classifier (FD, CAS) reads

# sample_fn(labels [N], key) -> images [N, 28, 28, 1] in [0, 1] (any [N, H, W, C] for samples.png)
SampleFn = Callable[[np.ndarray, jax.Array], np.ndarray]


def balanced_labels(n: int, num_classes: int = 10) -> np.ndarray:
    """``[n]`` labels ``0, 1, …, 9, 0, 1, …``: the same number of each class (±1)."""
    return (np.arange(n) % num_classes).astype(np.int32)


def draw(sample_fn: SampleFn, labels: np.ndarray, key: jax.Array, *, batch_size: int = 1000) -> np.ndarray:
    """Images for ``labels``, ``batch_size`` at a time (the last batch padded to keep one shape)."""
    out, batch_size = [], min(batch_size, len(labels))
    for i, start in enumerate(range(0, len(labels), batch_size)):
        chunk = labels[start:start + batch_size]
        padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), chunk.dtype)])
        out.append(np.asarray(sample_fn(padded, jax.random.fold_in(key, i)))[: len(chunk)])
    return np.concatenate(out)


def time_sampling(sample_fn: SampleFn, *, num: int = 1000, key: jax.Array) -> float:
    """Seconds to sample ``num`` images (codes and decoding), after a compiling warm-up call."""
    labels = balanced_labels(num)
    np.asarray(sample_fn(labels, key))
    t = time.perf_counter()
    np.asarray(sample_fn(labels, jax.random.fold_in(key, 1)))
    return time.perf_counter() - t


def score(
    sample_fn: SampleFn,
    uniform_fn: SampleFn,
    *,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_samples: int,
    cas_steps: int,
    key: jax.Array,
    conditional: bool = True,
    log=print,
) -> dict:
    """``{"model" | "real" | "uniform": {"fd", "cas"}}`` for ``num_samples`` images of each.

    An unconditional model (``conditional=False``) gets no CAS (``None``): its samples have no class.
    """
    labels = balanced_labels(num_samples)
    x_test, y_test = test
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(train[0]))[:num_samples]
    sets = {"real": (train[0][pick], train[1][pick])}
    log(f"sampling {num_samples} images from the model and {num_samples} from uniform codes")
    sets["model"] = (draw(sample_fn, labels, jax.random.fold_in(key, 0)), labels)
    sets["uniform"] = (draw(uniform_fn, labels, jax.random.fold_in(key, 1)), labels)
    classifier = evaluation.load_classifier()
    result = {}
    for name, (x, y) in sets.items():
        fd = evaluation.frechet_classifier_distance(x, x_test[:num_samples], classifier=classifier)
        if name == "model" and not conditional:
            result[name] = {"fd": round(fd, 3), "cas": None}
            log(f"{name}: FD {fd:.2f}  (unconditional: no CAS)")
            continue
        cas = evaluation.classification_accuracy_score(x, y, x_test, y_test, steps=cas_steps)
        result[name] = {"fd": round(fd, 3), "cas": round(cas, 4)}
        log(f"{name}: FD {fd:.2f}  CAS {cas:.4f}")
    return result


def report(sample_fn: SampleFn, uniform_fn: SampleFn, sample_config, data_config, workdir: str, *,
           key: jax.Array, conditional: bool, log=print) -> dict:
    """What both generation experiments do after training: ``samples.png`` (``per_class`` columns, one
    row per class), the time to sample ``time_samples`` images and, if ``score_samples``, :func:`score`."""
    from experiments.mnist_classifier import load_split
    from vqjax import viz

    per_class = int(sample_config.per_class)
    labels = np.repeat(np.arange(10), per_class).astype(np.int32)
    samples = np.asarray(sample_fn(labels, key))
    viz.save_png(os.path.join(workdir, "samples.png"), viz.image_grid(samples, ncols=per_class))
    n = int(sample_config.time_samples)
    out = {f"seconds_to_sample_{n}": round(time_sampling(sample_fn, num=n, key=key), 2)}
    if sample_config.score_samples and samples.shape[1:] != MNIST_SHAPE:
        log(f"FD and CAS skipped: they use the shipped MNIST classifier (28×28×1 digits); these samples are "
            f"{samples.shape[1:]}.")
    elif sample_config.score_samples:
        train, test = (load_split(data_config, split, log=lambda m: None)[:2] for split in ("train", "test"))
        out["sample_quality"] = score(sample_fn, uniform_fn, train=train, test=test,
                                      num_samples=int(sample_config.score_samples),
                                      cas_steps=int(sample_config.cas_steps), key=key, conditional=conditional,
                                      log=log)
    return out
