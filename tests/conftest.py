"""Shared fixtures: the real MNIST mirror, one smoke pipeline run reused by many tests, its export
bundle and its digits. Every fixture shared by two test files is defined here, once."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "configs" / "smoke.toml"


def mirror_dir() -> Path:
    """The offline MNIST mirror: $MNIST_MIRROR, else ../shared/data/mnist beside the repo."""
    env = os.environ.get("MNIST_MIRROR")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"MNIST mirror not found at {path}: set MNIST_MIRROR to the folder holding the four "
            "IDX .gz files (the tests never download)"
        )
    return path.resolve()


@pytest.fixture(scope="session")
def mirror() -> Path:
    return mirror_dir()


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tfds data dir per test session, so tfds builds MNIST once."""
    return tmp_path_factory.mktemp("tfds")


def run_cli(args: list[str], env_extra: dict[str, str] | None = None, check: bool = True):
    """Run ``python run_pipeline.py ARGS`` in a fresh process; returns CompletedProcess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"run_pipeline.py {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, mirror: Path, tfds_dir: Path) -> Path:
    """Artifacts of one smoke-config run of every stage (real MNIST, a few hundred images).

    Written to $SMOKE_RUN_DIR when set (``make test`` then reuses its export bundle in the
    runtime-only environment), else to a fresh temporary folder.
    """
    out_env = os.environ.get("SMOKE_RUN_DIR")
    out = Path(out_env).resolve() if out_env else tmp_path_factory.mktemp("smoke")
    run_cli(
        ["--config", str(SMOKE_CONFIG), "--out", str(out), "--mirror", str(mirror)],
        env_extra={"TFDS_DATA_DIR": str(tfds_dir)},
    )
    return out


@pytest.fixture(scope="session")
def export_run(request: pytest.FixtureRequest) -> Path:
    """A run folder holding ``export/``, ``eval/`` and ``data/mnist.npz`` from the smoke config.

    $EXPORT_RUN names one made beforehand (the runtime-only environment cannot run the
    pipeline); otherwise the ``smoke_run`` fixture makes it.
    """
    env = os.environ.get("EXPORT_RUN")
    if env:
        path = Path(env).resolve()
        if not (path / "export" / "manifest.json").is_file():
            pytest.fail(f"EXPORT_RUN={env} holds no export/manifest.json")
        return path
    return request.getfixturevalue("smoke_run")


@pytest.fixture(scope="session")
def bundle_dir(export_run: Path) -> Path:
    """The smoke run's export bundle folder."""
    return export_run / "export"


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Any:
    """The smoke run's bundle, loaded (fp32, every checksum verified) by the runtime."""
    from export.bundle import Bundle

    return Bundle.load(bundle_dir)


def read_run_digits(run: Path, split: str) -> np.ndarray:
    """A run's ``split`` as the ingest stage stored it: uint8 (n, 28, 28)."""
    with np.load(run / "data" / "mnist.npz", allow_pickle=False) as npz:
        return npz[f"{split}_images"]


@pytest.fixture(scope="session")
def test_digits(export_run: Path) -> np.ndarray:
    """The smoke run's test digits: uint8 (n, 28, 28), n = the smoke config's test_size."""
    return read_run_digits(export_run, "test")


MIRROR_DIGITS = 1000


@pytest.fixture(scope="session")
def mirror_digits(mirror: Path) -> np.ndarray:
    """The first ``MIRROR_DIGITS`` test digits, uint8 (n, 28, 28), straight from the mirror's
    IDX file (no pipeline run needed)."""
    with gzip.open(mirror / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        raw = fh.read(16 + MIRROR_DIGITS * 784)
    return np.frombuffer(raw, np.uint8, offset=16).reshape(MIRROR_DIGITS, 28, 28).copy()


def run_export_cli(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m export ARGS`` in a fresh process, from ``cwd``.

    Run from outside the repository, ``export`` is the installed runtime package; the bundle and
    onnxruntime-web locations come from the arguments, never from the caller's environment.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_VAE_BUNDLE", "ORT_WEB_DIST")}
    proc = subprocess.run(
        [sys.executable, "-m", "export", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"export {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def case_counter(
    label: str, tried: Counter[str], minimum: Callable[[], int], exhaustive: dict[str, int]
) -> Callable[..., Iterator[None]]:
    """An autouse fixture for a module of property tests: each test, run alone or in any order,
    reports its own number of cases and must have tried ``exhaustive[name]`` of them (the size
    of a smaller finite space, or its own settings' max_examples), else ``minimum()``.

    tried: the module's counter, which each property's body increments once per case.
    """

    @pytest.fixture(autouse=True)
    def count_cases(request: pytest.FixtureRequest) -> Iterator[None]:
        before = sum(tried.values())
        yield
        if getattr(request.function, "is_hypothesis_test", False):
            n = sum(tried.values()) - before
            print(f"{label}: {n} cases tried by {request.node.name}")
            wanted = exhaustive.get(request.function.__name__, minimum())
            assert n >= wanted, f"{request.node.name} tried {n} cases, expected {wanted}"

    return count_cases
