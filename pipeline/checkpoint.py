"""Per-epoch training checkpoints, so a killed training run resumes from its last complete epoch.

    store = CheckpointStore(paths.model_dir("ae") / "checkpoint", key=run_key)
    state = store.load()            # None: nothing (valid) to resume from
    ...                             # after each epoch:
    store.save(model, state)        # weights + optimizer, best weights, epoch, history, stopping

One checkpoint is three files in its folder: ``epoch-NNNN.weights.h5`` (model and optimizer
variables, as ``model.save_weights`` writes them), ``best-NNNN.npz`` (the early-stopping best
weights) and ``state.json``, which names the other two with their sha256. ``state.json`` is
written last, by atomic rename, so a kill at any moment leaves either the previous checkpoint or
the new one, never a mix; files no ``state.json`` names are leftovers and get removed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common import fsync_file, sha256_file, write_json_atomic

STATE_FILE = "state.json"
FORMAT = 1


@dataclass
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue like an unbroken one."""

    key: str  # hash of the config sections and the dataset the run trains on
    seed: int
    epochs_done: int = 0  # complete epochs; the next one is epochs_done (0-based)
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0  # training time spent so far, over all attempts
    best: float | None = None  # early stopping: best monitored value so far
    best_epoch: int = 0  # 0-based epoch of ``best``
    wait: int = 0  # epochs since the best one
    stopped: bool = False  # early stopping ended the run
    rng_states: list[list[int]] = field(default_factory=list)  # Keras seed generators, in order
    weights_file: str = ""
    weights_sha256: str = ""
    best_file: str = ""
    best_sha256: str = ""
    format: int = FORMAT


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written."""


class CheckpointStore:
    """The checkpoint folder of one training run, identified by ``key``."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = Path(folder)
        self.key = key

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_FILE

    def load(self) -> tuple[TrainingState, list[np.ndarray]] | None:
        """(state, best weights) of the last complete checkpoint, or None.

        A checkpoint of another config or dataset, or one whose files fail their sha256, is
        reported and ignored (training starts over); it is never half-used.
        """
        if not self.state_path.is_file():
            self._remove_unreferenced(None)
            return None
        try:
            raw = json.loads(self.state_path.read_text())
            state = TrainingState(**raw)
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
            print(f"checkpoint: ignoring unreadable {self.state_path} ({err})")
            return None
        if state.format != FORMAT or state.key != self.key:
            print(f"checkpoint: {self.folder} belongs to another config or dataset; starting over")
            self.clear()
            return None
        for name, digest in (
            (state.weights_file, state.weights_sha256),
            (state.best_file, state.best_sha256),
        ):
            path = self.folder / name
            if not path.is_file() or sha256_file(path) != digest:
                print(f"checkpoint: {path} is missing or fails its sha256; starting over")
                self.clear()
                return None
        self._remove_unreferenced(state)
        with np.load(self.folder / state.best_file, allow_pickle=False) as npz:
            best_weights = [npz[f"w{i:04d}"] for i in range(len(npz.files))]
        return state, best_weights

    def weights_path(self, state: TrainingState) -> Path:
        return self.folder / state.weights_file

    def save(self, model: Any, state: TrainingState, best_weights: list[np.ndarray]) -> None:
        """Write the checkpoint after epoch ``state.epochs_done``; ``state`` gets the file names.

        model: a compiled Keras model; its weights and optimizer variables are saved.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        state.rng_states = rng_states(model)
        epoch = state.epochs_done
        weights = self.folder / f"epoch-{epoch:04d}.weights.h5"
        model.save_weights(weights, overwrite=True)
        state.weights_file, state.weights_sha256 = weights.name, sha256_file(weights)
        if state.best_epoch + 1 == epoch or not state.best_file:  # the best weights changed
            best = self.folder / f"best-{epoch:04d}.npz"
            with best.open("wb") as fh:
                np.savez(fh, **{f"w{i:04d}": w for i, w in enumerate(best_weights)})
            state.best_file, state.best_sha256 = best.name, sha256_file(best)
        for path in (
            weights,
            self.folder / state.best_file,
        ):  # on disk before state.json names them
            fsync_file(path)
        write_json_atomic(self.state_path, asdict(state))  # the commit point
        self._remove_unreferenced(state)

    def clear(self) -> None:
        """Remove the whole checkpoint folder (once the stage's artifacts are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _remove_unreferenced(self, state: TrainingState | None) -> None:
        if not self.folder.is_dir():
            return
        keep = {STATE_FILE} if state is None else {STATE_FILE, state.weights_file, state.best_file}
        for path in self.folder.iterdir():
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)


def _seed_variables(model: Any) -> list[Any]:
    # by position, not by path: Keras numbers seed generators per process (seed_generator_1, ...)
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def rng_states(model: Any) -> list[list[int]]:
    """The states of the model's Keras seed generators (e.g. the VAE's ``Sampling`` layer).

    ``save_weights`` leaves them out, yet a resumed VAE must draw the noise an unbroken run
    would have drawn.
    """
    return [np.asarray(v.numpy()).tolist() for v in _seed_variables(model)]


def restore_rng_states(model: Any, states: list[list[int]]) -> None:
    variables = _seed_variables(model)
    if len(variables) != len(states):
        raise ValueError(f"checkpoint has {len(states)} seed states, the model {len(variables)}")
    for v, value in zip(variables, states, strict=True):
        v.assign(np.asarray(value, dtype=np.dtype(v.dtype)))
