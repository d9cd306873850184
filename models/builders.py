"""Builders for the named functional models: encoders, decoders, the autoencoder and the VAE.

    ae = build_autoencoder(ModelSpec(architecture="mlp", latent_dim=2))
    vae = build_vae(ModelSpec(architecture="conv", latent_dim=2), seed=1234)
    denoiser = build_autoencoder(ModelSpec(latent_dim=128), name="denoiser", prefix="denoiser")
    compact = build_compact_decoder(CompactSpec(latent_dim=2))   # z -> pixels, 84k weights
    detector = build_detector(DetectorSpec(latent_dim=8), seed=1234)  # [images, labels] -> pixels

Every model takes images (n, 28, 28) float32 in [0, 1]; decoders return pixels (n, 28, 28) in
[0, 1] (sigmoid). The tensor names (`images`, `z`, `z_mean`, `z_log_var`, `pixels`) are the ones
the ONNX export keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from models.layers import ClassCrossEntropy, KLDivergence, Sampling, sine

IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class ModelSpec:
    """What the builders need to know; mirrors the ``[model]`` config section."""

    architecture: str = "mlp"  # "mlp" | "conv"
    latent_dim: int = 2
    hidden_units: tuple[int, ...] = (1024, 512, 256, 128)
    conv_filters: tuple[int, ...] = (32, 64)
    beta: float = 1.0
    dropout: float = 0.0  # mlp: dropout after every hidden Dense layer while training

    def __post_init__(self) -> None:
        if self.architecture not in ("mlp", "conv"):
            raise ValueError(
                f"architecture must be 'mlp' or 'conv'. Received: architecture={self.architecture!r}"
            )
        if self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be positive. Received: latent_dim={self.latent_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")


@dataclass(frozen=True)
class CompactSpec:
    """The compact decoder's shape; mirrors the ``[compact]`` config section's model keys."""

    latent_dim: int = 2
    fourier_units: int = 64  # sin(W z + b): W ~ N(0, fourier_scale^2) at init, b ~ U(-pi, pi)
    fourier_scale: float = 4.0
    hidden_units: tuple[int, ...] = (128, 128)
    rank: int = 64  # a linear bottleneck in front of the 784 logits; 0 for none

    def __post_init__(self) -> None:
        for key in ("latent_dim", "fourier_units"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive. Received: {key}={getattr(self, key)}")
        if self.rank < 0:
            raise ValueError(f"rank must be >= 0. Received: rank={self.rank}")


@dataclass(frozen=True)
class DetectorSpec:
    """The anomaly detector's class-conditional VAE; mirrors the ``[detector]`` section."""

    latent_dim: int = 8  # the style of a digit; its class is told apart by the encoder's head
    hidden_units: tuple[int, ...] = (512, 256)  # encoder widths (the decoder mirrors them)
    class_weight: float = 10.0  # of the class cross-entropy, beside the negative ELBO
    classes: int = 10

    def __post_init__(self) -> None:
        if self.latent_dim <= 0 or not self.hidden_units or min(self.hidden_units) <= 0:
            raise ValueError(
                f"latent_dim and hidden_units must be positive. Received: {self.latent_dim}, "
                f"{self.hidden_units}"
            )


def _dropout(x: keras.KerasTensor, spec: ModelSpec, name: str) -> keras.KerasTensor:
    """Dropout at ``spec.dropout`` (none at 0); identity at inference, so ONNX graphs omit it."""
    return layers.Dropout(spec.dropout, name=name)(x) if spec.dropout > 0 else x


def _encoder_trunk(images: keras.KerasTensor, spec: ModelSpec) -> keras.KerasTensor:
    """images (n, 28, 28) -> features (n, k)."""
    if spec.architecture == "mlp":
        x = layers.Flatten(name="flatten")(images)
        for i, units in enumerate(spec.hidden_units):
            x = layers.Dense(units, activation="relu", name=f"enc_dense_{i}")(x)
            x = _dropout(x, spec, f"enc_dropout_{i}")
        return x
    x = layers.Reshape((28, 28, 1), name="add_channel")(images)
    for i, filters in enumerate(spec.conv_filters):
        x = layers.Conv2D(
            filters, 3, strides=2, padding="same", activation="relu", name=f"enc_conv_{i}"
        )(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(spec.hidden_units[-1], activation="relu", name="enc_dense")(x)


def _decoder_body(z: keras.KerasTensor, spec: ModelSpec) -> keras.KerasTensor:
    """z (n, latent_dim) -> pixels (n, 28, 28) in [0, 1]."""
    if spec.architecture == "mlp":
        x = z
        for i, units in enumerate(reversed(spec.hidden_units)):
            x = layers.Dense(units, activation="relu", name=f"dec_dense_{i}")(x)
            x = _dropout(x, spec, f"dec_dropout_{i}")
        x = layers.Dense(28 * 28, activation="sigmoid", name="dec_pixels")(x)
        return layers.Reshape(IMAGE_SHAPE, name="pixels")(x)
    filters = list(reversed(spec.conv_filters))
    side = 28 // 2 ** len(filters)
    x = layers.Dense(spec.hidden_units[-1], activation="relu", name="dec_dense")(z)
    x = layers.Dense(side * side * filters[0], activation="relu", name="dec_project")(x)
    x = layers.Reshape((side, side, filters[0]), name="dec_reshape")(x)
    for i, f in enumerate(filters):
        x = layers.Conv2DTranspose(
            f, 3, strides=2, padding="same", activation="relu", name=f"dec_deconv_{i}"
        )(x)
    x = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="dec_pixels")(x)
    return layers.Reshape(IMAGE_SHAPE, name="pixels")(x)


def build_encoder(
    spec: ModelSpec, variational: bool = False, name: str | None = None
) -> keras.Model:
    """images (n, 28, 28) -> z (n, latent_dim), or [z_mean, z_log_var] when ``variational``.

    name: the model's name (default ``ae_encoder`` or ``vae_encoder``).
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = _encoder_trunk(images, spec)
    if not variational:
        z = layers.Dense(spec.latent_dim, name="z")(x)
        return keras.Model(images, z, name=name or "ae_encoder")
    z_mean = layers.Dense(spec.latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(spec.latent_dim, name="z_log_var")(x)
    return keras.Model(images, [z_mean, z_log_var], name=name or "vae_encoder")


def build_decoder(
    spec: ModelSpec, variational: bool = False, name: str | None = None
) -> keras.Model:
    """z (n, latent_dim) -> pixels (n, 28, 28) in [0, 1].

    name: the model's name (default ``ae_decoder`` or ``vae_decoder``).
    """
    z = keras.Input((spec.latent_dim,), name="z")
    pixels = _decoder_body(z, spec)
    return keras.Model(z, pixels, name=name or ("vae_decoder" if variational else "ae_decoder"))


def build_autoencoder(
    spec: ModelSpec, name: str = "autoencoder", prefix: str = "ae"
) -> keras.Model:
    """images (n, 28, 28) -> reconstruction (n, 28, 28); encoder and decoder are its sub-models.

    The sub-models are named ``{prefix}_encoder`` and ``{prefix}_decoder`` (see ``submodel``).
    """
    encoder = build_encoder(spec, name=f"{prefix}_encoder")
    decoder = build_decoder(spec, name=f"{prefix}_decoder")
    images = keras.Input(IMAGE_SHAPE, name="images")
    return keras.Model(images, decoder(encoder(images)), name=name)


def build_vae(spec: ModelSpec, seed: int | None = None, prefix: str = "vae") -> keras.Model:
    """images (n, 28, 28) -> reconstruction (n, 28, 28) decoded from a sampled z.

    The KL term enters the loss through the ``KLDivergence`` layer; compile with a summed
    reconstruction loss (``SummedBinaryCrossentropy``) so the total is the negative ELBO in nats.
    The sub-models are named ``{prefix}_encoder`` and ``{prefix}_decoder``.
    """
    encoder = build_encoder(spec, variational=True, name=f"{prefix}_encoder")
    decoder = build_decoder(spec, variational=True, name=f"{prefix}_decoder")
    images = keras.Input(IMAGE_SHAPE, name="images")
    z_mean, z_log_var = encoder(images)
    z_mean, z_log_var = KLDivergence(beta=spec.beta, name="kl_divergence")([z_mean, z_log_var])
    z = Sampling(seed=seed, name="sampling")([z_mean, z_log_var])
    return keras.Model(images, decoder(z), name=prefix)


def build_detector(spec: DetectorSpec, seed: int | None = None) -> keras.Model:
    """[images (n, 28, 28), labels (n, classes) one-hot] -> pixels (n, 28, 28): a VAE whose
    decoder is told the digit's class (Kingma et al. 2014's M2 with the labels observed).

    Sub-models: ``detector_encoder``, images -> [z_mean, z_log_var, class_logits], and
    ``detector_decoder``, z_class (n, latent_dim + classes) = [z, one-hot class] -> pixels. The
    KL term and ``class_weight`` times the class cross-entropy enter the loss through layers;
    compile with ``SummedBinaryCrossentropy``. Scored, the decoder reads the encoder's class.
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    trunk = _encoder_trunk(images, ModelSpec(hidden_units=spec.hidden_units))
    z_mean = layers.Dense(spec.latent_dim, name="z_mean")(trunk)
    z_log_var = layers.Dense(spec.latent_dim, name="z_log_var")(trunk)
    logits = layers.Dense(spec.classes, name="class_logits")(trunk)
    encoder = keras.Model(images, [z_mean, z_log_var, logits], name="detector_encoder")
    z_class = keras.Input((spec.latent_dim + spec.classes,), name="z_class")
    x = z_class
    for i, units in enumerate(reversed(spec.hidden_units)):
        x = layers.Dense(units, activation="relu", name=f"dec_dense_{i}")(x)
    x = layers.Dense(28 * 28, activation="sigmoid", name="dec_pixels")(x)
    decoder = keras.Model(
        z_class, layers.Reshape(IMAGE_SHAPE, name="pixels")(x), name="detector_decoder"
    )
    labels = keras.Input((spec.classes,), name="labels")
    z_mean, z_log_var, logits = encoder(images)
    z_mean, z_log_var = KLDivergence(name="kl_divergence")([z_mean, z_log_var])
    labels_in = ClassCrossEntropy(spec.class_weight, name="class_cross_entropy")([labels, logits])
    z = Sampling(seed=seed, name="sampling")([z_mean, z_log_var])
    pixels = decoder(layers.Concatenate(name="z_and_class")([z, labels_in]))
    return keras.Model([images, labels], pixels, name="detector")


def build_compact_decoder(spec: CompactSpec, name: str = "compact_decoder") -> keras.Model:
    """z (n, latent_dim) -> pixels (n, 28, 28) in [0, 1], small enough for a microcontroller-class
    device: Fourier features of z (a smooth 2-D map needs few ReLU units after them), ReLU
    layers, a low-rank linear map and the sigmoid pixels."""
    z = keras.Input((spec.latent_dim,), name="z")
    x = layers.Dense(
        spec.fourier_units,
        activation=sine,
        kernel_initializer=keras.initializers.RandomNormal(0.0, spec.fourier_scale),
        bias_initializer=keras.initializers.RandomUniform(-math.pi, math.pi),
        name="fourier",
    )(z)
    for i, units in enumerate(spec.hidden_units):
        x = layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
    if spec.rank:
        x = layers.Dense(spec.rank, name="low_rank")(x)
    x = layers.Dense(28 * 28, activation="sigmoid", name="dec_pixels")(x)
    pixels = layers.Reshape(IMAGE_SHAPE, name="pixels")(x)
    return keras.Model(z, pixels, name=name)


def load_model(path: str | Path) -> keras.Model:
    """Load a `.keras` file in safe mode (no arbitrary code); importing this module registers
    the custom layers it may contain."""
    return keras.saving.load_model(Path(path), safe_mode=True)


def submodel(model: keras.Model, name: str) -> keras.Model:
    """The encoder or decoder inside an autoencoder/VAE built above, by its model name."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name == name:
            return layer
    names = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    raise KeyError(f"{model.name} has no sub-model named {name!r}; it has {names}")
