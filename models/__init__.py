"""Keras only: the custom layers and the builders of the autoencoder and the VAE."""

from models.builders import (
    ModelSpec,
    build_autoencoder,
    build_decoder,
    build_encoder,
    build_vae,
    load_model,
    submodel,
)
from models.layers import KLDivergence, Sampling, SummedBinaryCrossentropy, kl_divergence

__all__ = [
    "KLDivergence",
    "ModelSpec",
    "Sampling",
    "SummedBinaryCrossentropy",
    "build_autoencoder",
    "build_decoder",
    "build_encoder",
    "build_vae",
    "kl_divergence",
    "load_model",
    "submodel",
]
