"""Helpers every stage shares: the artifact layout, atomic writes and file fingerprints.

paths = Paths(Path("artifacts"))
write_json_atomic(paths.run_json, {"ok": True})
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from export.files import TEMPORARY_GLOB


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


# the temporaries of export.files (files and folders) and the folders a stage builds or retires beside its real output (``.export.tmp.*``,
# ``.export.old.*``)
TEMPORARY_GLOBS = (TEMPORARY_GLOB, ".*.old.*")


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
