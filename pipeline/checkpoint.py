"""Per-epoch training checkpoints, so a killed training run resumes from its last complete epoch.

    store = CheckpointStore(paths.model_dir("ae") / "checkpoint", key=run_key)
    state = store.load()            # None: nothing (valid) to resume from
    ...                             # after each epoch:
    store.save(model, state, best, background=True)  # copied now, written on a second thread
    store.wait()                    # when training ends: the last checkpoint is on disk

One checkpoint is three files in its folder: ``epoch-NNNN.npz`` (every model and optimizer
variable, the seed generators' states included, in a fixed order), ``best-NNNN.npz`` (the
early-stopping best weights) and ``state.json``, which names the other two with their sha256.
``state.json`` is written last, by atomic rename, so a kill at any moment leaves either the
previous checkpoint or the new one, never a mix; files no ``state.json`` names are leftovers and
get removed.

Why a background writer: the training thread only copies the variables into numpy arrays
(~17 MB for the default VAE, milliseconds); compressing nothing, hashing, writing and fsyncing
happen on a second thread while the next epoch trains. At most one write is in flight: the next
``save`` waits for the previous one, so checkpoints land in order and a write error surfaces at
the next ``save`` or ``wait``.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.files import fsync_file, sha256_file, write_json_atomic

STATE_FILE = "state.json"
FORMAT = 2  # 2: one npz of all variables (1 was Keras' .weights.h5 plus separate seed states)


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
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._best = ("", "", -1)  # (file, sha256, best epoch) of the best weights on disk

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_FILE

    def load(self) -> tuple[TrainingState, list[np.ndarray]] | None:
        """(state, best weights) of the last complete checkpoint, or None.

        A checkpoint of another config or dataset, or one whose files fail their sha256, is
        reported and ignored (training starts over); it is never half-used.
        """
        self.wait()
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
        self._best = (state.best_file, state.best_sha256, state.best_epoch)
        return state, read_arrays(self.folder / state.best_file)

    def weights_path(self, state: TrainingState) -> Path:
        return self.folder / state.weights_file

    def save(
        self,
        model: Any,
        state: TrainingState,
        best_weights: list[np.ndarray],
        background: bool = False,
    ) -> None:
        """Checkpoint the end of epoch ``state.epochs_done``; ``state`` gets the file names.

        model: a compiled Keras model; its variables and its optimizer's are copied now.
        background: return once they are copied and write them on a second thread (see the
        module docstring); ``wait`` then blocks until they are on disk.
        """
        self.wait()  # one write in flight; raises the previous write's error, if any
        variables = [np.array(v) for v in checkpoint_variables(model)]  # copies: training goes on
        epoch = state.epochs_done
        best_changed = state.best_epoch != self._best[2] or not self._best[0]  # since the last
        best = [np.array(w) for w in best_weights] if best_changed else None
        state.weights_file = f"epoch-{epoch:04d}.npz"
        state.best_file = f"best-{epoch:04d}.npz" if best is not None else self._best[0]
        snapshot = TrainingState(**json.loads(json.dumps(asdict(state))))  # frozen for the writer
        snapshot.best_sha256 = self._best[1]  # replaced below when the best weights changed
        self._writer = threading.Thread(
            target=self._write, args=(snapshot, variables, best), name="checkpoint", daemon=True
        )
        self._writer.start()
        if not background:
            self.wait()

    def wait(self) -> None:
        """Block until the checkpoint being written is on disk; re-raise its error, if any."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(
        self, state: TrainingState, variables: list[np.ndarray], best: list[np.ndarray] | None
    ) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            weights = self.folder / state.weights_file
            write_arrays(weights, variables)
            state.weights_sha256 = sha256_file(weights)
            if best is not None:
                write_arrays(self.folder / state.best_file, best)
                state.best_sha256 = sha256_file(self.folder / state.best_file)
            write_json_atomic(self.state_path, asdict(state))  # the commit point
            self._best = (state.best_file, state.best_sha256, state.best_epoch)
            self._remove_unreferenced(state)
        except BaseException as err:  # handed to the training thread by wait()
            self._error = err

    def clear(self) -> None:
        """Remove the whole checkpoint folder (once the stage's artifacts are written)."""
        self.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _remove_unreferenced(self, state: TrainingState | None) -> None:
        if not self.folder.is_dir():
            return
        keep = {STATE_FILE} if state is None else {STATE_FILE, state.weights_file, state.best_file}
        for path in self.folder.iterdir():
            if path.name not in keep and path.is_file():
                path.unlink(missing_ok=True)


def write_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """``arrays`` as an uncompressed npz (``a0000``, ``a0001``, ...), fsynced.

    A failed write raises ``OSError`` naming ``path`` (a full disk is then reported clearly).
    """
    try:
        with path.open("wb") as fh:
            np.savez(fh, **{f"a{i:04d}": a for i, a in enumerate(arrays)})
        fsync_file(path)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err


def read_arrays(path: Path) -> list[np.ndarray]:
    """The arrays ``write_arrays`` wrote, in order (no pickle)."""
    with np.load(path, allow_pickle=False) as npz:
        return [npz[f"a{i:04d}"] for i in range(len(npz.files))]


def checkpoint_variables(model: Any) -> list[Any]:
    """Every variable a resumed fit needs, in a fixed order: the model's (trainable, then
    non-trainable, which holds the seed generators' states, e.g. the VAE's ``Sampling``), then
    the optimizer's (iteration count, moments).

    By position, not by path: Keras numbers seed generators per process (seed_generator_1, ...).
    """
    return [*model.trainable_variables, *model.non_trainable_variables, *model.optimizer.variables]


def restore_variables(model: Any, path: Path) -> None:
    """Assign the arrays of a checkpoint file to ``checkpoint_variables(model)``.

    The optimizer must be built first. Raises ``ValueError`` for a checkpoint of another model.
    """
    variables = checkpoint_variables(model)
    arrays = read_arrays(path)
    if len(arrays) != len(variables):
        raise ValueError(f"{path.name} holds {len(arrays)} variables, the model {len(variables)}")
    for variable, value in zip(variables, arrays, strict=True):
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"{path.name}: {variable.path} has shape {tuple(variable.shape)}, "
                f"the checkpoint {value.shape}"
            )
    for variable, value in zip(variables, arrays, strict=True):
        variable.assign(value.astype(np.dtype(variable.dtype), copy=False))
