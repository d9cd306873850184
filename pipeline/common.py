"""Helpers every stage shares: the artifact layout, atomic writes and file fingerprints.

paths = Paths(Path("artifacts"))
write_json_atomic(paths.run_json, {"ok": True})
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it; put it straight back


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    A crash leaves the previous ``target`` intact and no half-written file under its name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)  # the data reaches the disk before the name does (power cuts)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMPORARY_GLOB = ".*.tmp*"  # the names atomic_path gives its temporary files
# and the folders a stage builds or retires beside its real output (``.export.tmp.*``,
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


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: Path, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


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
