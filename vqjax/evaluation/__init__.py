"""Evaluation: sample quality on MNIST (a shipped feature classifier, the Fréchet distance and the
Classification Accuracy Score) and the recovery of a known latent-to-group structure."""

from vqjax.evaluation._classifier import (
    SHIPPED_WEIGHTS,
    MNISTClassifier,
    features,
    fit_classifier,
    load_classifier,
    predict,
    save_classifier,
)
from vqjax.evaluation._frechet import frechet_distance, gaussian_statistics
from vqjax.evaluation._scores import classification_accuracy_score, frechet_classifier_distance
from vqjax.evaluation._structure import StructureRecovery, structure_recovery

__all__ = [
    "MNISTClassifier", "fit_classifier", "predict", "features", "save_classifier", "load_classifier",
    "SHIPPED_WEIGHTS", "gaussian_statistics", "frechet_distance", "frechet_classifier_distance",
    "classification_accuracy_score", "StructureRecovery", "structure_recovery",
]
