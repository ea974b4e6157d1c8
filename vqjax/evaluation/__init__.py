"""Evaluation: sample quality on MNIST (a shipped feature classifier, the Fréchet distance and the
Classification Accuracy Score), reconstruction quality of any images (PSNR, SSIM) and the recovery
of a known latent-to-group structure."""

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
from vqjax.evaluation._image_quality import psnr, ssim
from vqjax.evaluation._scores import classification_accuracy_score, frechet_classifier_distance
from vqjax.evaluation._structure import StructureRecovery, structure_recovery

__all__ = [
    "SHIPPED_WEIGHTS",
    "MNISTClassifier",
    "StructureRecovery",
    "classification_accuracy_score",
    "features",
    "fit_classifier",
    "frechet_classifier_distance",
    "frechet_distance",
    "gaussian_statistics",
    "load_classifier",
    "predict",
    "psnr",
    "save_classifier",
    "ssim",
    "structure_recovery",
]
