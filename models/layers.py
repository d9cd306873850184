"""Custom Keras layers and the loss of the VAE, registered so `.keras` files reload in safe mode.

z_mean, z_log_var = KLDivergence(beta=1.0)([z_mean, z_log_var])  # adds beta * KL to the loss
z = Sampling(seed=7)([z_mean, z_log_var])
x = layers.Dense(64, activation=sine)(z)  # Fourier features of a latent (the compact decoder)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "mnist_vae"


def kl_divergence(z_mean: Any, z_log_var: Any) -> Any:
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)) per example, in nats.

    z_mean, z_log_var: (n, latent_dim) -> (n,)
    """
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
def sine(x: Any) -> Any:
    """sin(x) elementwise: the activation of Fourier features (exported as ONNX ``Sin``)."""
    return ops.sin(x)


@keras.saving.register_keras_serializable(package=PACKAGE)
class KLDivergence(keras.layers.Layer):
    """Identity on ``[z_mean, z_log_var]`` that adds ``beta * mean_batch(KL)`` to the model's loss.

    The KL to the standard normal prior is also tracked as the metric ``kl`` (nats per example,
    before ``beta``), so training history shows both terms of the ELBO.
    """

    def __init__(self, beta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        beta = float(beta)
        if beta < 0:
            raise ValueError(f"KLDivergence: beta must be >= 0. Received: beta={beta}")
        self.beta = beta
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def call(self, inputs: list[Any]) -> list[Any]:
        z_mean, z_log_var = inputs
        kl = ops.mean(kl_divergence(z_mean, z_log_var))
        self.add_loss(self.beta * kl)
        self.kl_tracker.update_state(kl)
        return [z_mean, z_log_var]

    def compute_output_spec(self, inputs: list[Any]) -> list[Any]:
        return [keras.KerasTensor(t.shape, dtype=t.dtype) for t in inputs]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassCrossEntropy(keras.layers.Layer):
    """Identity on the one-hot labels that adds ``weight * mean_batch(cross-entropy)`` of the
    class logits to the loss (the labels then flow on into the model, which keeps this layer in
    its graph).

    inputs: [labels (n, classes) one-hot, logits (n, classes)] -> labels. The cross-entropy (nats
    per example, before ``weight``) is tracked as the metric ``class_ce``.
    """

    def __init__(self, weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        weight = float(weight)
        if weight < 0:
            raise ValueError(f"ClassCrossEntropy: weight must be >= 0. Received: weight={weight}")
        self.weight = weight
        self.ce_tracker = keras.metrics.Mean(name="class_ce")

    def call(self, inputs: list[Any]) -> Any:
        labels, logits = inputs
        ce = -ops.mean(ops.sum(labels * ops.log_softmax(logits, axis=-1), axis=-1))
        self.add_loss(self.weight * ce)
        self.ce_tracker.update_state(ce)
        return labels

    def compute_output_spec(self, inputs: list[Any]) -> Any:
        return keras.KerasTensor(inputs[0].shape, dtype=inputs[0].dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(keras.layers.Layer):
    """Reparameterisation trick: ``z = z_mean + exp(z_log_var / 2) * eps``, ``eps ~ N(0, I)``.

    inputs: [z_mean, z_log_var], each (n, latent_dim) -> z: (n, latent_dim)
    """

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: list[Any]) -> Any:
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_spec(self, inputs: list[Any]) -> Any:
        return keras.KerasTensor(inputs[0].shape, dtype=inputs[0].dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SummedBinaryCrossentropy(keras.losses.Loss):
    """Bernoulli negative log-likelihood summed over pixels, averaged over the batch (nats/image).

    y_true, y_pred: (n, 28, 28) in [0, 1] -> scalar. A registered class rather than a lambda so
    that a compiled model reloads in safe mode.
    """

    def __init__(self, name: str = "summed_bce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        eps = keras.config.epsilon()
        y_pred = ops.clip(y_pred, eps, 1.0 - eps)
        bce = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
        return ops.sum(ops.reshape(bce, (ops.shape(bce)[0], -1)), axis=-1)
