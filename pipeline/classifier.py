"""A small CNN digit classifier: the evaluate stage's judge of decoded digits and its FID features.

    model, info = train_or_reuse(cfg, paths)     # eval/classifier.keras (+ classifier.json)
    probs = model.predict(images)                 # (n, 10) softmax
    feats = feature_model(model).predict(images)  # (n, 128) penultimate ReLU features

Two conv/pool blocks, a 128-unit dense layer (the features) and a softmax; trained on the train
split with Adam and a cosine-decayed learning rate (no dropout: a few epochs are all it gets).
No XLA: on CPU, TensorFlow's oneDNN convolutions train this model ~2x faster than XLA's. It is retrained only when its fingerprint (the dataset file, the data config and
the classifier settings) changes; ``classifier.json`` records the fingerprint, the sha256 of the
saved model and its test accuracy.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from pipeline.common import Paths, atomic_path, sha256_file, sha256_json, write_json_atomic
from pipeline.config import Config
from pipeline.data import load_split

ARCHITECTURE = "conv32-pool-conv64-pool-dense128-softmax/v2"  # change it to force a retrain
FEATURE_LAYER = "features"
BATCH_SIZE = 128
LEARNING_RATE = 2e-3  # the start of the cosine decay to 0 over all training steps


def build_classifier(seed: int) -> Any:
    """images (n, 28, 28) in [0, 1] -> class probabilities (n, 10)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    images = keras.Input((28, 28), name="images")
    x = layers.Reshape((28, 28, 1), name="add_channel")(images)
    x = layers.Conv2D(32, 3, activation="relu", name="conv_0")(x)
    x = layers.MaxPooling2D(2, name="pool_0")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv_1")(x)
    x = layers.MaxPooling2D(2, name="pool_1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name=FEATURE_LAYER)(x)
    probs = layers.Dense(10, activation="softmax", name="probs")(x)
    return keras.Model(images, probs, name="digit_classifier")


def feature_model(classifier: Any) -> Any:
    """The classifier cut at its 128-unit ReLU layer: images (n, 28, 28) -> features (n, 128)."""
    import keras

    return keras.Model(classifier.inputs, classifier.get_layer(FEATURE_LAYER).output)


def classifier_fingerprint(cfg: Config, paths: Paths) -> str:
    """What the trained classifier depends on: the dataset, the data config, its settings."""
    return sha256_json(
        {
            "architecture": ARCHITECTURE,
            "dataset": sha256_file(paths.dataset),
            "data": cfg.section("data"),
            "epochs": cfg.evaluate.classifier_epochs,
            "seed": cfg.evaluate.seed,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
        }
    )


def classifier_paths(paths: Paths) -> tuple[Any, Any]:
    """(model file, record file) under ``eval/``."""
    return paths.eval_dir / "classifier.keras", paths.eval_dir / "classifier.json"


def _reusable(paths: Paths, print_: str) -> dict[str, Any] | None:
    model_file, record_file = classifier_paths(paths)
    if not (model_file.is_file() and record_file.is_file()):
        return None
    try:
        record = json.loads(record_file.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("fingerprint") != print_ or record.get("sha256") != sha256_file(model_file):
        return None
    return record


def train_classifier(cfg: Config, paths: Paths, verbose: int) -> tuple[Any, float]:
    """Fit a fresh classifier on the train split; returns (model, seconds)."""
    import keras
    import tensorflow as tf

    images, labels = load_split(paths.dataset, "train", cfg.data)
    model = build_classifier(cfg.evaluate.seed)
    steps = cfg.evaluate.classifier_epochs * -(-len(images) // BATCH_SIZE)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    ds = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=cfg.evaluate.seed, reshuffle_each_iteration=True)
        .batch(BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    started = time.perf_counter()
    # shuffle=False: the tf.data pipeline already reshuffles every epoch
    model.fit(ds, epochs=cfg.evaluate.classifier_epochs, shuffle=False, verbose=verbose)
    return model, time.perf_counter() - started


def train_or_reuse(cfg: Config, paths: Paths, verbose: int = 2) -> tuple[Any, dict[str, Any]]:
    """The classifier for this dataset and config: reloaded if its fingerprint matches, else trained.

    Returns (model, record) where record holds fingerprint, sha256, test_acc, train_seconds,
    epochs and ``reused`` (bool).
    """
    from models import load_model

    print_ = classifier_fingerprint(cfg, paths)
    record = _reusable(paths, print_)
    model_file, record_file = classifier_paths(paths)
    if record is not None:
        print(f"evaluate: classifier up to date (fingerprint {print_[:12]}), reused")
        return load_model(model_file), {**record, "reused": True}
    print(f"evaluate: training the digit classifier ({cfg.evaluate.classifier_epochs} epochs)")
    model, seconds = train_classifier(cfg, paths, verbose)
    test_images, test_labels = load_split(paths.dataset, "test", cfg.data)
    probs = model.predict(test_images, batch_size=1024, verbose=0)
    test_acc = float(np.mean(probs.argmax(axis=1) == test_labels))
    with atomic_path(model_file) as tmp:
        model.save(tmp)
    record = {
        "fingerprint": print_,
        "sha256": sha256_file(model_file),
        "architecture": ARCHITECTURE,
        "epochs": cfg.evaluate.classifier_epochs,
        "test_acc": test_acc,
        "train_seconds": round(seconds, 2),
    }
    write_json_atomic(record_file, record)
    # reload what was saved, so a fresh and a reused classifier behave identically
    return load_model(model_file), {**record, "reused": False}
