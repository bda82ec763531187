"""Neural networks: the β-VAE (architecture chosen by input shape) and the emotion LSTM."""

from pipeline.models.sequence import EmotionLSTM, evaluate_classifier, mask_factors
from pipeline.models.vae import ARCHITECTURES, LIKELIHOODS, BetaVAE, VAEConfig, check_keep_mask

__all__ = [
    "ARCHITECTURES",
    "LIKELIHOODS",
    "BetaVAE",
    "EmotionLSTM",
    "VAEConfig",
    "check_keep_mask",
    "evaluate_classifier",
    "mask_factors",
]
