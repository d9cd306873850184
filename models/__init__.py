"""Keras only: the custom layers and the builders of the autoencoder, the VAE and the compact
decoder."""

from models.builders import (
    CompactSpec,
    DetectorSpec,
    ModelSpec,
    build_autoencoder,
    build_compact_decoder,
    build_decoder,
    build_detector,
    build_encoder,
    build_vae,
    load_model,
    submodel,
)
from models.layers import (
    ClassCrossEntropy,
    KLDivergence,
    Sampling,
    SummedBinaryCrossentropy,
    kl_divergence,
    sine,
)

__all__ = [
    "ClassCrossEntropy",
    "CompactSpec",
    "DetectorSpec",
    "KLDivergence",
    "ModelSpec",
    "Sampling",
    "SummedBinaryCrossentropy",
    "build_autoencoder",
    "build_compact_decoder",
    "build_decoder",
    "build_detector",
    "build_encoder",
    "build_vae",
    "kl_divergence",
    "load_model",
    "sine",
    "submodel",
]
