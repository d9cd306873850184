"""Per-epoch checkpoints: an interrupted fit resumes and ends exactly like an unbroken one."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SMOKE_CONFIG

from pipeline.checkpoint import CheckpointStore, TrainingState
from pipeline.config import load_config
from pipeline.data import load_split
from pipeline.fitting import add_batch_noise, fit_model, make_train_dataset, steps_per_epoch
from pipeline.measures import add_noise

pytestmark = pytest.mark.slow


class SimulatedKillError(Exception):
    """Stands in for a kill: raised right after an epoch's checkpoint is written."""


class InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 == self.epoch:
            raise SimulatedKillError


@pytest.fixture(scope="module")
def splits(smoke_run: Path) -> tuple[np.ndarray, np.ndarray]:
    dataset = smoke_run / "data" / "mnist.npz"
    return load_split(dataset, "train")[0], load_split(dataset, "validation")[0]


@pytest.fixture(scope="module")
def labels(smoke_run: Path) -> tuple[np.ndarray, np.ndarray]:
    """One-hot labels of the train and validation digits, for the detector's fit."""
    dataset = smoke_run / "data" / "mnist.npz"
    return tuple(
        np.eye(10, dtype=np.float32)[load_split(dataset, s)[1]] for s in ("train", "validation")
    )


def extras(kind: str, train: np.ndarray, val: np.ndarray, labels) -> dict:
    """What each kind's fit reads beside the digits: the denoiser's noise, the detector's
    labels, the background's transform."""
    if kind == "denoiser":
        return {"input_noise": 0.3, "val_inputs": add_noise(val, 0.3, seed=5)}
    if kind == "detector":
        return {"train_inputs": (train, labels[0]), "val_inputs": (val, labels[1])}
    if kind == "background":
        return {"transform": "shuffle4"}
    return {}


@pytest.mark.parametrize(
    ("kind", "jit"),
    [("ae", "false"), ("vae", "true"), ("denoiser", "false"), ("detector", "true"),
     ("background", "false")],
)  # fmt: skip
def test_resumed_fit_equals_unbroken_fit(splits, labels, tmp_path, kind, jit):
    """Interrupted after epoch 1, resumed and interrupted again after the last epoch (before the
    artifacts), resumed again: the same history and weights as one unbroken fit. The denoiser's
    train batches carry fresh input noise, the background's fresh shuffles of its digits, which
    a resumed run must draw exactly the same; the detector reads labels beside its digits."""
    train, val = splits
    cfg = load_config(
        SMOKE_CONFIG,
        ["train.epochs=3", "train.patience=2", "train.verbose=quiet", f"train.jit_compile={jit}"],
    )
    noise = extras(kind, train, val, labels)
    unbroken, unbroken_history, _ = fit_model(kind, cfg, train, val, **noise)
    folder = tmp_path / "checkpoint"
    for stop_after in (1, 3):
        with pytest.raises(SimulatedKillError):
            fit_model(
                kind,
                cfg,
                train,
                val,
                callbacks=[InterruptAfter(stop_after)],
                checkpoint_dir=folder,
                checkpoint_key="k",
                **noise,
            )
        state = json.loads((folder / "state.json").read_text())
        assert state["epochs_done"] == stop_after
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["state.json", state["weights_file"], state["best_file"]]
        )
    resumed, resumed_history, _ = fit_model(
        kind, cfg, train, val, checkpoint_dir=folder, checkpoint_key="k", **noise
    )
    assert resumed_history == unbroken_history  # every epoch's losses, bit for bit
    assert len(resumed_history["val_loss"]) == 3
    for a, b in zip(resumed.get_weights(), unbroken.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations.numpy()) == int(unbroken.optimizer.iterations.numpy())


def test_input_noise_is_a_function_of_seed_and_batch_index(splits):
    """A dataset started at epoch 2 yields the noisy batches an unbroken one yields there, each
    the clean batch plus ``add_batch_noise`` at its global index; targets stay clean."""
    train, _ = splits
    steps = steps_per_epoch(len(train), 64)
    unbroken = list(
        make_train_dataset(train, 64, seed=7, first_epoch=0, input_noise=0.3).take(3 * steps)
    )
    resumed = list(
        make_train_dataset(train, 64, seed=7, first_epoch=2, input_noise=0.3).take(steps)
    )
    for (a_in, a_target), (b_in, b_target) in zip(unbroken[2 * steps :], resumed, strict=True):
        np.testing.assert_array_equal(a_in.numpy(), b_in.numpy())
        np.testing.assert_array_equal(a_target.numpy(), b_target.numpy())
    clean = make_train_dataset(train, 64, seed=7, first_epoch=0)  # the same order, no noise
    for index, ((noisy, target), (plain, _)) in enumerate(zip(unbroken, clean, strict=False)):
        np.testing.assert_array_equal(target.numpy(), plain.numpy())
        expected = add_batch_noise(target, 0.3, 7, np.int64(index)).numpy()
        np.testing.assert_array_equal(noisy.numpy(), expected)
    x, y = (t.numpy() for t in unbroken[0])
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert 0.1 < float(np.std(x - y)) < 0.3  # clipped sigma-0.3 noise, not none, not more
    # another batch index or seed draws other noise for the same pixels
    other = add_batch_noise(unbroken[0][1], 0.3, 7, np.int64(1)).numpy()
    assert not np.array_equal(other, x)
    assert not np.array_equal(add_batch_noise(unbroken[0][1], 0.3, 8, np.int64(0)).numpy(), x)


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _saved_store(folder: Path, key: str) -> CheckpointStore:
    model = _tiny_model()
    store = CheckpointStore(folder, key)
    state = TrainingState(key=key, seed=1, epochs_done=1, best=1.0, best_epoch=0)
    store.save(model, state, model.get_weights())
    return store


def test_checkpoint_of_another_config_is_discarded(tmp_path):
    _saved_store(tmp_path / "ck", "config-a")
    assert CheckpointStore(tmp_path / "ck", "config-a").load() is not None
    assert CheckpointStore(tmp_path / "ck", "config-b").load() is None
    assert not (tmp_path / "ck").exists()  # removed, so it cannot be half-used later


def test_damaged_checkpoint_is_discarded_and_leftovers_removed(tmp_path):
    store = _saved_store(tmp_path / "ck", "k")
    (tmp_path / "ck" / "epoch-0009.weights.h5").write_bytes(b"half-written by a killed run")
    loaded = store.load()
    assert loaded is not None and not (tmp_path / "ck" / "epoch-0009.weights.h5").exists()
    state, best = loaded
    assert state.epochs_done == 1 and len(best) == 2
    weights = tmp_path / "ck" / state.weights_file
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated: fails its sha256
    assert store.load() is None
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text("{not json")
    assert store.load() is None


def test_checkpoint_interval_skips_epochs_but_not_the_last(splits, tmp_path):
    """With a long ``train.checkpoint_seconds`` only the last epoch is checkpointed; a kill before
    it leaves nothing to resume, and the rerun still ends like an unbroken fit."""
    train, val = splits
    cfg = load_config(
        SMOKE_CONFIG,
        ["train.epochs=3", "train.patience=3", "train.verbose=quiet"]
        + ["train.checkpoint_seconds=1e6", "train.jit_compile=false"],
    )
    folder = tmp_path / "checkpoint"
    with pytest.raises(SimulatedKillError):
        fit_model(
            "ae", cfg, train, val, callbacks=[InterruptAfter(2)], checkpoint_dir=folder,
            checkpoint_key="k",
        )  # fmt: skip
    assert not (folder / "state.json").exists()  # epochs 1 and 2 were not due
    _, history, _ = fit_model("ae", cfg, train, val, checkpoint_dir=folder, checkpoint_key="k")
    assert json.loads((folder / "state.json").read_text())["epochs_done"] == 3
    assert history == fit_model("ae", cfg, train, val)[1]
