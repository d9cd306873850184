"""Resumable Keras training: build and compile, the learning-rate schedule, datasets, ``fit_model``.

    model, history, seconds = fit_model("vae", cfg, train_images, val_images,
                                        checkpoint_dir=out / CHECKPOINT_DIR, checkpoint_key=key)

What the training stages (``pipeline.train``: the AE and VAE, ``pipeline.denoiser``) and the
benchmarks share: a model of ``[model]`` or ``[denoiser]`` fitted under ``train.strategy``,
early-stopped on the validation split, checkpointed after epochs and resumed from the last
checkpoint of the same config and data (``pipeline.checkpoint``), plus the helpers that write
what a fit produced (``history_csv``, ``save_keras_atomic``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.files import atomic_path, sha256_json
from pipeline.checkpoint import CheckpointStore, TrainingState, restore_variables
from pipeline.config import Config
from pipeline.distribute import describe, get_strategy, jit_supported

KINDS = ("ae", "vae", "denoiser", "compact", "detector", "background")  # see build_model
CHECKPOINT_DIR = "checkpoint"  # under a model's folder while training; removed when the stage ends


def model_spec(cfg: Config) -> Any:
    """The builders' ``ModelSpec`` from the ``[model]`` section (it mirrors the section, field
    for field)."""
    from models import ModelSpec

    return ModelSpec(**{f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(ModelSpec)})


def denoiser_spec(cfg: Config) -> Any:
    """The builders' ``ModelSpec`` of the denoising autoencoder, from ``[denoiser]`` (MLP)."""
    from models import ModelSpec

    d = cfg.denoiser
    return ModelSpec(architecture="mlp", latent_dim=d.latent_dim, hidden_units=d.hidden_units)


def compact_spec(cfg: Config) -> Any:
    """The builders' ``CompactSpec`` from ``[compact]``, for the VAE's latent."""
    from models import CompactSpec

    c = cfg.compact
    return CompactSpec(
        latent_dim=cfg.model.latent_dim,
        fourier_units=c.fourier_units,
        fourier_scale=c.fourier_scale,
        hidden_units=c.hidden_units,
        rank=c.rank,
    )


def detector_spec(cfg: Config) -> Any:
    """The builders' ``DetectorSpec`` from ``[detector]``."""
    from models import DetectorSpec

    d = cfg.detector
    return DetectorSpec(
        latent_dim=d.latent_dim, hidden_units=d.hidden_units, class_weight=d.class_weight
    )


def background_spec(cfg: Config) -> Any:
    """The background VAE's ``ModelSpec``: the detector's trunk, its own latent (MLP)."""
    from models import ModelSpec

    d = cfg.detector
    return ModelSpec(latent_dim=d.background_latent_dim, hidden_units=d.hidden_units)


def build_model(kind: str, cfg: Config) -> Any:
    """A fresh, uncompiled model: the AE or VAE of ``[model]``, the denoiser of ``[denoiser]``,
    the compact decoder of ``[compact]``, the detector and its background VAE of
    ``[detector]`` (``pipeline.detector``)."""
    from models import build_autoencoder, build_compact_decoder, build_detector, build_vae

    if kind == "detector":
        return build_detector(detector_spec(cfg), seed=cfg.train.seed)
    if kind == "background":
        return build_vae(background_spec(cfg), seed=cfg.train.seed, prefix="background")
    if kind == "compact":
        return build_compact_decoder(compact_spec(cfg))
    if kind == "denoiser":
        return build_autoencoder(denoiser_spec(cfg), name="denoiser", prefix="denoiser")
    spec = model_spec(cfg)
    return build_autoencoder(spec) if kind == "ae" else build_vae(spec, seed=cfg.train.seed)


def keras_verbosity(setting: str) -> int:
    """Keras ``verbose``: a progress bar on a terminal, one line per epoch in logs and CI."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "epoch": 2, "quiet": 0}[setting]


def make_dataset(
    images: np.ndarray,
    batch_size: int,
    shuffle_seed: int | None,
    inputs: np.ndarray | None = None,
) -> Any:
    """tf.data of (inputs, images) batches; shuffled each epoch when ``shuffle_seed`` is given.

    inputs: (n, 28, 28) model inputs for the target ``images`` (default: the images themselves).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images if inputs is None else inputs, images))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def learning_rate(cfg: Config, train_size: int) -> Any:
    """``train.learning_rate`` as a float, or as a Keras schedule over the whole epoch budget.

    cosine: linear warm-up from 0 over ``warmup_epochs``, then cosine decay to
    ``final_lr_fraction * learning_rate`` at the end of epoch ``train.epochs``. Its position is
    the optimizer's iteration count, which the checkpoint restores, so a resumed run follows the
    same curve.
    """
    import keras

    t = cfg.train
    if t.lr_schedule == "constant":
        return t.learning_rate
    per_epoch = steps_per_epoch(train_size, t.batch_size)
    warmup = min(t.warmup_epochs, t.epochs - 1) * per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate,
        decay_steps=max(1, t.epochs * per_epoch - warmup),
        alpha=t.final_lr_fraction,
        warmup_target=t.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def build_and_compile(
    kind: str, cfg: Config, train_size: int, jit_compile: bool | None = None
) -> Any:
    """A fresh, compiled autoencoder (``kind="ae"``), VAE (``"vae"``) or denoiser (``"denoiser"``).

    train_size: images per epoch (the learning-rate schedule spans ``train.epochs`` of them).
    jit_compile: None follows ``cfg.train.jit_compile``.
    """
    import keras

    from models import SummedBinaryCrossentropy

    model = build_model(kind, cfg)
    model.compile(
        # named: Keras numbers unnamed optimizers per process (adam, adam_1, ...), so a stage run in a
        # fresh process (after a kill, or alone) would save a different name than in one process
        optimizer=keras.optimizers.Adam(learning_rate(cfg, train_size), name="adam"),
        loss=SummedBinaryCrossentropy(),
        metrics=[keras.metrics.MeanSquaredError(name="mse")],
        jit_compile=cfg.train.jit_compile if jit_compile is None else jit_compile,
    )
    return model


def history_csv(history: dict[str, list[float]], beta: float | None) -> str:
    """Per-epoch history as CSV; for the VAE also ``recon`` = loss - beta * kl."""
    rows = dict(history)
    if beta is not None and "kl" in rows:
        rows["recon"] = [lo - beta * kl for lo, kl in zip(rows["loss"], rows["kl"], strict=True)]
        rows["val_recon"] = [
            lo - beta * kl for lo, kl in zip(rows["val_loss"], rows["val_kl"], strict=True)
        ]
    columns = ["epoch", *sorted(rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for i in range(len(rows["loss"])):
        writer.writerow([i + 1, *(f"{rows[c][i]:.6f}" for c in columns[1:])])
    return buf.getvalue()


def fit_summary(
    kind: str, model: Any, history: dict[str, list[float]], seconds: float, jit_compile: bool
) -> dict[str, Any]:
    """What every training stage's ``summary.json`` says of a fit: the model's size, the epochs
    run, the best epoch (the weights kept) with its losses, and the time."""
    best = int(np.argmin(history["val_loss"]))
    epochs_run = len(history["loss"])
    return {
        "model": kind,
        "parameters": int(model.count_params()),
        "epochs_run": epochs_run,
        "best_epoch": best + 1,
        "best_val_loss": float(history["val_loss"][best]),
        "train_loss_at_best": float(history["loss"][best]),
        "seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / max(1, epochs_run), 3),
        "jit_compile": jit_compile,
    }


def save_keras_atomic(model: Any, target: Path) -> None:
    with atomic_path(target) as tmp:
        model.save(tmp)


def add_batch_noise(images: Any, sigma: float, seed: int, step: Any) -> Any:
    """clip(images + N(0, sigma^2), 0, 1) per pixel, the noise a function of (seed, step) only.

    images: a (b, 28, 28) float32 tensor; step: its int64 global batch index. Stateless
    Philox (not "auto_select", which may pick another algorithm on a GPU) keeps the noise of
    a batch the same on any device and in a resumed run.
    """
    import tensorflow as tf

    noise = tf.random.stateless_normal(
        tf.shape(images), seed=tf.stack([tf.constant(seed, tf.int64), step]), alg="philox"
    )
    return tf.clip_by_value(images + sigma * noise, 0.0, 1.0)


def transform_batch(images: Any, name: str, seed: int, step: Any) -> Any:
    """Each image of a (b, 28, 28) float32 batch with its shape destroyed, its strokes kept,
    drawn from (seed, step) only (stateless, so a resumed run sees the same draws):

    - ``shuffle4``: its 4 x 4 grid of 7 x 7 patches permuted;
    - ``dihedral``: one of the 7 other symmetries of the square (rotated or mirrored).
    """
    import tensorflow as tf

    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    b = tf.shape(images)[0]
    if name == "shuffle4":
        patches = tf.reshape(
            tf.transpose(tf.reshape(images, (b, 4, 7, 4, 7)), (0, 1, 3, 2, 4)), (b, 16, 7, 7)
        )
        order = tf.argsort(tf.random.stateless_uniform((b, 16), seed=key, alg="philox"), axis=1)
        patches = tf.gather(patches, order, batch_dims=1)
        return tf.reshape(
            tf.transpose(tf.reshape(patches, (b, 4, 4, 7, 7)), (0, 1, 3, 2, 4)), (b, 28, 28)
        )
    if name == "dihedral":
        turns = [tf.image.rot90(images[..., None], k)[..., 0] for k in range(4)]
        variants = tf.stack(turns + [tf.transpose(t, (0, 2, 1)) for t in turns], axis=1)
        which = tf.random.stateless_uniform(
            (b,), seed=key, minval=1, maxval=8, dtype=tf.int32, alg="philox"
        )
        return tf.gather(variants, which, batch_dims=1)
    raise ValueError(f"transform must be shuffle4 or dihedral, got {name!r}")


def make_train_dataset(
    images: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    input_noise: float = 0.0,
    inputs: Any = None,
    transform: str | None = None,
) -> Any:
    """Endless tf.data of (inputs, images) batches, reshuffled each epoch, starting at
    ``first_epoch``; the inputs are the images themselves unless ``inputs`` (n, ...) are given.

    Epoch k's order depends only on ``seed`` and k, so a run resumed at epoch k sees the batches
    an unbroken run would have seen. Each epoch ends with a (possibly short) last batch.
    input_noise: if > 0, the inputs get fresh clipped Gaussian noise of this sigma, drawn from
    (seed, global batch index) (``add_batch_noise``), so resumed runs see the same noise too.
    inputs: (n, ...) arrays, or a tuple of them, fed to the model instead of the images.
    transform: ``transform_batch``'s name: inputs and targets are both the transformed images,
    freshly drawn for every batch from (seed, global batch index).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images if inputs is None else inputs, images))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).repeat()
    if input_noise > 0:
        ds = ds.enumerate().map(
            lambda step, pair: (add_batch_noise(pair[0], input_noise, seed, step), pair[1])
        )
    if transform is not None:

        def transformed(step: Any, pair: Any) -> Any:
            x = transform_batch(pair[1], transform, seed, step)
            return x, x

        ds = ds.enumerate().map(transformed)
    if first_epoch:
        ds = ds.skip(first_epoch * steps_per_epoch(len(images), batch_size))
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def checkpoint_key(kind: str, cfg: Config, dataset_sha256: str) -> str:
    """What a checkpoint must match to be resumed: the model kind, its config and its data."""
    return sha256_json(
        {
            "kind": kind,
            "data": cfg.section("data"),
            "model": cfg.section("model"),
            # how the run is distributed, logged or checkpointed does not change what it computes
            "train": {
                k: v
                for k, v in cfg.section("train").items()
                if k not in ("verbose", "strategy", "checkpoint_seconds")
            },
            "dataset": dataset_sha256,
        }
    )


def _resumable_callbacks(
    store: CheckpointStore | None,
    state: TrainingState,
    best_weights: list[np.ndarray] | None,
    cfg: Config,
) -> tuple[Any, Any]:
    """An EarlyStopping that starts from ``state`` and a callback that checkpoints at epoch ends:
    every ``train.checkpoint_seconds`` of training (0: every epoch), and at the last epoch."""
    patience, interval = cfg.train.patience, cfg.train.checkpoint_seconds
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """Keras' EarlyStopping, whose state (best value, wait, best weights) survives a restart."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            super().on_train_begin(logs)
            if state.epochs_done:
                self.best, self.best_epoch, self.wait = state.best, state.best_epoch, state.wait
                self.best_weights = best_weights

    stopper = ResumableEarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True, verbose=1
    )

    class EpochCheckpoint(keras.callbacks.Callback):
        """After each epoch: record history and stopping state, then save the checkpoint."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started = time.perf_counter()
            self.seconds_before = state.seconds
            self.last_saved = state.seconds

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            for key, value in (logs or {}).items():
                state.history.setdefault(key, []).append(float(value))
            state.epochs_done = epoch + 1
            state.seconds = self.seconds_before + time.perf_counter() - self.started
            state.best = None if stopper.best is None else float(stopper.best)
            state.best_epoch, state.wait = int(stopper.best_epoch), int(stopper.wait)
            state.stopped = bool(self.model.stop_training)
            due = state.seconds - self.last_saved >= interval
            if store is not None and (
                due or state.stopped or state.epochs_done == cfg.train.epochs
            ):
                store.save(self.model, state, stopper.best_weights, background=True)
                self.last_saved = state.seconds

    return stopper, EpochCheckpoint()


def _build_or_resume(
    kind: str, cfg: Config, train_size: int, strategy: Any, store: CheckpointStore | None
) -> tuple[Any, TrainingState, list[np.ndarray] | None]:
    """A compiled model, fresh or with the weights, optimizer and RNG state of the checkpoint."""
    import keras

    keras.utils.set_random_seed(cfg.train.seed)
    jit = cfg.train.jit_compile and jit_supported(strategy)
    if cfg.train.jit_compile and not jit:
        print(f"train_{kind}: XLA off: it has no CPU collectives for {describe(strategy)}")
    with strategy.scope():
        model = build_and_compile(kind, cfg, train_size, jit_compile=jit)
    found = store.load() if store is not None else None
    if found is None:
        return model, TrainingState(store.key if store else "", cfg.train.seed), None
    state, best_weights = found
    try:
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)  # its variables must exist to load
            restore_variables(model, store.weights_path(state))
            if len(best_weights) != len(model.get_weights()):
                raise ValueError(f"{len(best_weights)} best-weight arrays for a different model")
    except (ValueError, OSError, KeyError) as err:  # a checkpoint of another model: start over
        print(f"train_{kind}: cannot resume from {store.folder} ({err}); starting over")
        store.clear()
        model, _, _ = _build_or_resume(kind, cfg, train_size, strategy, None)
        return model, TrainingState(store.key, cfg.train.seed), None  # still checkpointed
    print(
        f"train_{kind}: resuming after epoch {state.epochs_done} from {store.folder} "
        f"(best val_loss {state.best:.2f} at epoch {state.best_epoch + 1})"
    )
    return model, state, best_weights


def fit_model(
    kind: str,
    cfg: Config,
    train_images: np.ndarray,
    val_images: np.ndarray,
    callbacks: list[Any] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_key: str = "",
    input_noise: float = 0.0,
    val_inputs: np.ndarray | None = None,
    train_inputs: Any = None,
    transform: str | None = None,
) -> tuple[Any, dict[str, list[float]], float]:
    """Build, compile and fit one model under ``cfg.train.strategy``; no file I/O but the checkpoint.

    train_images, val_images: (n, 28, 28) float32 in [0, 1], the targets.
    checkpoint_dir: if given, a checkpoint is written there after every epoch, and a checkpoint
    found there with the same ``checkpoint_key`` is resumed from (its last complete epoch).
    input_noise: sigma of the clipped Gaussian noise added to each train batch's inputs (0: none).
    val_inputs: (n_val, 28, 28) validation inputs, e.g. noisy digits (default: ``val_images``).
    train_inputs: (n, ...) the model's inputs for ``train_images`` when they are not the images
    themselves (the compact decoder: latents (n, d) in, its teacher's pixels as targets; the
    detector: a tuple (images, one-hot labels)); ``val_inputs`` likewise.
    transform: train on ``transform_batch`` draws of the images (the background VAE).
    Returns (model with the best validation weights, per-epoch history, seconds of training).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    strategy = get_strategy(cfg.train.strategy)  # before any other TF work (multi-worker)
    store = CheckpointStore(checkpoint_dir, checkpoint_key) if checkpoint_dir else None
    model, state, best_weights = _build_or_resume(kind, cfg, len(train_images), strategy, store)
    stopper, epoch_checkpoint = _resumable_callbacks(store, state, best_weights, cfg)
    print(
        f"train_{kind}: {model.count_params():,} parameters, {len(train_images):,} train / "
        f"{len(val_images):,} validation images, up to {cfg.train.epochs} epochs, "
        f"{describe(strategy)}"
    )
    if state.epochs_done < cfg.train.epochs and not state.stopped:
        try:
            model.fit(
                make_train_dataset(
                    train_images,
                    cfg.train.batch_size,
                    cfg.train.seed,
                    state.epochs_done,
                    input_noise,
                    inputs=train_inputs,
                    transform=transform,
                ),
                steps_per_epoch=steps_per_epoch(len(train_images), cfg.train.batch_size),
                validation_data=make_dataset(
                    val_images, cfg.train.batch_size, shuffle_seed=None, inputs=val_inputs
                ),
                initial_epoch=state.epochs_done,
                epochs=cfg.train.epochs,
                callbacks=[stopper, epoch_checkpoint, *(callbacks or [])],
                shuffle=False,  # the tf.data pipeline already reshuffles every epoch
                verbose=keras_verbosity(cfg.train.verbose),
            )
        finally:  # the last checkpoint reaches the disk, also when fit ends in an exception
            if store is not None:
                store.wait()
    elif best_weights is not None:  # the checkpoint is of the last epoch: nothing left to fit
        model.set_weights(best_weights)
    return model, state.history, state.seconds
