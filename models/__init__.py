"""Keras only: the custom layers and the builders of the autoencoder, the VAE and the compact
decoder."""

from models.builders import (
    CompactSpec,
    ModelSpec,
    build_autoencoder,
    build_compact_decoder,
    build_decoder,
    build_encoder,
    build_vae,
    load_model,
    submodel,
)
from models.layers import KLDivergence, Sampling, SummedBinaryCrossentropy, kl_divergence, sine

__all__ = [
    "CompactSpec",
    "KLDivergence",
    "ModelSpec",
    "Sampling",
    "SummedBinaryCrossentropy",
    "build_autoencoder",
    "build_compact_decoder",
    "build_decoder",
    "build_encoder",
    "build_vae",
    "kl_divergence",
    "load_model",
    "sine",
    "submodel",
]
