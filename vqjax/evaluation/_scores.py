"""Sample-quality scores for class-conditional MNIST generators.

- :func:`frechet_classifier_distance`: the Fréchet distance between Gaussians fitted to the shipped
  classifier's features of two image sets (FID with an MNIST network instead of Inception).
- :func:`classification_accuracy_score`: CAS (Ravuri & Vinyals, 2019; the VQ-VAE-2 paper's §4.2):
  train a classifier only on generated ``(image, class)`` pairs, report its accuracy on real test
  images. It is high only if samples are recognisable *and* of the class asked for.
"""

from __future__ import annotations

import numpy as np

from vqjax.evaluation._classifier import MNISTClassifier, features, fit_classifier, load_classifier, predict
from vqjax.evaluation._frechet import frechet_distance, gaussian_statistics

__all__ = ["classification_accuracy_score", "frechet_classifier_distance"]


def frechet_classifier_distance(images_a: np.ndarray, images_b: np.ndarray, *,
                                classifier: MNISTClassifier | None = None) -> float:
    """Fréchet distance between the classifier features of ``images_a`` and ``images_b``
    (each ``[N, 28, 28, 1]`` in [0, 1]; default: the shipped classifier)."""
    classifier = load_classifier() if classifier is None else classifier
    stats = [gaussian_statistics(features(classifier, np.asarray(x, np.float32)).astype(np.float64))
             for x in (images_a, images_b)]
    return float(frechet_distance(*stats[0], *stats[1]))


def classification_accuracy_score(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    steps: int = 2000,
    seed: int = 0,
) -> float:
    """Accuracy on ``test`` of a fresh :class:`MNISTClassifier` fitted (:func:`fit_classifier`) to
    ``train`` only; with generated train images this is the CAS, with real ones its ceiling."""
    model = fit_classifier(train_images, train_labels, steps=steps, seed=seed)
    return float(np.mean(predict(model, np.asarray(test_images, np.float32)) == np.asarray(test_labels)))
