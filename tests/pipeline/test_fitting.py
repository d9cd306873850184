"""The learning-rate schedule, the background checkpoint writer and dropout in the builders."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from models import ModelSpec, build_autoencoder
from pipeline.checkpoint import CheckpointStore, TrainingState, checkpoint_variables
from pipeline.config import load_config
from pipeline.fitting import learning_rate, steps_per_epoch


def _rate(schedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_cosine_schedule_warms_up_to_the_peak_then_decays_to_the_floor():
    cfg = load_config(
        None,
        ["train.epochs=10", "train.batch_size=100", "train.learning_rate=0.002"]
        + ["train.warmup_epochs=2", "train.final_lr_fraction=0.05"],
    )
    schedule = learning_rate(cfg, train_size=1000)  # 10 steps an epoch, 100 in all
    assert steps_per_epoch(1000, 100) == 10
    assert _rate(schedule, 0) == pytest.approx(0.0, abs=1e-9)
    assert _rate(schedule, 10) == pytest.approx(0.001, rel=1e-5)  # half-way up the warm-up
    assert _rate(schedule, 20) == pytest.approx(0.002, rel=1e-5)  # the peak
    rates = [_rate(schedule, step) for step in range(20, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # decays monotonically
    assert rates[-1] == pytest.approx(0.002 * 0.05, rel=1e-4)  # the floor at the last step


def test_constant_schedule_is_the_plain_rate():
    cfg = load_config(None, ["train.lr_schedule=constant", "train.learning_rate=0.003"])
    assert learning_rate(cfg, train_size=1000) == 0.003


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_background_save_lands_after_wait_and_reloads_every_variable(tmp_path: Path):
    model = _tiny_model()
    model.layers[0].kernel.assign(np.arange(6, dtype=np.float32).reshape(3, 2))
    store = CheckpointStore(tmp_path / "ck", "k")
    state = TrainingState(key="k", seed=1, epochs_done=1, best=1.0, best_epoch=0)
    store.save(model, state, model.get_weights(), background=True)
    model.layers[0].kernel.assign(np.zeros((3, 2), np.float32))  # after the copy: not saved
    store.wait()
    loaded_state, best = CheckpointStore(tmp_path / "ck", "k").load()
    assert loaded_state.epochs_done == 1 and loaded_state.weights_file == "epoch-0001.npz"
    saved = np.load(tmp_path / "ck" / loaded_state.weights_file, allow_pickle=False)
    assert len(saved.files) == len(checkpoint_variables(model))
    np.testing.assert_array_equal(saved["a0000"], np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(best[0], np.arange(6).reshape(3, 2))


def test_unchanged_best_weights_are_not_rewritten(tmp_path: Path):
    model = _tiny_model()
    store = CheckpointStore(tmp_path / "ck", "k")
    state = TrainingState(key="k", seed=1, epochs_done=1, best=1.0, best_epoch=0)
    store.save(model, state, model.get_weights())
    state.epochs_done, state.wait = 2, 1  # epoch 2 did not improve on epoch 1
    store.save(model, state, model.get_weights())
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "best-0001.npz",
        "epoch-0002.npz",
        "state.json",
    ]
    loaded_state, _ = CheckpointStore(tmp_path / "ck", "k").load()  # its sha256 still holds
    assert loaded_state.best_file == "best-0001.npz"


def test_a_failed_background_write_is_raised_by_wait(tmp_path: Path):
    model = _tiny_model()
    folder = tmp_path / "ck"
    (folder / "epoch-0001.npz").mkdir(parents=True)  # the file cannot be created, even by root
    store = CheckpointStore(folder, "k")
    state = TrainingState(key="k", seed=1, epochs_done=1)
    store.save(model, state, model.get_weights(), background=True)
    with pytest.raises(OSError, match="epoch-0001.npz"):
        store.wait()
    store.wait()  # reported once
    assert not (folder / "state.json").exists()  # nothing committed


def test_dropout_layers_only_when_asked_and_rejected_out_of_range():
    plain = build_autoencoder(ModelSpec(hidden_units=(8, 4)))
    dropped = build_autoencoder(ModelSpec(hidden_units=(8, 4), dropout=0.2))

    def dropouts(model: keras.Model) -> int:
        return sum(
            isinstance(layer, keras.layers.Dropout)
            for sub in model.layers
            if isinstance(sub, keras.Model)
            for layer in sub.layers
        )

    assert dropouts(plain) == 0 and dropouts(dropped) == 4  # after each hidden layer, both halves
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(dropped(x, training=False), dropped(x, training=False))
    with pytest.raises(ValueError, match="dropout=1.0"):
        ModelSpec(dropout=1.0)


def test_background_transforms_keep_the_strokes_and_lose_the_shape():
    """shuffle4 permutes each digit's 4 x 4 grid of 7 x 7 patches, dihedral turns or mirrors it
    (never the identity); both draws are functions of (seed, step) only."""
    import tensorflow as tf

    from pipeline.fitting import transform_batch

    rng = np.random.default_rng(0)
    images = rng.random((6, 28, 28)).astype(np.float32)
    shuffled = transform_batch(tf.constant(images), "shuffle4", 3, 5).numpy()
    for x, y in zip(images, shuffled, strict=True):
        patches = sorted(x.reshape(4, 7, 4, 7).transpose(0, 2, 1, 3).reshape(16, -1).tolist())
        assert patches == sorted(
            y.reshape(4, 7, 4, 7).transpose(0, 2, 1, 3).reshape(16, -1).tolist()
        )
        assert not np.array_equal(x, y)
    turned = transform_batch(tf.constant(images), "dihedral", 3, 5).numpy()
    for x, y in zip(images, turned, strict=True):
        symmetries = [np.rot90(x, k) for k in range(4)] + [np.rot90(x, k).T for k in range(4)]
        matches = [k for k, s in enumerate(symmetries) if np.array_equal(s, y)]
        assert matches and matches != [0]
    again = transform_batch(tf.constant(images), "shuffle4", 3, 5).numpy()
    np.testing.assert_array_equal(again, shuffled)
    other = transform_batch(tf.constant(images), "shuffle4", 3, 6).numpy()
    assert not np.array_equal(other, shuffled)
    with pytest.raises(ValueError, match="shuffle4 or dihedral"):
        transform_batch(tf.constant(images), "blur", 3, 5)
