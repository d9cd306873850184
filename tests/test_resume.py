"""Per-epoch checkpoints: an interrupted fit resumes and ends exactly like an unbroken one."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.checkpoint import CheckpointStore, TrainingState
from pipeline.config import load_config
from pipeline.data import load_split
from pipeline.train import fit_model
from tests.conftest import SMOKE_CONFIG

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


@pytest.mark.parametrize(("kind", "jit"), [("ae", "false"), ("vae", "true")])
def test_resumed_fit_equals_unbroken_fit(splits, tmp_path, kind, jit):
    """Interrupted after epoch 1, resumed and interrupted again after the last epoch (before the
    artifacts), resumed again: the same history and weights as one unbroken fit."""
    train, val = splits
    cfg = load_config(
        SMOKE_CONFIG,
        ["train.epochs=3", "train.patience=2", "train.verbose=quiet", f"train.jit_compile={jit}"],
    )
    unbroken, unbroken_history, _ = fit_model(kind, cfg, train, val)
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
            )
        state = json.loads((folder / "state.json").read_text())
        assert state["epochs_done"] == stop_after
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["state.json", state["weights_file"], state["best_file"]]
        )
    resumed, resumed_history, _ = fit_model(
        kind, cfg, train, val, checkpoint_dir=folder, checkpoint_key="k"
    )
    assert resumed_history == unbroken_history  # every epoch's losses, bit for bit
    assert len(resumed_history["val_loss"]) == 3
    for a, b in zip(resumed.get_weights(), unbroken.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations.numpy()) == int(unbroken.optimizer.iterations.numpy())


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
