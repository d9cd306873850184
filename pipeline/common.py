"""What the stages share: the artifact layout, the ``Stage`` record, loading the trained models.

    paths = Paths(Path("artifacts"))
    paths.keras_files("vae")     # [vae/model.keras, vae/encoder.keras, vae/decoder.keras]
    models = load_models(paths)  # {"ae_encoder": ..., "vae_decoder": ...}, safe mode

Each stage module (``ingest``, ``train``, ``compact``, ``denoiser``, ``detector``, ``evaluate``,
``bundler``) declares its
``Stage`` beside its ``run``; ``pipeline.runner`` runs them in order. Checksums and atomic
writes are ``export.files``'.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.files import TEMPORARY_GLOBS
from pipeline.config import Config

# The Keras files a training stage writes under its model's folder (``<part>.keras``): the AE and
# VAE the whole model and its two halves, the denoiser the model alone. Beside them each writes
# HISTORY_FILE and SUMMARY_FILE (all of them: ``Paths.model_files``).
KERAS_PARTS = {
    "ae": ("model", "encoder", "decoder"),
    "vae": ("model", "encoder", "decoder"),
    "denoiser": ("model",),
    "compact": ("decoder",),
    "detector": ("model", "encoder", "decoder"),
    "background": ("model", "encoder", "decoder"),
}
CALIBRATION_FILE = "calibration.json"  # the detector's: how its terms are put on one scale
HISTORY_FILE = "history.csv"  # one row per epoch
SUMMARY_FILE = "summary.json"
PREDICT_BATCH = 1024  # images per Keras predict batch when a stage runs a trained model


@dataclass(frozen=True)
class Paths:
    """Where every artifact of a run lives, relative to the output folder ``out``."""

    out: Path
    mirror: Path | None = (
        None  # offline MNIST mirror (four IDX .gz files), or None for tfds' download
    )
    tfds_dir: Path | None = None  # tfds data dir; None means out/tfds

    @property
    def tfds_data_dir(self) -> Path:
        return self.tfds_dir if self.tfds_dir is not None else self.out / "tfds"

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def dataset(self) -> Path:
        return self.data_dir / "mnist.npz"

    @property
    def dataset_summary(self) -> Path:
        return self.data_dir / "summary.json"

    def model_dir(self, kind: str) -> Path:
        """``kind``: "ae", "vae" or "denoiser"."""
        return self.out / kind

    def keras_file(self, kind: str, part: str = "model") -> Path:
        """``kind``'s ``<part>.keras``, ``part`` one of ``KERAS_PARTS[kind]``."""
        if part not in KERAS_PARTS[kind]:
            raise ValueError(f"{kind} has no {part}.keras; expected one of {KERAS_PARTS[kind]}")
        return self.model_dir(kind) / f"{part}.keras"

    def keras_files(self, kind: str) -> list[Path]:
        """Every ``.keras`` file of ``kind``, in ``KERAS_PARTS`` order."""
        return [self.keras_file(kind, part) for part in KERAS_PARTS[kind]]

    def history_file(self, kind: str) -> Path:
        return self.model_dir(kind) / HISTORY_FILE

    def summary_file(self, kind: str) -> Path:
        return self.model_dir(kind) / SUMMARY_FILE

    @property
    def detector_calibration(self) -> Path:
        """The detector's calibration (``export.scoring.Calibration``), beside its models."""
        return self.model_dir("detector") / CALIBRATION_FILE

    def model_files(self, kind: str) -> list[Path]:
        """What the stage that trains ``kind`` writes: its Keras files, history and summary."""
        return [*self.keras_files(kind), self.history_file(kind), self.summary_file(kind)]

    @property
    def eval_dir(self) -> Path:
        return self.out / "eval"

    @property
    def export_dir(self) -> Path:
        return self.out / "export"

    @property
    def stages_dir(self) -> Path:
        return self.out / "stages"

    @property
    def run_json(self) -> Path:
        return self.out / "run.json"

    @property
    def config_toml(self) -> Path:
        return self.out / "config.toml"


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as ``pipeline.runner`` runs and fingerprints it."""

    name: str  # as in ``--stages`` and ``stages/<name>.json``
    run: Callable[[Config, Paths], Any]  # returns the stage's summary
    sections: tuple[str, ...]  # config sections whose values the stage depends on
    inputs: Callable[[Paths], list[Path]]  # files whose content the stage depends on
    outputs: Callable[[Paths], list[Path]]  # every file it writes, checked before a skip


def load_models(paths: Paths) -> dict[str, Any]:
    """The sub-models, loaded in safe mode: ae_encoder, ae_decoder, vae_encoder, vae_decoder and
    compact_decoder."""
    from models import load_model

    models = {
        f"{kind}_{part}": load_model(paths.keras_file(kind, part))
        for kind in ("ae", "vae")
        for part in ("encoder", "decoder")
    }
    models["compact_decoder"] = load_model(paths.keras_file("compact", "decoder"))
    return models


def load_denoiser(paths: Paths) -> Any:
    """The denoising autoencoder, images (n, 28, 28) -> pixels (n, 28, 28), in safe mode."""
    from models import load_model

    return load_model(paths.keras_file("denoiser"))


def denoise(model: Any, images: np.ndarray) -> np.ndarray:
    """The denoiser's output for ``images`` (n, 28, 28) in [0, 1]: (n, 28, 28) float32."""
    return model.predict(images, batch_size=PREDICT_BATCH, verbose=0)


def remove_stale_temporaries(out: Path, skip: tuple[Path, ...] = ()) -> list[Path]:
    """Delete the temporary files and folders a killed run left under ``out`` (not in ``skip``)."""
    removed = []
    skip_dirs = {Path(p).resolve() for p in skip}
    for root, dirs, _files in os.walk(out):
        dirs[:] = [d for d in dirs if (Path(root) / d).resolve() not in skip_dirs]
        for pattern in TEMPORARY_GLOBS:
            for path in Path(root).glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    dirs[:] = [d for d in dirs if d != path.name]
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on (those that are importable)."""
    from importlib import metadata

    versions = {}
    for name in (
        "numpy",
        "tensorflow",
        "keras",
        "tensorflow-datasets",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "matplotlib",
        "pillow",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import platform

    versions["python"] = platform.python_version()
    return versions
